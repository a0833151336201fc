"""ResNet-20 on CIFAR-10 with DAQ: the recipe of He et al. 2016 (section 4.2).

    python train.py --config configs/cifar10_resnet20.py --workdir runs/cifar10_resnet20 \
        --config.data.dir=PATH [--config.quant.method=fp32]

PATH is either the official `cifar-10-batches-py` directory or an image folder
(`PATH/<class>/*.png`, or `PATH/train/<class>/...`). 45,000 images train and the last 500 of
each class (5,000) validate; with the pickle directory, `--config.data.val_fraction=0
--config.data.eval_split=test` trains on all 50,000 and reports the official test set.
164 epochs (64k steps) of batch 128, SGD 0.1 divided by 10 at epochs 82 and 123.
Cost on the 2-core CPU: about 0.7 s a step for fp32 and DAQ alike (benchmarks/train_step.py),
4-4.5 min an epoch, some 12 hours for the whole recipe: a GPU job. Measured short-run results
are in the README ("Results").
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet20"
  config.data.name = "cifar10"
  config.data.val_fraction = 0.1
  config.data.eval_split = "val"
  config.data.augment = "cifar"
  config.optim.base_learning_rate = 0.1
  config.optim.base_batch_size = 128
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "step"
  config.optim.warmup_epochs = 0.0
  config.optim.decay_epochs = (82.0, 123.0)
  config.batch_size = 128
  config.num_epochs = 164.0
  config.log_every_steps = 100
  config.eval_every_epochs = 4.0
  return config
