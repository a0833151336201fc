"""Inception-v3 (Szegedy et al. 2016), in torchvision's layout (`inception_v3`).

    model = InceptionV3(num_classes=1000, conv=partial(qnn.QConv, quant=quant.daq()))

Every conv is bias-free with batch norm (eps 1e-3) and ReLU. 23,834,568 parameters, or
torchvision's 27,161,264 with the auxiliary classifier (`aux_logits=True`, which then returns
(logits, aux_logits) in training). Inputs are 299x299 (75x75 is the smallest that works).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.nn.activations import relu


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm -> ReLU; the conv keeps the name `conv` inside."""

  features: int
  kernel_size: tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: Any = 0
  conv_name: str = "conv"

  @nn.compact
  def __call__(self, x):
    x = self.conv(
      self.features, self.kernel_size, self.strides, padding=self.padding, name=self.conv_name
    )(x)
    return relu(self.norm(name="bn")(x))


def _avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  pool_features: int
  unit: ModuleDef

  @nn.compact
  def __call__(self, x):
    u = self.unit
    b1 = u(64, (1, 1), name="branch1x1")(x)
    b5 = u(64, (5, 5), padding=2, name="branch5x5_2")(u(48, (1, 1), name="branch5x5_1")(x))
    b3 = u(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = u(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
    b3 = u(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
    bp = u(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  unit: ModuleDef

  @nn.compact
  def __call__(self, x):
    u = self.unit
    b3 = u(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = u(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = u(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
    bd = u(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  unit: ModuleDef

  @nn.compact
  def __call__(self, x):
    u, c7 = self.unit, self.channels_7x7
    row, col = ((1, 7), ((0, 0), (3, 3))), ((7, 1), ((3, 3), (0, 0)))
    b1 = u(192, (1, 1), name="branch1x1")(x)
    b7 = u(c7, (1, 1), name="branch7x7_1")(x)
    b7 = u(c7, row[0], padding=row[1], name="branch7x7_2")(b7)
    b7 = u(192, col[0], padding=col[1], name="branch7x7_3")(b7)
    bd = u(c7, (1, 1), name="branch7x7dbl_1")(x)
    for i, ((kernel, pad), out) in enumerate(zip((col, row, col, row), (c7, c7, c7, 192))):
      bd = u(out, kernel, padding=pad, name=f"branch7x7dbl_{i + 2}")(bd)
    bp = u(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  unit: ModuleDef

  @nn.compact
  def __call__(self, x):
    u = self.unit
    b3 = u(320, (3, 3), strides=2, name="branch3x3_2")(u(192, (1, 1), name="branch3x3_1")(x))
    b7 = u(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = u(192, (1, 7), padding=((0, 0), (3, 3)), name="branch7x7x3_2")(b7)
    b7 = u(192, (7, 1), padding=((3, 3), (0, 0)), name="branch7x7x3_3")(b7)
    b7 = u(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  unit: ModuleDef

  @nn.compact
  def __call__(self, x):
    u = self.unit
    row, col = ((1, 3), ((0, 0), (1, 1))), ((3, 1), ((1, 1), (0, 0)))

    def split(y, prefix):
      return [
        u(384, row[0], padding=row[1], name=f"{prefix}a")(y),
        u(384, col[0], padding=col[1], name=f"{prefix}b")(y),
      ]

    b1 = u(320, (1, 1), name="branch1x1")(x)
    b3 = split(u(384, (1, 1), name="branch3x3_1")(x), "branch3x3_2")
    bd = u(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = split(u(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd), "branch3x3dbl_3")
    bp = u(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionAux(nn.Module):
  num_classes: int
  unit: ModuleDef
  dense: ModuleDef

  @nn.compact
  def __call__(self, x):
    if min(x.shape[1:3]) < 17:
      raise ValueError(
        f"InceptionV3 aux_logits needs inputs of 299x299 or more: the auxiliary classifier sees "
        f"a {x.shape[1]}x{x.shape[2]} map and needs 17x17"
      )
    x = nn.avg_pool(x, (5, 5), strides=(3, 3))
    x = self.unit(128, (1, 1), name="conv0")(x)
    x = self.unit(768, (5, 5), name="conv1")(x)
    return self.dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class InceptionV3(nn.Module):
  """Inception-v3.

  Attributes:
    num_classes: classifier width.
    aux_logits: build the auxiliary classifier (returned next to the logits in training).
    dropout_rate: dropout before the classifier.
    dtype: compute dtype of the float parts.
    conv: the conv layer; built with use_bias=False.
    dense: the classifier layer.
  """

  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype, epsilon=1e-3)
    dense = functools.partial(self.dense, dtype=self.dtype)
    unit = functools.partial(ConvBN, conv=conv, norm=norm)
    x = unit(32, (3, 3), strides=2, conv_name="stem_conv", name="Conv2d_1a_3x3")(x)
    x = unit(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = unit(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = unit(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = unit(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, unit, name=name)(x)
    x = InceptionB(unit, name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, unit, name=name)(x)
    aux = None
    if self.aux_logits and (train or self.is_initializing()):
      aux = InceptionAux(self.num_classes, unit, dense, name="AuxLogits")(x).astype(jnp.float32)
    x = InceptionD(unit, name="Mixed_7a")(x)
    x = InceptionE(unit, name="Mixed_7b")(x)
    x = InceptionE(unit, name="Mixed_7c")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
    logits = dense(self.num_classes, name="head")(x).astype(jnp.float32)
    return (logits, aux) if aux is not None else logits
