"""ResNet-56 on CIFAR-10 with DAQ: the recipe of He et al. 2016 (configs/base_cifar10.py).

    python train.py --config configs/cifar10_resnet56.py --workdir runs/cifar10_resnet56 \
        --config.data.dir=PATH

Three times ResNet-20's convolutions (55 against 19); not timed here: a GPU job.
"""

from configs import base_cifar10


def get_config():
  return base_cifar10.recipe(
    "resnet56",
    num_epochs=164.0,
    schedule="step",
    base_learning_rate=0.1,
    weight_decay=1e-4,
    warmup_epochs=0.0,
    decay_epochs=(82.0, 123.0),
  )
