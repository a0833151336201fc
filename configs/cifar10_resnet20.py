"""ResNet-20 on CIFAR-10 with DAQ: the recipe of He et al. 2016 (configs/base_cifar10.py).

    python train.py --config configs/cifar10_resnet20.py --workdir runs/cifar10_resnet20 \
        --config.data.dir=PATH [--config.quant.method=fp32]

Cost on a 2-core AVX2 CPU: 1.2 s a step with DAQ, 2.4 s in fp32 (docs/speed.md), so 7-14
minutes an epoch and 19-38 hours for the whole recipe: a GPU job. Measured short-run results
are in docs/training.md ("Results") and docs/accuracy.md.
"""

from configs import base_cifar10


def get_config():
  return base_cifar10.recipe("resnet20", **base_cifar10.HE)
