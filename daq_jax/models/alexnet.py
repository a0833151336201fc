"""AlexNet (Krizhevsky et al. 2012), in torchvision's single-tower form (61,100,840 parameters).

model = AlexNet(num_classes=1000, conv=partial(qnn.QConv, quant=quant.daq()))
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, adaptive_avg_pool
from daq_jax.nn.activations import relu


class AlexNet(nn.Module):
  """AlexNet for 224x224 inputs (any size from 63 up works, via the adaptive pool).

  Attributes:
    num_classes: classifier width.
    dropout_rate: dropout before the two hidden dense layers.
    dtype: compute dtype of the float parts.
    conv: the conv layer.
    dense: the dense layer.
  """

  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, dtype=self.dtype)
    dense = functools.partial(self.dense, dtype=self.dtype)
    pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    x = pool(relu(conv(64, (11, 11), 4, padding=2, name="stem_conv")(x)))
    x = pool(relu(conv(192, (5, 5), padding=2, name="conv1")(x)))
    x = relu(conv(384, (3, 3), padding=1, name="conv2")(x))
    x = relu(conv(256, (3, 3), padding=1, name="conv3")(x))
    x = pool(relu(conv(256, (3, 3), padding=1, name="conv4")(x)))
    x = adaptive_avg_pool(x, (6, 6)).reshape(x.shape[0], -1)
    for i in range(2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = relu(dense(4096, name=f"fc{i}")(x))
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)
