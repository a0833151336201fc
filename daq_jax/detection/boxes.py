"""Boxes for a one-stage detector, in JAX with fixed shapes: IoU, anchors, the box coding and
the assignment of anchors to ground truth.

Boxes are (x1, y1, x2, y2) in pixels of the padded input image, float32. A batch holds a fixed
number of ground-truth boxes per image, the unused ones masked out, so that every step has the
same shapes and compiles once.

References:
  Lin et al., "Focal Loss for Dense Object Detection" (RetinaNet), ICCV 2017.
  Ren et al., "Faster R-CNN", NeurIPS 2015 (the box coding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The largest log-scale a decoded box may grow by (detectron2's, 1000 / 16 pixels).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
  return jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0)


def _intersection(a: jax.Array, b: jax.Array) -> jax.Array:
  """The intersection area of every box of a (N, 4) with every box of b (M, 4): (N, M)."""
  lo = jnp.maximum(a[:, None, :2], b[None, :, :2])
  hi = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.clip(hi - lo, 0)
  return wh[..., 0] * wh[..., 1]


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Intersection over union of every box of a (N, 4) with every box of b (M, 4): (N, M);
  0 where the union is empty."""
  inter = _intersection(a, b)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def ioa(a: jax.Array, b: jax.Array) -> jax.Array:
  """Intersection over the area of a's box (N, M): how much of an anchor a crowd box covers."""
  inter = _intersection(a, b)
  size = area(a)[:, None]
  return jnp.where(size > 0, inter / jnp.where(size > 0, size, 1), 0.0)


def anchors(
  image_size: int,
  levels: Sequence[int],
  size_per_stride: float = 4.0,
  scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> np.ndarray:
  """RetinaNet's anchors for a square input of `image_size`: (N, 4) float32.

  At pyramid level l (stride 2**l) every cell gets len(scales) * len(aspect_ratios) anchors
  centred on the cell, of side size_per_stride * 2**l * scale and height/width ratio r, at
  constant area. The order is level, row, column, anchor: the order of the head's outputs.
  """
  out = []
  for level in levels:
    stride = 2**level
    cells = image_size // stride
    shapes = []
    for ratio in aspect_ratios:
      for scale in scales:
        side = size_per_stride * stride * scale
        w, h = side / math.sqrt(ratio), side * math.sqrt(ratio)
        shapes.append((-w / 2, -h / 2, w / 2, h / 2))
    centres = (np.arange(cells) + 0.5) * stride
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    shift = np.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
    out.append((shift + np.asarray(shapes)[None]).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def encode(boxes: jax.Array, anchors: jax.Array) -> jax.Array:
  """The regression targets (dx, dy, dw, dh) of `boxes` relative to `anchors` (both (..., 4)):
  the centre shift in anchor widths and heights, and the log of the size ratio."""
  aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
  ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
  bw = jnp.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
  bh = jnp.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
  bx, by = boxes[..., 0] + bw / 2, boxes[..., 1] + bh / 2
  return jnp.stack([(bx - ax) / aw, (by - ay) / ah, jnp.log(bw / aw), jnp.log(bh / ah)], -1)


def decode(deltas: jax.Array, anchors: jax.Array) -> jax.Array:
  """The boxes that `deltas` (..., 4) encode relative to `anchors`: `encode`'s inverse, with
  the size change clipped at `MAX_LOG_SCALE`."""
  aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
  ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
  dw = jnp.minimum(deltas[..., 2], MAX_LOG_SCALE)
  dh = jnp.minimum(deltas[..., 3], MAX_LOG_SCALE)
  x, y = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
  w, h = aw * jnp.exp(dw), ah * jnp.exp(dh)
  return jnp.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def assign(
  anchors: jax.Array,
  boxes: jax.Array,
  valid: jax.Array,
  crowd: jax.Array,
  foreground_iou: float = 0.5,
  background_iou: float = 0.4,
) -> tuple[jax.Array, jax.Array]:
  """RetinaNet's assignment of anchors (N, 4) to the ground truth of one image.

  An anchor is foreground when its best IoU with a (valid, non-crowd) box is at least
  `foreground_iou`, background below `background_iou`, ignored between. Each box's best
  anchors are foreground too, so that no box goes unmatched (detectron2's low-quality
  matches). An anchor that a crowd box covers by `foreground_iou` of its area is ignored, not
  background (crowd regions teach nothing, as in COCO's evaluation).

  Args:
    boxes: (M, 4) the image's boxes; valid: (M,) which are real; crowd: (M,) which are crowd.

  Returns:
    (matched, label): per anchor the index of its box (N,) int32, and 1 foreground,
    0 background, -1 ignored (N,) int32.
  """
  usable = valid & ~crowd
  overlaps = jnp.where(usable[None, :], iou(anchors, boxes), -1.0)
  matched = jnp.argmax(overlaps, axis=1).astype(jnp.int32)
  best = jnp.max(overlaps, axis=1)
  label = jnp.where(best >= foreground_iou, 1, jnp.where(best < background_iou, 0, -1))
  # Low-quality matches: every anchor that ties for a box's best IoU (> 0) is foreground.
  per_box = jnp.max(overlaps, axis=0)
  ties = (overlaps == per_box[None, :]) & (per_box[None, :] > 0) & usable[None, :]
  low_quality = jnp.any(ties, axis=1)
  matched = jnp.where(low_quality & (label != 1), jnp.argmax(ties, axis=1), matched)
  label = jnp.where(low_quality, 1, label)
  covered = jnp.any(
    jnp.where((valid & crowd)[None, :], ioa(anchors, boxes), 0.0) >= foreground_iou, axis=1
  )
  label = jnp.where((label == 0) & covered, -1, label)
  return matched.astype(jnp.int32), label.astype(jnp.int32)


def assign_batch(anchors, boxes, valid, crowd, foreground_iou=0.5, background_iou=0.4):
  """`assign` over a batch: boxes (B, M, 4), valid and crowd (B, M)."""
  return jax.vmap(lambda b, v, c: assign(anchors, b, v, c, foreground_iou, background_iou))(
    boxes, valid, crowd
  )
