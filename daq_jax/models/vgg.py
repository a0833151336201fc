"""VGG-16 with batch norm (Simonyan & Zisserman 2015; BN as torchvision's `vgg16_bn`).

    model = VGG16(num_classes=1000, conv=partial(qnn.QConv, quant=quant.daq()))

The ImageNet network has torchvision's 138,365,992 parameters: thirteen 3x3 convs with bias,
BN and ReLU, an adaptive 7x7 average pool and three dense layers with dropout. `cifar=True`
keeps the convs and replaces the classifier by one dense layer on the 512 features left after
five poolings of a 32x32 image (14,728,266 parameters for 10 classes).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, adaptive_avg_pool, batch_norm
from daq_jax.nn.activations import relu

VGG16_LAYERS = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


class VGG(nn.Module):
  """VGG with batch norm.

  Attributes:
    layers: conv widths, "M" for a 2x2 max pool.
    num_classes: classifier width.
    cifar: one dense layer on the pooled features instead of the 4096-wide classifier.
    dropout_rate: dropout in the ImageNet classifier.
    dtype: compute dtype of the float parts.
    conv: the conv layer.
    dense: the dense layer.
  """

  layers: tuple = VGG16_LAYERS
  num_classes: int = 1000
  cifar: bool = False
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    dense = functools.partial(self.dense, dtype=self.dtype)
    n = 0
    for width in self.layers:
      if width == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      name = "stem_conv" if n == 0 else f"conv{n}"
      x = relu(norm(name=f"bn{n}")(conv(width, (3, 3), padding=1, name=name)(x)))
      n += 1
    if self.cifar:
      return dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1)).astype(jnp.float32)
    x = adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    for i in range(2):
      x = relu(dense(4096, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


VGG16 = functools.partial(VGG, layers=VGG16_LAYERS)
