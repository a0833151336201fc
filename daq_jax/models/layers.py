"""Pieces the models share: the batch norm they all use and adaptive average pooling."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


def batch_norm(train: bool, dtype: Any, epsilon: float = 1e-5) -> ModuleDef:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here), batch statistics in
  training and the running averages in evaluation."""
  return functools.partial(
    nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=epsilon, dtype=dtype
  )


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d on NHWC `x`: bin i spans [floor(i*H/h), ceil((i+1)*H/h))."""
  height, width = x.shape[1:3]
  out_h, out_w = output_size
  if (height, width) == (out_h, out_w):
    return x
  if height % out_h == 0 and width % out_w == 0:
    x = x.reshape(x.shape[0], out_h, height // out_h, out_w, width // out_w, x.shape[-1])
    return x.mean(axis=(2, 4))

  def bins(size, out):
    return [(i * size // out, math.ceil((i + 1) * size / out)) for i in range(out)]

  rows = [
    jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins(width, out_w)], axis=1)
    for r0, r1 in bins(height, out_h)
  ]
  return jnp.stack(rows, axis=1)
