"""ResNet-18 on ImageNet with DAQ: the recipe of configs/base_imagenet.py without label
smoothing.

    python train.py --config configs/imagenet_resnet18.py --workdir runs/imagenet_resnet18 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe("resnet18", **{**base_imagenet.GOYAL, "label_smoothing": 0.0})
