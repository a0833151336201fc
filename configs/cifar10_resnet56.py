"""ResNet-56 on CIFAR-10 with DAQ: configs/cifar10_resnet20.py with 56 layers.

    python train.py --config configs/cifar10_resnet56.py --workdir runs/cifar10_resnet56 \
        --config.data.dir=PATH

Three times ResNet-20's convolutions (55 against 19); not timed here: a GPU job.
"""

from configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.model.name = "resnet56"
  return config
