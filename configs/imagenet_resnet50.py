"""ResNet-50 on ImageNet with DAQ (the base of the other ImageNet configs).

    python train.py --config configs/imagenet_resnet50.py --workdir runs/imagenet_resnet50 \
        --config.data.dir=/data/imagenet

`/data/imagenet` holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the validation images
sorted into class folders); `val` is the eval split. 90 epochs of batch 256 (split over all
devices; scale batch_size and the learning rate follows), SGD 0.1 per 256 images, 5 warmup
epochs then cosine, weight decay 1e-4, label smoothing 0.1, bf16 for the float parts.
8 decoding processes per host. Not run here (no GPU and no ImageNet on the development
machines): cost unmeasured.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet50"
  config.model.dtype = "bfloat16"
  config.data.name = "image_folder"
  config.data.image_size = 224
  config.data.val_fraction = 0.0
  config.data.eval_split = "test"
  config.data.augment = "imagenet"
  config.data.workers = 8
  config.data.prefetch = 4
  config.optim.base_learning_rate = 0.1
  config.optim.base_batch_size = 256
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 5.0
  config.batch_size = 256
  config.num_epochs = 90.0
  config.label_smoothing = 0.1
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config
