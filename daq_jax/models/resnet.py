"""ImageNet ResNets (He et al. 2016; v1.5: the bottleneck strides in its 3x3 conv) with
pluggable conv and dense layers.

    model = ResNet50(num_classes=1000, conv=partial(qnn.QConv, quant=quant.daq()))

Channels last. BatchNorm, ReLU, pooling and the residual additions stay in float; `dtype`
sets the compute dtype of the float parts (bfloat16 for mixed precision).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.nn.activations import relu


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34, and the CIFAR ResNets with `shortcut="pad"`).

  Attributes:
    shortcut: where the shape changes, `projection` (1x1 conv and BN, option B) or `pad`
      (subsample and zero-pad the channels, parameter free: option A of the CIFAR ResNets).
    zero_init_residual: start the last BN's scale at zero (Goyal et al. 2017).
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = "projection"
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), self.strides, name="conv1")(x)
    y = relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), name="conv2")(y)
    scale_init = nn.initializers.zeros_init() if self.zero_init_residual else nn.initializers.ones
    y = self.norm(name="bn2", scale_init=scale_init)(y)
    if x.shape != y.shape and self.shortcut == "pad":
      x = x[:, :: self.strides, :: self.strides, :]
      extra = self.filters - x.shape[-1]
      x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)])
    elif x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (ResNet-50 and up)."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
    y = self.conv(self.filters, (3, 3), self.strides, name="conv2")(y)
    y = relu(self.norm(name="bn2")(y))
    y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros_init())(y)
    if x.shape != y.shape:
      x = self.conv(4 * self.filters, (1, 1), self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return relu(x + y)


class ResNet(nn.Module):
  """ResNet for 224x224 inputs.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: `BasicBlock` or `Bottleneck`.
    num_classes: classifier width.
    num_filters: width of the first stage.
    dtype: compute dtype of convs, norms and the classifier.
    conv: the conv layer (nn.Conv or a QConv partial); built with use_bias=False.
    dense: the classifier layer (nn.Dense or a QDense partial).
  """

  stage_sizes: Sequence[int]
  block_cls: Callable
  num_classes: int = 1000
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
    x = relu(norm(name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.num_filters * 2**stage, conv=conv, norm=norm, strides=strides)(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
