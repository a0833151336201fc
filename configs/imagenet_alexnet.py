"""AlexNet on ImageNet with DAQ: VGG's schedule (`base_imagenet.STEP`).

    python train.py --config configs/imagenet_alexnet.py --workdir runs/imagenet_alexnet \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe("alexnet", **base_imagenet.STEP)
