"""The base of the CIFAR-10 configs: the data, and the recipe of He et al. 2016 (section 4.2):
164 epochs (64k steps) of batch 128, SGD 0.1 divided by 10 at epochs 82 and 123, weight decay
1e-4. The variants (cifar10_*.py) name the model and change what their recipe changes.

    python train.py --config configs/base_cifar10.py --config.model.name=resnet20 \
        --config.data.dir=PATH           # what configs/cifar10_resnet20.py runs

PATH (--config.data.dir) is either the official `cifar-10-batches-py` directory or an image
folder (`PATH/<class>/*.png`, or `PATH/train/<class>/...`). 45,000 images train and the last
500 of each class (5,000) validate; with the pickle directory, `--config.data.val_fraction=0
--config.data.eval_split=test` trains on all 50,000 and reports the official test set.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.val_fraction = 0.1
  config.data.eval_split = "val"
  config.data.augment = "cifar"
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "step"
  config.optim.warmup_epochs = 0.0
  config.optim.decay_epochs = (82.0, 123.0)
  config.batch_size = 128
  config.num_epochs = 164.0
  config.log_every_steps = 100
  config.eval_every_epochs = 4.0
  return config


def cosine_recipe(config, *, num_epochs: float, weight_decay: float):
  """The cosine schedule with one warmup epoch that MobileNetV2 and VGG-16 train with."""
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = ()
  config.optim.weight_decay = weight_decay
  config.num_epochs = num_epochs
  return config
