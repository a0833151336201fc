"""MobileNetV2 (CIFAR strides: 2.24M parameters) on CIFAR-10 with DAQ; its depthwise convs
are grouped int8 convs.

    python train.py --config configs/cifar10_mobilenetv2.py --workdir runs/cifar10_mnv2 \
        --config.data.dir=PATH

200 epochs, batch 128, SGD 0.1 with a cosine schedule and weight decay 4e-5 (as the paper).
Not timed here: a GPU job.
"""

from configs import base_cifar10


def get_config():
  return base_cifar10.recipe(
    "mobilenetv2_cifar",
    num_epochs=200.0,
    schedule="cosine",
    base_learning_rate=0.1,
    weight_decay=4e-5,
    warmup_epochs=1.0,
  )
