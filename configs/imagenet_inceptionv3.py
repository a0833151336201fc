"""Inception-v3 on ImageNet with DAQ, at 299x299 (without the auxiliary classifier).

    python train.py --config configs/imagenet_inceptionv3.py --workdir runs/imagenet_incv3 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = "inceptionv3"
  config.data.image_size = 299
  config.num_epochs = 100.0
  return config
