"""AlexNet on ImageNet with DAQ: configs/imagenet_vgg16.py's schedule with AlexNet.

    python train.py --config configs/imagenet_alexnet.py --workdir runs/imagenet_alexnet \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import imagenet_vgg16


def get_config():
  config = imagenet_vgg16.get_config()
  config.model.name = "alexnet"
  return config
