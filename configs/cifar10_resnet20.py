"""ResNet-20 on CIFAR-10 with DAQ: the recipe of He et al. 2016 (configs/base_cifar10.py).

    python train.py --config configs/cifar10_resnet20.py --workdir runs/cifar10_resnet20 \
        --config.data.dir=PATH [--config.quant.method=fp32]

Cost on the 2-core CPU: about 0.7 s a step for fp32 and DAQ alike (benchmarks/train_step.py),
4-4.5 min an epoch, some 12 hours for the whole recipe: a GPU job. Measured short-run results
are in the README ("Results").
"""

from configs import base_cifar10


def get_config():
  config = base_cifar10.get_config()
  config.model.name = "resnet20"
  return config
