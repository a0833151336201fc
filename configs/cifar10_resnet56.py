"""ResNet-56 on CIFAR-10 with DAQ: the recipe of He et al. 2016 (configs/base_cifar10.py).

    python train.py --config configs/cifar10_resnet56.py --workdir runs/cifar10_resnet56 \
        --config.data.dir=PATH

Three times ResNet-20's convolutions (55 against 19); not timed here: a GPU job.
"""

from configs import base_cifar10


def get_config():
  return base_cifar10.recipe("resnet56", **base_cifar10.HE)
