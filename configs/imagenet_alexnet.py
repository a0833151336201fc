"""AlexNet on ImageNet with DAQ: VGG's schedule (`base_imagenet.step_recipe`).

    python train.py --config configs/imagenet_alexnet.py --workdir runs/imagenet_alexnet \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  config = base_imagenet.get_config()
  config.model.name = "alexnet"
  return base_imagenet.step_recipe(config)
