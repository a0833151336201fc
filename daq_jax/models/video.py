"""3-D CNNs for video clips (N, T, H, W, C), with pluggable conv and dense layers.

- `R3D18`: the 3-D ResNet-18 of Tran et al. 2018 ("A Closer Look at Spatiotemporal
  Convolutions"), 3x3x3 convs throughout (torchvision's r3d_18: 33,371,472 parameters with
  400 classes).
- `R2Plus1D18`: R(2+1)D-18 from the same paper: every 3x3x3 conv factorised into a (1,3,3)
  spatial conv and a (3,1,1) temporal one, with the middle width that keeps the parameter
  count of the 3-D conv (torchvision's r2plus1d_18: 31,505,325).
- `C3DSmall`: a small C3D-style net (Tran et al. 2015: 3x3x3 convs, pooling that spares time
  early), sized for clips of 8 frames of 32x32 on a CPU.

As in the image zoo, the first conv is named `stem_conv` and the classifier `head`, so the
default rules keep them float. Batch norm, ReLU, pooling and the residual additions stay in
float; `dtype` sets the compute dtype of the float parts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.nn.activations import relu

# Zoo models that take clips; every other zoo model takes images.
VIDEO_MODELS = ("r3d_18", "r2plus1d_18", "c3d_small")


def _check_clips(model: nn.Module, x) -> None:
  if x.ndim != 5:
    raise ValueError(f"{type(model).__name__} takes clips (N, T, H, W, C), not {x.shape}")


class Conv2Plus1D(nn.Module):
  """A (1,3,3) spatial conv to `mid` channels, BN and ReLU, then a (3,1,1) temporal conv:
  the factorised form of one 3x3x3 conv, strided (s,s,s) as the 3-D one would be."""

  filters: int
  mid: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    s = self.strides
    x = self.conv(self.mid, (1, 3, 3), (1, s, s), padding=[(0, 0), (1, 1), (1, 1)], name="spatial")(
      x
    )
    x = relu(self.norm(name="mid_bn")(x))
    return self.conv(
      self.filters, (3, 1, 1), (s, 1, 1), padding=[(1, 1), (0, 0), (0, 0)], name="temporal"
    )(x)


class VideoBlock(nn.Module):
  """The basic residual block of the video ResNets: two 3x3x3 convs (or their (2+1)D form),
  a 1x1x1 projection where the shape changes."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  factorised: bool = False

  @nn.compact
  def __call__(self, x):
    inputs = x.shape[-1]
    if self.factorised:
      # torchvision's middle width, from the block's input for both pairs: each (2+1)D pair
      # has about the parameters of the 3x3x3 conv it stands for.
      mid = (inputs * self.filters * 27) // (inputs * 9 + 3 * self.filters)
      y = Conv2Plus1D(self.filters, mid, self.conv, self.norm, self.strides, name="conv1")(x)
      y = relu(self.norm(name="bn1")(y))
      y = Conv2Plus1D(self.filters, mid, self.conv, self.norm, name="conv2")(y)
    else:
      same = [(1, 1)] * 3
      y = self.conv(self.filters, (3, 3, 3), self.strides, padding=same, name="conv1")(x)
      y = relu(self.norm(name="bn1")(y))
      y = self.conv(self.filters, (3, 3, 3), padding=same, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1, 1), self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return relu(x + y)


class VideoResNet(nn.Module):
  """R3D / R(2+1)D for clips of 16x112x112 (any size the strides divide).

  Attributes:
    stage_sizes: blocks per stage (2, 2, 2, 2 for the -18 nets).
    factorised: (2+1)D convs (R(2+1)D) instead of 3x3x3 ones (R3D).
    num_classes: classifier width (400 for Kinetics, 101 for UCF-101).
    num_filters: width of the first stage.
    dtype: compute dtype of convs, norms and the classifier.
    conv: the conv layer (nn.Conv or a QConv partial); built with use_bias=False.
    dense: the classifier layer.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  factorised: bool = False
  num_classes: int = 400
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    _check_clips(self, x)
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    if self.factorised:  # torchvision's R(2+1)D stem: (1,7,7) to 45 channels, then (3,1,1)
      x = conv(45, (1, 7, 7), (1, 2, 2), padding=[(0, 0), (3, 3), (3, 3)], name="stem_conv")(x)
      x = relu(norm(name="stem_mid_bn")(x))
      x = conv(self.num_filters, (3, 1, 1), padding=[(1, 1), (0, 0), (0, 0)], name="stem_temporal")(
        x
      )
    else:
      x = conv(
        self.num_filters, (3, 7, 7), (1, 2, 2), padding=[(1, 1), (3, 3), (3, 3)], name="stem_conv"
      )(x)
    x = relu(norm(name="stem_bn")(x))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = VideoBlock(self.num_filters * 2**stage, conv, norm, strides, self.factorised)(x)
    x = jnp.mean(x, axis=(1, 2, 3))
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


R3D18 = functools.partial(VideoResNet, stage_sizes=(2, 2, 2, 2), factorised=False)
R2Plus1D18 = functools.partial(VideoResNet, stage_sizes=(2, 2, 2, 2), factorised=True)


class C3DSmall(nn.Module):
  """A small C3D-style net: 3x3x3 conv-BN-ReLU layers, pooling that spares time first ((1,2,2),
  as C3D's pool1) and halves every axis after; global pooling and a classifier. The stem
  strides space by 2 (not C3D's), so that clips of 32x32 frames train in seconds on a CPU.

  Attributes:
    num_classes: classifier width.
    widths: the three conv widths.
    dtype: compute dtype of the float parts.
    conv: the conv layer.
    dense: the classifier layer.
  """

  num_classes: int = 10
  widths: tuple[int, int, int] = (16, 32, 64)
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    _check_clips(self, x)
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype, padding=[(1, 1)] * 3)
    norm = batch_norm(train, self.dtype)
    x = conv(self.widths[0], (3, 3, 3), (1, 2, 2), name="stem_conv")(x)
    x = nn.max_pool(relu(norm(name="bn0")(x)), (1, 2, 2), strides=(1, 2, 2))
    x = relu(norm(name="bn1")(conv(self.widths[1], (3, 3, 3), name="conv1")(x)))
    x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2), padding="SAME")  # SAME: clips of 1 frame
    x = relu(norm(name="bn2")(conv(self.widths[2], (3, 3, 3), name="conv2")(x)))
    x = jnp.mean(x, axis=(1, 2, 3))
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
