"""MobileNetV2 (Sandler et al. 2018) with pluggable layers; depthwise convs are grouped QConvs.

    model = MobileNetV2(num_classes=1000, conv=partial(qnn.QConv, quant=quant.daq()))

The ImageNet network is torchvision's `mobilenet_v2` (3,504,872 parameters at width 1.0).
`cifar=True` keeps every weight and changes two strides (the stem and the second stage run at
stride 1), the usual adaptation to 32x32 inputs.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.nn.activations import relu6

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUALS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a width to a multiple of `divisor`, never down by more than 10% (as the paper)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
  """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when the shape is kept."""

  features: int
  expansion: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = relu6(self.norm(name="expand_bn")(self.conv(hidden, (1, 1), name="expand")(y)))
    y = self.conv(
      hidden, (3, 3), self.strides, padding=1, feature_group_count=hidden, name="depthwise"
    )(y)
    y = relu6(self.norm(name="depthwise_bn")(y))
    y = self.norm(name="project_bn")(self.conv(self.features, (1, 1), name="project")(y))
    return x + y if self.strides == 1 and x.shape == y.shape else y


class MobileNetV2(nn.Module):
  """MobileNetV2.

  Attributes:
    num_classes: classifier width.
    width_multiplier: scales every width (rounded to multiples of 8).
    cifar: stride 1 in the stem and the second stage, for 32x32 inputs.
    dropout_rate: dropout before the classifier.
    dtype: compute dtype of the float parts.
    conv: the conv layer; built with use_bias=False.
    dense: the classifier layer.
  """

  num_classes: int = 1000
  width_multiplier: float = 1.0
  cifar: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    width = functools.partial(make_divisible, divisor=8)
    stem_strides = 1 if self.cifar else 2
    x = conv(width(32 * self.width_multiplier), (3, 3), stem_strides, padding=1, name="stem_conv")(
      x
    )
    x = relu6(norm(name="stem_bn")(x))
    for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUALS):
      if self.cifar and stage == 1:
        s = 1
      for i in range(n):
        x = InvertedResidual(
          width(c * self.width_multiplier), t, s if i == 0 else 1, conv=conv, norm=norm
        )(x)
    last = width(1280 * max(1.0, self.width_multiplier))
    x = relu6(norm(name="last_bn")(conv(last, (1, 1), name="last_conv")(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
