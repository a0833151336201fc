"""VGG-16 with BN on ImageNet with DAQ: SGD 0.01 per 256 images, weight decay 5e-4, divided
by 10 at epochs 30 and 60, 90 epochs.

    python train.py --config configs/imagenet_vgg16.py --workdir runs/imagenet_vgg16 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = "vgg16"
  config.optim.base_learning_rate = 0.01
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "step"
  config.optim.warmup_epochs = 0.0
  config.optim.decay_epochs = (30.0, 60.0)
  config.label_smoothing = 0.0
  return config
