"""ResNet-56 on CIFAR-10 with DAQ: configs/cifar10_resnet20.py with 56 layers.

    python train.py --config configs/cifar10_resnet56.py --workdir runs/cifar10_resnet56 \
        --config.data.dir=PATH

About 2.8x the cost of ResNet-20 per step (0.85M against 0.27M parameters, 3x the convs).
"""

from configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.model.name = "resnet56"
  return config
