"""A small CNN for tiny images (the default config's 8x8 digits) and quick experiments."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.nn.activations import relu


class SmallCNN(nn.Module):
  """Three 3x3 conv-BN-ReLU layers (the last strides by 2), global pooling, a classifier.

  Attributes:
    num_classes: classifier width.
    widths: the three conv widths.
    dtype: compute dtype of the float parts.
    conv: the conv layer.
    dense: the classifier layer.
  """

  num_classes: int = 10
  widths: tuple[int, int, int] = (32, 64, 64)
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    for i, width in enumerate(self.widths):
      name = "stem_conv" if i == 0 else f"conv{i}"
      x = conv(width, (3, 3), 2 if i == len(self.widths) - 1 else 1, name=name)(x)
      x = relu(norm(name=f"bn{i}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
