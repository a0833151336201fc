"""The detection task behind the training steps: RetinaNet's loss on a batch, and the
detections of a batch (decoding and NMS), both jit-compiled with fixed shapes.

A batch holds `image` (B, S, S, 3) uint8 and, per image, up to M ground-truth boxes:
`boxes` (B, M, 4) float32 pixels of the padded image, `classes` (B, M) int32 (0-based),
`box_valid` and `crowd` (B, M) bool. The model maps images to `(class_logits (B, N, C),
box_deltas (B, N, 4))` over the N anchors of `Detection.anchors`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from daq_jax.detection import boxes as box_lib
from daq_jax.detection import losses, nms
from daq_jax.detection.config import DetectionConfig


@dataclasses.dataclass(frozen=True)
class Detection:
  """The loss and the post-processing of a detector for square inputs of `image_size`."""

  cfg: DetectionConfig
  image_size: int

  @property
  def anchors(self) -> np.ndarray:
    c = self.cfg
    return box_lib.anchors(
      self.image_size,
      c.levels,
      c.anchor_size,
      tuple(2.0**s for s in c.anchor_scales),
      c.aspect_ratios,
    )

  def loss(self, outputs, batch) -> tuple[jax.Array, dict]:
    """(loss, parts): the focal loss over all non-ignored anchors plus the weighted box loss
    over the foreground ones, both divided by the batch's foreground count (at least 1)."""
    c = self.cfg
    logits, deltas = outputs
    anchors = jnp.asarray(self.anchors)
    matched, label = box_lib.assign_batch(
      anchors,
      batch["boxes"],
      batch["box_valid"],
      batch["crowd"],
      c.foreground_iou,
      c.background_iou,
    )
    foreground = label == 1
    num_fg = jnp.maximum(jnp.sum(foreground), 1).astype(jnp.float32)
    take = jax.vmap(lambda a, i: a[i])
    target_cls = take(batch["classes"], matched)
    onehot = jax.nn.one_hot(target_cls, logits.shape[-1]) * foreground[..., None]
    focal = losses.focal_loss(logits, onehot, c.focal_alpha, c.focal_gamma)
    cls_loss = jnp.sum(focal * (label >= 0)[..., None]) / num_fg
    target_boxes = take(batch["boxes"], matched)
    deltas = deltas.astype(jnp.float32)
    if c.box_loss == "giou":
      per_anchor = losses.giou_loss(box_lib.decode(deltas, anchors[None]), target_boxes)
    else:
      targets = box_lib.encode(target_boxes, anchors[None])
      per_anchor = jnp.sum(losses.smooth_l1(deltas - targets, c.smooth_l1_beta), -1)
    box_loss = jnp.sum(jnp.where(foreground, per_anchor, 0.0)) / num_fg
    loss = cls_loss + c.box_loss_weight * box_loss
    return loss, {"cls_loss": cls_loss, "box_loss": box_loss, "foreground": num_fg / len(label)}

  def detect(self, outputs) -> dict[str, jax.Array]:
    """The detections of a batch: `det_boxes` (B, D, 4) pixels of the padded input clipped to
    it, `det_scores` (B, D), `det_classes` (B, D) int32, `det_valid` (B, D) bool."""
    c = self.cfg
    logits, deltas = outputs
    boxes = box_lib.decode(deltas.astype(jnp.float32), jnp.asarray(self.anchors)[None])
    boxes = jnp.clip(boxes, 0, self.image_size)
    out = nms.batched_nms(
      boxes,
      jax.nn.sigmoid(logits.astype(jnp.float32)),
      score_threshold=c.score_threshold,
      iou_threshold=c.nms_iou,
      pre_nms_top_k=c.pre_nms_top_k,
      max_detections=c.max_detections,
    )
    return dict(zip(("det_boxes", "det_scores", "det_classes", "det_valid"), out, strict=True))
