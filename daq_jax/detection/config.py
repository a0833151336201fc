"""`DetectionConfig`: the detector's anchors, losses and post-processing (the `detection.*`
keys of a config; unused by classification and video runs)."""

from __future__ import annotations

import dataclasses

BOX_LOSSES = ("smooth_l1", "giou")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionConfig:
  """RetinaNet's settings; the defaults are the paper's (Lin et al. 2017) and detectron2's.

  Attributes:
    min_level, max_level: the FPN levels with heads (stride 2**level): P3-P7 in the paper.
    fpn_channels: the width of the FPN and of the heads.
    head_convs: 3x3 convs (with ReLU) of each head before its output conv (4 in the paper).
    anchor_size: an anchor's side at scale 1, in strides (4: 32 pixels at P3).
    anchor_scales: the scales per cell, as powers of 2 (0, 1/3, 2/3).
    aspect_ratios: the height/width ratios per cell.
    foreground_iou, background_iou: an anchor is foreground at an IoU of at least the first,
      background below the second, ignored between.
    focal_alpha, focal_gamma: the focal loss.
    box_loss: `smooth_l1` on the box coding, or `giou` on the decoded boxes.
    smooth_l1_beta: where smooth-L1 turns from squared to linear (detectron2: 0.1).
    box_loss_weight: the box loss's weight against the class loss.
    prior: the foreground probability the class output starts at (bias -log((1-p)/p)).
    score_threshold: candidates below it are dropped before NMS (COCO practice: 0.05).
    nms_iou: boxes of one class overlapping a better one by more than this are dropped.
    pre_nms_top_k: the best candidates per image that go into NMS.
    max_detections: detections kept per image (COCO's metric counts 100).
    head_canvas: the heads' layers run once on the levels packed on one canvas (True: one
      weight gradient and one quantizer state over all levels), or once per level (False: a
      shared layer applied per level, its state the mean over the levels).
  """

  min_level: int = 3
  max_level: int = 7
  fpn_channels: int = 256
  head_convs: int = 4
  anchor_size: float = 4.0
  anchor_scales: tuple[float, ...] = (0.0, 1 / 3, 2 / 3)
  aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
  foreground_iou: float = 0.5
  background_iou: float = 0.4
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  box_loss: str = "smooth_l1"
  smooth_l1_beta: float = 0.1
  box_loss_weight: float = 1.0
  prior: float = 0.01
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  pre_nms_top_k: int = 1000
  max_detections: int = 100
  head_canvas: bool = True

  def __post_init__(self):
    if not 2 <= self.min_level <= self.max_level <= 8:
      raise ValueError(
        f"config detection.min_level={self.min_level}, detection.max_level={self.max_level}: "
        "need 2 <= min_level <= max_level <= 8"
      )
    for key in ("fpn_channels", "anchor_size", "pre_nms_top_k", "max_detections"):
      if not getattr(self, key) > 0:
        raise ValueError(f"config detection.{key}={getattr(self, key)} must be > 0")
    for key in ("head_convs", "focal_gamma", "smooth_l1_beta", "box_loss_weight"):
      if not getattr(self, key) >= 0:
        raise ValueError(f"config detection.{key}={getattr(self, key)} must be >= 0")
    for key in ("score_threshold", "focal_alpha", "nms_iou", "foreground_iou", "background_iou"):
      if not 0 <= getattr(self, key) <= 1:
        raise ValueError(f"config detection.{key}={getattr(self, key)} must be in [0, 1]")
    if not 0 < self.prior < 1:
      raise ValueError(f"config detection.prior={self.prior} must be in (0, 1)")
    if self.background_iou > self.foreground_iou:
      raise ValueError(
        f"config detection.background_iou={self.background_iou} is above "
        f"detection.foreground_iou={self.foreground_iou}"
      )
    if self.box_loss not in BOX_LOSSES:
      raise ValueError(f"config detection.box_loss={self.box_loss!r} is not one of {BOX_LOSSES}")
    if not self.anchor_scales or not self.aspect_ratios:
      raise ValueError("config detection.anchor_scales and detection.aspect_ratios need a value")
    if any(r <= 0 for r in self.aspect_ratios):
      raise ValueError(f"config detection.aspect_ratios={self.aspect_ratios} must be > 0")

  @property
  def levels(self) -> tuple[int, ...]:
    return tuple(range(self.min_level, self.max_level + 1))

  @property
  def anchors_per_cell(self) -> int:
    return len(self.anchor_scales) * len(self.aspect_ratios)

  @property
  def largest_stride(self) -> int:
    return 2**self.max_level

  def check_image_size(self, size: int) -> None:
    """An input side the largest stride does not divide is a one-line error naming the keys."""
    if size <= 0 or size % self.largest_stride:
      raise ValueError(
        f"config data.image_size={size} is not divisible by the largest stride "
        f"{self.largest_stride} (detection.max_level={self.max_level})"
      )
