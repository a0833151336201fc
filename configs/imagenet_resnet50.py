"""ResNet-50 on ImageNet with DAQ: the recipe of configs/base_imagenet.py.

    python train.py --config configs/imagenet_resnet50.py --workdir runs/imagenet_resnet50 \
        --config.data.dir=/data/imagenet

Not run here (no GPU and no ImageNet on the development machines): cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe("resnet50", **base_imagenet.GOYAL)
