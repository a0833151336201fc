"""Models built with `conv` and `dense` module fields, so quantized layers drop in.

Every model names its first conv `stem_conv` and its classifier `head`, so a training config
can keep those two in float (`daq_jax.training` does, on request).
"""

from daq_jax.models.alexnet import AlexNet
from daq_jax.models.inception import InceptionV3
from daq_jax.models.mobilenetv2 import MobileNetV2
from daq_jax.models.registry import MODELS, create
from daq_jax.models.resnet import ResNet, ResNet18, ResNet50
from daq_jax.models.resnet_cifar import CifarResNet, ResNet20, ResNet56
from daq_jax.models.small_cnn import SmallCNN
from daq_jax.models.vgg import VGG, VGG16

__all__ = [
  "MODELS",
  "VGG",
  "VGG16",
  "AlexNet",
  "CifarResNet",
  "InceptionV3",
  "MobileNetV2",
  "ResNet",
  "ResNet18",
  "ResNet20",
  "ResNet50",
  "ResNet56",
  "SmallCNN",
  "create",
]
