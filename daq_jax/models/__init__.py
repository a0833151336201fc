"""Models built with `conv` and `dense` module fields, so quantized layers drop in."""

from daq_jax.models.resnet import ResNet, ResNet18, ResNet50

__all__ = ["ResNet", "ResNet18", "ResNet50"]
