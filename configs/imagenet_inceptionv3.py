"""Inception-v3 on ImageNet with DAQ, at 299x299 (without the auxiliary classifier), 100
epochs of configs/base_imagenet.py's recipe.

    python train.py --config configs/imagenet_inceptionv3.py --workdir runs/imagenet_incv3 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe(
    "inceptionv3", **{**base_imagenet.GOYAL, "num_epochs": 100.0}, image_size=299
  )
