"""`DataConfig`: where a run's data is and how it is read (the `data.*` keys of a config)."""

from __future__ import annotations

import dataclasses

IMAGE_DATASETS = ("digits", "cifar10", "cifar100", "image_folder")
VIDEO_DATASETS = ("moving_digits", "video_folder")
DETECTION_DATASETS = ("shapes", "coco", "voc")
DATASETS = IMAGE_DATASETS + VIDEO_DATASETS + DETECTION_DATASETS
AUGMENTS = ("auto", "none", "cifar", "imagenet", "video", "flip")
EVAL_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Where the data is and how it is read.

  Attributes:
    name: `digits` (embedded: scikit-learn's 8x8 digits), `cifar10`, `cifar100` (python-pickle
      directory or image folder) or `image_folder` (`<dir>/train/<class>/*.jpg`, ImageNet);
      for video, `moving_digits` (embedded: the digits drifting over 16 frames) or
      `video_folder` (`<dir>/train/<class>/<video>/` frames, `.npy`, or containers); for
      detection, `shapes` (embedded: generated circles, squares and triangles), `coco`
      (`<dir>/annotations/instances_train2017.json` with `<dir>/train2017/`, and val2017)
      or `voc` (a Pascal VOC year folder: `<dir>/Annotations/*.xml`, `JPEGImages/`,
      `ImageSets/Main/`; trainval and test where there is a test list, else train and val).
    dir: the data directory (unused for the embedded data).
    image_size: the side of the training images; 0 keeps the stored size (in-memory data).
      Detection: the square input every image is letterboxed to (its longer side).
    val_fraction: the share of every class of train held out as the validation split.
    eval_split: `val` (the held-out part of train) or `test` (the dataset's own test split).
    augment: `cifar` (pad-crop-flip), `imagenet` (random-resized-crop-flip), `video` (clips:
      short side to 128/112 of the crop, random crop, flip), `flip` (detection: a horizontal
      flip that moves the boxes), `none`, or `auto` (none for the embedded digits, cifar for
      small images or frames, imagenet for large images, video for large frames, flip for
      detection).
    cache_dir: where decoded small image folders are cached ("" disables the cache).
    workers: processes decoding images (0 decodes in the training process).
    prefetch: batches prepared ahead of the training step.
    clip_frames: frames of one clip (video datasets).
    frame_stride: take every frame_stride-th frame into a clip (video datasets).
    eval_clips: evenly spaced clips per video in evaluation; the video's prediction is the
      mean of its clips' logits (video datasets).
    max_boxes: ground-truth boxes per image a batch has room for (detection; an image with
      more is an error naming it).
  """

  name: str = "digits"
  dir: str = ""
  image_size: int = 0
  val_fraction: float = 0.0
  eval_split: str = "test"
  augment: str = "auto"
  cache_dir: str = "~/.cache/daq_jax/datasets"
  workers: int = 0
  prefetch: int = 2
  clip_frames: int = 8
  frame_stride: int = 1
  eval_clips: int = 3
  max_boxes: int = 100

  @property
  def is_video(self) -> bool:
    return self.name in VIDEO_DATASETS

  @property
  def is_detection(self) -> bool:
    return self.name in DETECTION_DATASETS

  def __post_init__(self):
    for key, value, allowed in (
      ("name", self.name, DATASETS),
      ("augment", self.augment, AUGMENTS),
      ("eval_split", self.eval_split, EVAL_SPLITS),
    ):
      if value not in allowed:
        raise ValueError(f"config data.{key}={value!r} is not one of {allowed}")
    for key in ("image_size", "workers", "prefetch"):
      if not getattr(self, key) >= 0:
        raise ValueError(f"config data.{key}={getattr(self, key)} must be >= 0")
    for key in ("clip_frames", "frame_stride", "eval_clips", "max_boxes"):
      if not getattr(self, key) >= 1:
        raise ValueError(f"config data.{key}={getattr(self, key)} must be >= 1")
    if self.augment == "video" and not self.is_video:
      raise ValueError(
        f"config data.augment='video' is for video datasets {VIDEO_DATASETS}, not "
        f"data.name={self.name!r}"
      )
    if self.augment in ("cifar", "imagenet", "video") and self.is_detection:
      raise ValueError(
        f"config data.augment={self.augment!r} would move pixels without their boxes: "
        f"detection (data.name={self.name!r}) takes flip, none or auto"
      )
    if self.augment == "flip" and not self.is_detection:
      raise ValueError(
        f"config data.augment='flip' is for detection datasets {DETECTION_DATASETS}, not "
        f"data.name={self.name!r}"
      )
    if not 0 <= self.val_fraction < 1:
      raise ValueError(f"config data.val_fraction={self.val_fraction} must be in [0, 1)")
    if self.eval_split == "val" and self.val_fraction <= 0:
      raise ValueError("config data.eval_split='val' needs data.val_fraction > 0")
