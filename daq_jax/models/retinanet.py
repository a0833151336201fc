"""RetinaNet (Lin et al. 2017): a ResNet backbone, a feature pyramid and class and box subnets
shared over the levels, with pluggable conv layers, so every conv trains in INT8.

    model = RetinaNet(num_classes=80, backbone="resnet50", conv=partial(QConv, quant=daq()))
    class_logits, box_deltas = model(images)  # (B, N, C), (B, N, 4) over all anchors

The outputs are in the order of `daq_jax.detection.boxes.anchors` (level, row, column,
anchor). BatchNorm stays in the backbone (batch statistics in training); the FPN and the heads
have no normalisation, as in the paper.

References:
  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from daq_jax.models.layers import ModuleDef, batch_norm
from daq_jax.models.resnet import BasicBlock, Bottleneck
from daq_jax.nn.activations import relu

BACKBONES = {
  # name: (blocks per stage, block, width of the first stage)
  "resnet18": ((2, 2, 2, 2), BasicBlock, 64),
  "resnet50": ((3, 4, 6, 3), Bottleneck, 64),
  "resnet10_narrow": ((1, 1, 1, 1), BasicBlock, 16),  # the embedded default's small backbone
}


class ResNetFeatures(nn.Module):
  """The zoo's ResNet without its classifier: the outputs C2..C5 of its four stages
  (strides 4 to 32), keyed by level."""

  stage_sizes: Sequence[int]
  block_cls: Any
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool = True) -> dict[int, jax.Array]:
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
    x = relu(norm(name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    features = {}
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        block_cls = self.block_cls
        x = block_cls(
          self.num_filters * 2**stage,
          conv=conv,
          norm=norm,
          strides=strides,
          name=f"stage{stage + 1}_block{block + 1}",
        )(x)
      features[stage + 2] = x
    return features


class FPN(nn.Module):
  """The feature pyramid: 1x1 laterals of C3..C5 summed top-down with nearest upsampling,
  3x3 outputs P3..P5; P6 a stride-2 3x3 conv of C5 and P7 of ReLU(P6), as RetinaNet's."""

  channels: int
  min_level: int = 3
  max_level: int = 7
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, features: dict[int, jax.Array]) -> dict[int, jax.Array]:
    conv = functools.partial(self.conv, self.channels, dtype=self.dtype)
    top = max(features)
    levels = [level for level in range(self.min_level, min(self.max_level, top) + 1)]
    outputs, above = {}, None
    for level in reversed(levels):
      lateral = conv((1, 1), name=f"lateral{level}")(features[level])
      if above is not None:
        b, h, w, c = lateral.shape
        lateral = lateral + jax.image.resize(above, (b, h, w, c), "nearest")
      above = lateral
      outputs[level] = conv((3, 3), name=f"output{level}")(lateral)
    x = features[top]
    for level in range(top + 1, self.max_level + 1):
      x = conv((3, 3), (2, 2), name=f"output{level}")(x if level == top + 1 else relu(x))
      outputs[level] = x
    return outputs


def pack(levels: list[jax.Array]) -> tuple[jax.Array, jax.Array, list[tuple[int, ...]]]:
  """The pyramid's levels (B, h, w, C), finest first, on one canvas: the first at the top
  left, the others stacked in a column to its right, one zero row or column between any two.

  A 3x3 conv of the canvas equals the 3x3 convs of each level with zero padding, as long as
  the space between the levels is zero again before the next conv (`mask`). A head shared by
  the levels is then one call of each of its layers: one weight gradient over all levels and
  one per-channel state whose statistics are those of all levels together (called once per
  level instead, a quantized layer's state is the mean of the levels', `daq_jax.nn`).

  Returns:
    (canvas, mask (1, H, W, 1) of the levels' cells, the slot (y, x, h, w) of each level).
  """
  first, rest = levels[0], levels[1:]
  slots = [(0, 0, first.shape[1], first.shape[2])]
  y, column = 0, first.shape[2] + 1
  for level in rest:
    slots.append((y, column, level.shape[1], level.shape[2]))
    y += level.shape[1] + 1
  height = max(first.shape[1], y - 1)
  width = column + max((level.shape[2] for level in rest), default=-1)
  canvas = jnp.zeros((first.shape[0], height, width, first.shape[3]), first.dtype)
  mask = jnp.zeros((1, height, width, 1), first.dtype)
  for (top, left, h, w), level in zip(slots, levels, strict=True):
    canvas = canvas.at[:, top : top + h, left : left + w].set(level)
    mask = mask.at[:, top : top + h, left : left + w].set(1)
  return canvas, mask, slots


class Head(nn.Module):
  """A subnet shared by every level: `convs` 3x3 convs with ReLU, then a 3x3 conv to
  `outputs` per anchor, each conv called once on the levels packed together (`pack`), or
  (`canvas=False`) once per level; the levels' outputs are flattened and joined:
  (B, N, outputs)."""

  outputs: int
  anchors: int
  channels: int
  convs: int = 4
  bias_init: Any = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  canvas: bool = True

  @nn.compact
  def __call__(self, pyramid: dict[int, jax.Array]) -> jax.Array:
    init = nn.initializers.normal(0.01)  # the paper's initialisation of the subnets
    layers = [
      self.conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=init, name=f"conv{i + 1}")
      for i in range(self.convs)
    ]
    final = self.conv(
      self.anchors * self.outputs,
      (3, 3),
      dtype=self.dtype,
      kernel_init=init,
      bias_init=self.bias_init,
      name="output",
    )
    if self.canvas:
      x, mask, slots = pack([pyramid[level] for level in sorted(pyramid)])
      for layer in layers:
        x = relu(layer(x)) * mask.astype(x.dtype)
      x = final(x)
      out = [x[:, y : y + h, left : left + w] for y, left, h, w in slots]
    else:
      out = []
      for level in sorted(pyramid):
        x = pyramid[level]
        for layer in layers:
          x = relu(layer(x))
        out.append(final(x))
    out = [o.reshape(o.shape[0], -1, self.outputs) for o in out]
    return jnp.concatenate(out, axis=1).astype(jnp.float32)


class RetinaNet(nn.Module):
  """RetinaNet on a zoo ResNet.

  Attributes:
    num_classes: object classes (no background class: sigmoid outputs).
    backbone: a key of `BACKBONES`.
    min_level, max_level, fpn_channels, head_convs, anchors_per_cell, prior, head_canvas: as
      the `daq_jax.detection.DetectionConfig` keys of the same names.
    dtype: compute dtype of the float parts.
    conv: the conv layer (nn.Conv or a QConv partial), for every conv of the network.
  """

  num_classes: int
  backbone: str = "resnet50"
  min_level: int = 3
  max_level: int = 7
  fpn_channels: int = 256
  head_convs: int = 4
  anchors_per_cell: int = 9
  prior: float = 0.01
  head_canvas: bool = True
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool = True):
    stages, block, width = BACKBONES[self.backbone]
    features = ResNetFeatures(stages, block, width, self.dtype, self.conv, name="backbone")(
      x, train
    )
    pyramid = FPN(
      self.fpn_channels, self.min_level, self.max_level, self.dtype, self.conv, name="fpn"
    )(features)
    common = dict(
      anchors=self.anchors_per_cell,
      channels=self.fpn_channels,
      convs=self.head_convs,
      dtype=self.dtype,
      conv=self.conv,
      canvas=self.head_canvas,
    )
    bias = -math.log((1 - self.prior) / self.prior)
    logits = Head(
      self.num_classes, bias_init=nn.initializers.constant(bias), name="class_head", **common
    )(pyramid)
    deltas = Head(4, name="box_head", **common)(pyramid)
    return logits, deltas


DETECTION_MODELS = {
  "retinanet_r50": functools.partial(RetinaNet, backbone="resnet50"),
  "retinanet_r18": functools.partial(RetinaNet, backbone="resnet18"),
  "retinanet_small": functools.partial(RetinaNet, backbone="resnet10_narrow"),
}
