"""The base of the ImageNet configs: `recipe` holds the data pipeline they share, and each
imagenet_*.py names its model and its recipe: GOYAL (Goyal et al. 2017, what ResNet-50 trains
with), STEP (VGG's and AlexNet's), or its own. `get_config` is ResNet-50's.

    python train.py --config configs/base_imagenet.py \
        --config.data.dir=/data/imagenet  # what configs/imagenet_resnet50.py runs

`/data/imagenet` (--config.data.dir) holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the
validation images sorted into class folders); `val` is the eval split. 90 epochs of batch 256
(split over all devices; scale batch_size and the learning rate follows), SGD 0.1 per 256
images, 5 warmup epochs then cosine, weight decay 1e-4, label smoothing 0.1, bf16 for the
float parts. 8 decoding processes per host. Not run here (no GPU and no ImageNet on the
development machines): costs unmeasured.
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
  label_smoothing: float,
  decay_epochs: tuple[float, ...] = (),
  image_size: int = 224,
):
  """An ImageNet config: the data pipeline every ImageNet config shares (an image folder,
  random-resized-crop, 8 decoding processes, bf16 float parts, batch 256 with the learning
  rate per 256 images) and the model's whole training recipe, every value named."""
  config = default.get_config()
  config.model.name = model
  config.model.dtype = "bfloat16"
  config.data.name = "image_folder"
  config.data.image_size = image_size
  config.data.augment = "imagenet"
  config.data.workers = 8
  config.data.prefetch = 4
  config.optim.schedule = schedule
  config.optim.base_learning_rate = base_learning_rate
  config.optim.base_batch_size = 256
  config.optim.weight_decay = weight_decay
  config.optim.warmup_epochs = warmup_epochs
  config.optim.decay_epochs = decay_epochs
  config.batch_size = 256
  config.num_epochs = num_epochs
  config.label_smoothing = label_smoothing
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config


# The recipe of Goyal et al. 2017 that ResNet-50 trains with.
GOYAL = {
  "num_epochs": 90.0,
  "schedule": "cosine",
  "base_learning_rate": 0.1,
  "weight_decay": 1e-4,
  "warmup_epochs": 5.0,
  "label_smoothing": 0.1,
}
# VGG's and AlexNet's: SGD 0.01 per 256 images, divided by 10 at epochs 30 and 60.
STEP = {
  "num_epochs": 90.0,
  "schedule": "step",
  "base_learning_rate": 0.01,
  "weight_decay": 5e-4,
  "warmup_epochs": 0.0,
  "label_smoothing": 0.0,
  "decay_epochs": (30.0, 60.0),
}


def get_config():
  return recipe("resnet50", **GOYAL)
