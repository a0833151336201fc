"""MobileNetV2 (CIFAR strides: 2.24M parameters) on CIFAR-10 with DAQ; its depthwise convs
are grouped int8 convs.

    python train.py --config configs/cifar10_mobilenetv2.py --workdir runs/cifar10_mnv2 \
        --config.data.dir=PATH

200 epochs, batch 128, SGD 0.1 with a cosine schedule and weight decay 4e-5 (as the paper).
Not timed here: a GPU job.
"""

from configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.model.name = "mobilenetv2_cifar"
  config.optim.weight_decay = 4e-5
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = ()
  config.num_epochs = 200.0
  return config
