"""The base of the ImageNet configs: the data, and the recipe of Goyal et al. 2017 that
ResNet-50 trains with. The variants (imagenet_*.py) name the model and change what their
recipe changes.

    python train.py --config configs/base_imagenet.py --config.model.name=resnet50 \
        --config.data.dir=/data/imagenet  # what configs/imagenet_resnet50.py runs

`/data/imagenet` (--config.data.dir) holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the
validation images sorted into class folders); `val` is the eval split. 90 epochs of batch 256
(split over all devices; scale batch_size and the learning rate follows), SGD 0.1 per 256
images, 5 warmup epochs then cosine, weight decay 1e-4, label smoothing 0.1, bf16 for the
float parts. 8 decoding processes per host. Not run here (no GPU and no ImageNet on the
development machines): costs unmeasured.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.dtype = "bfloat16"
  config.data.name = "image_folder"
  config.data.image_size = 224
  config.data.augment = "imagenet"
  config.data.workers = 8
  config.data.prefetch = 4
  config.optim.base_batch_size = 256
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 5.0
  config.batch_size = 256
  config.num_epochs = 90.0
  config.label_smoothing = 0.1
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config


def step_recipe(config):
  """VGG's and AlexNet's recipe: SGD 0.01 per 256 images, weight decay 5e-4, divided by 10
  at epochs 30 and 60, no warmup, no label smoothing."""
  config.optim.base_learning_rate = 0.01
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "step"
  config.optim.warmup_epochs = 0.0
  config.optim.decay_epochs = (30.0, 60.0)
  config.label_smoothing = 0.0
  return config
