"""ResNet-18 on ImageNet with DAQ: configs/imagenet_resnet50.py with ResNet-18.

    python train.py --config configs/imagenet_resnet18.py --workdir runs/imagenet_resnet18 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = "resnet18"
  config.label_smoothing = 0.0
  return config
