"""ResNet-20 on CIFAR-10, a short schedule for comparing methods across seeds: 2 epochs of
batch 128, cosine to 0 after half an epoch of linear warmup, weight decay 1e-4; trained on
45,000 images and validated on the 5,000 held out of the training set (configs/base_cifar10.py).

    python -m benchmarks.accuracy --data-dir PATH        # fp32, daq, daq_sr, ... x 3 seeds
    python train.py --config configs/cifar10_resnet20_short.py --config.data.dir=PATH \
        --config.quant.method=daq_sr --config.seed=1 --workdir runs/short_daq_sr_1

Cost and measured results: docs/accuracy.md.
"""

from configs import base_cifar10


def get_config():
  config = base_cifar10.recipe(
    "resnet20",
    num_epochs=2.0,
    schedule="cosine",
    base_learning_rate=0.1,
    weight_decay=1e-4,
    warmup_epochs=0.5,
  )
  config.eval_every_epochs = 1.0
  return config
