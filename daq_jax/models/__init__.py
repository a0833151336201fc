"""Models built with `conv` and `dense` module fields, so quantized layers drop in.

Image models take (N, H, W, C); the video models (`VIDEO_MODELS`: R3D-18, R(2+1)D-18 and a
small C3D) take clips (N, T, H, W, C); the detectors (`DETECTION_MODELS`: RetinaNet on
ResNet-50, ResNet-18 or a small ResNet) map images to class logits and box deltas per anchor.
Every classifier names its first conv `stem_conv` and its classifier `head`, so a training
config can keep those two in float (`daq_jax.training` does, on request).
"""

from daq_jax.models.alexnet import AlexNet
from daq_jax.models.inception import InceptionV3
from daq_jax.models.mobilenetv2 import MobileNetV2
from daq_jax.models.registry import MODELS, create
from daq_jax.models.resnet import ResNet, ResNet18, ResNet50
from daq_jax.models.resnet_cifar import CifarResNet, ResNet20, ResNet56
from daq_jax.models.retinanet import DETECTION_MODELS, RetinaNet
from daq_jax.models.small_cnn import SmallCNN
from daq_jax.models.vgg import VGG, VGG16
from daq_jax.models.video import R3D18, VIDEO_MODELS, C3DSmall, R2Plus1D18, VideoResNet

__all__ = [
  "DETECTION_MODELS",
  "MODELS",
  "R3D18",
  "VGG",
  "VGG16",
  "VIDEO_MODELS",
  "AlexNet",
  "C3DSmall",
  "CifarResNet",
  "InceptionV3",
  "MobileNetV2",
  "R2Plus1D18",
  "ResNet",
  "ResNet18",
  "ResNet20",
  "ResNet50",
  "ResNet56",
  "RetinaNet",
  "SmallCNN",
  "VideoResNet",
  "create",
]
