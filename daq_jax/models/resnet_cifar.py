"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56/110 with pluggable layers.

    model = ResNet20(num_classes=10, conv=partial(qnn.QConv, quant=quant.daq()))

A 3x3 stem with 16 filters, three stages of n basic blocks with 16, 32 and 64 filters (the
first block of stages 2 and 3 strides by 2), global average pooling and the classifier:
6n + 2 layers. Shortcuts are the paper's option A, parameter free: identity, subsampled and
zero-padded in channels where the shape changes; so the parameter counts are the paper's
(0.27M for ResNet-20, 0.85M for ResNet-56).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.models.resnet import BasicBlock
from daq_jax.nn.activations import relu


class CifarResNet(nn.Module):
  """ResNet for 32x32 inputs.

  Attributes:
    depth: 6n + 2 (20, 32, 44, 56, 110).
    num_classes: classifier width.
    num_filters: width of the first stage (16 in the paper).
    dtype: compute dtype of the float parts.
    conv: the conv layer (nn.Conv or a QConv partial); built with use_bias=False.
    dense: the classifier layer.
  """

  depth: int = 20
  num_classes: int = 10
  num_filters: int = 16
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    if (self.depth - 2) % 6:
      raise ValueError(f"CifarResNet: depth={self.depth} is not 6n + 2 (20, 32, 44, 56, 110)")
    blocks = (self.depth - 2) // 6
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    x = relu(norm(name="stem_bn")(conv(self.num_filters, (3, 3), name="stem_conv")(x)))
    for stage in range(3):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(
          self.num_filters * 2**stage,
          conv=conv,
          norm=norm,
          strides=strides,
          shortcut="pad",
          zero_init_residual=False,
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


ResNet20 = functools.partial(CifarResNet, depth=20)
ResNet56 = functools.partial(CifarResNet, depth=56)
