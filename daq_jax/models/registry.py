"""Models by name, for configs: `create("resnet20", num_classes=10, conv=..., dense=...)`."""

from __future__ import annotations

import functools

from daq_jax.models.alexnet import AlexNet
from daq_jax.models.inception import InceptionV3
from daq_jax.models.mobilenetv2 import MobileNetV2
from daq_jax.models.resnet import ResNet18, ResNet50
from daq_jax.models.resnet_cifar import ResNet20, ResNet56
from daq_jax.models.retinanet import DETECTION_MODELS
from daq_jax.models.small_cnn import SmallCNN
from daq_jax.models.vgg import VGG16
from daq_jax.models.video import R3D18, C3DSmall, R2Plus1D18

MODELS = {
  "small_cnn": SmallCNN,
  "resnet20": ResNet20,
  "resnet56": ResNet56,
  "mobilenetv2_cifar": functools.partial(MobileNetV2, cifar=True),
  "vgg16_cifar": functools.partial(VGG16, cifar=True),
  "resnet18": ResNet18,
  "resnet50": ResNet50,
  "mobilenetv2": MobileNetV2,
  "vgg16": VGG16,
  "alexnet": AlexNet,
  "inceptionv3": InceptionV3,
  "r3d_18": R3D18,
  "r2plus1d_18": R2Plus1D18,
  "c3d_small": C3DSmall,
  **DETECTION_MODELS,
}


def create(name: str, **fields):
  """The model `name` built with `fields` (num_classes, dtype, conv, dense, ...).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in MODELS:
    raise ValueError(f"model: unknown name {name!r}; known: {', '.join(MODELS)}")
  return MODELS[name](**fields)
