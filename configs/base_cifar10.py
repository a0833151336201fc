"""The base of the CIFAR-10 configs: `recipe` holds the data settings they share, and each
cifar10_*.py spells out its model's whole recipe through it, or names a shared one (HE, He et
al.'s). `get_config` is ResNet-20 with HE.

    python train.py --config configs/base_cifar10.py \
        --config.data.dir=PATH           # what configs/cifar10_resnet20.py runs

PATH (--config.data.dir) is either the official `cifar-10-batches-py` directory or an image
folder (`PATH/<class>/*.png`, or `PATH/train/<class>/...`). 45,000 images train and the last
500 of each class (5,000) validate; with the pickle directory, `--config.data.val_fraction=0
--config.data.eval_split=test` trains on all 50,000 and reports the official test set.
"""

from configs import default


def recipe(
  model: str,
  *,
  num_epochs: float,
  schedule: str,
  base_learning_rate: float,
  weight_decay: float,
  warmup_epochs: float,
  decay_epochs: tuple[float, ...] = (),
  batch_size: int = 128,
):
  """A CIFAR-10 config: the data settings every CIFAR config shares (the validation split,
  pad-crop-flip) and the model's whole training recipe, every value named by the caller."""
  config = default.get_config()
  config.model.name = model
  config.data.name = "cifar10"
  config.data.val_fraction = 0.1
  config.data.eval_split = "val"
  config.data.augment = "cifar"
  config.optim.schedule = schedule
  config.optim.base_learning_rate = base_learning_rate
  config.optim.base_batch_size = 128
  config.optim.weight_decay = weight_decay
  config.optim.warmup_epochs = warmup_epochs
  config.optim.decay_epochs = decay_epochs
  config.batch_size = batch_size
  config.num_epochs = num_epochs
  config.log_every_steps = 100
  config.eval_every_epochs = 4.0
  return config


# He et al. 2016's CIFAR ResNet recipe (section 4.2): 164 epochs (64k steps) of batch 128, SGD
# 0.1 divided by 10 at epochs 82 and 123, weight decay 1e-4.
HE = {
  "num_epochs": 164.0,
  "schedule": "step",
  "base_learning_rate": 0.1,
  "weight_decay": 1e-4,
  "warmup_epochs": 0.0,
  "decay_epochs": (82.0, 123.0),
}


def get_config():
  return recipe("resnet20", **HE)
