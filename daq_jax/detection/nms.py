"""Batched, class-aware non-maximum suppression in JAX with fixed shapes (one compile)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from daq_jax.detection import boxes as box_lib


def nms_keep(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float):
  """Greedy NMS of one image's candidates sorted by descending score: (K,) bool, True for
  each box kept. A box is dropped when a kept, higher-scored box overlaps it by more than
  `iou_threshold` (IoU); invalid candidates are never kept and suppress nothing."""
  del scores  # the order is the ranking
  overlaps = box_lib.iou(boxes, boxes) > iou_threshold
  k = boxes.shape[0]

  def body(i, keep):
    earlier = jnp.arange(k) < i
    suppressed = jnp.any(keep & earlier & overlaps[:, i])
    return keep.at[i].set(valid[i] & ~suppressed)

  return jax.lax.fori_loop(0, k, body, jnp.zeros(k, bool))


def batched_nms(
  boxes: jax.Array,
  scores: jax.Array,
  *,
  score_threshold: float,
  iou_threshold: float,
  pre_nms_top_k: int,
  max_detections: int,
):
  """The detections of a batch from per-anchor boxes (B, N, 4) and class scores (B, N, C).

  Per image: the `pre_nms_top_k` best (anchor, class) pairs above `score_threshold`, NMS
  within each class (boxes of different classes never suppress each other), then the
  `max_detections` best kept.

  Returns:
    (boxes (B, D, 4), scores (B, D), classes (B, D) int32, valid (B, D) bool), best first.
  """
  num_classes = scores.shape[-1]

  def one(boxes, scores):
    flat = scores.reshape(-1)
    k = min(pre_nms_top_k, flat.shape[0])
    top, index = jax.lax.top_k(flat, k)
    anchor, cls = index // num_classes, (index % num_classes).astype(jnp.int32)
    cand = boxes[anchor]
    valid = top > score_threshold
    # Class-aware in one pass: each class's boxes moved far from every other class's.
    offset = (cls.astype(cand.dtype) * (jnp.max(jnp.abs(cand)) * 2 + 1))[:, None]
    keep = nms_keep(cand + offset, top, valid, iou_threshold)
    ranked = jnp.where(keep, top, -jnp.inf)
    d = min(max_detections, k)
    best, order = jax.lax.top_k(ranked, d)
    out = (cand[order], top[order], cls[order], jnp.isfinite(best))
    if d < max_detections:  # fewer candidates than detections: pad
      pad = max_detections - d
      out = (
        jnp.pad(out[0], ((0, pad), (0, 0))),
        jnp.pad(out[1], (0, pad)),
        jnp.pad(out[2], (0, pad)),
        jnp.pad(out[3], (0, pad)),
      )
    return out

  return jax.vmap(one)(boxes, scores)
