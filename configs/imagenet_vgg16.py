"""VGG-16 with BN on ImageNet with DAQ: SGD 0.01 per 256 images, weight decay 5e-4, divided
by 10 at epochs 30 and 60, 90 epochs (`base_imagenet.STEP`).

    python train.py --config configs/imagenet_vgg16.py --workdir runs/imagenet_vgg16 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe("vgg16", **base_imagenet.STEP)
