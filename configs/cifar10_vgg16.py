"""VGG-16 with BN (14.7M parameters) on CIFAR-10 with DAQ.

    python train.py --config configs/cifar10_vgg16.py --workdir runs/cifar10_vgg16 \
        --config.data.dir=PATH

200 epochs, batch 128, SGD 0.05 with a cosine schedule and weight decay 5e-4. Not timed
here: a GPU job.
"""

from configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.model.name = "vgg16_cifar"
  config.optim.base_learning_rate = 0.05
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = ()
  config.num_epochs = 200.0
  return config
