"""`DataConfig`: where a run's data is and how it is read (the `data.*` keys of a config)."""

from __future__ import annotations

import dataclasses

DATASETS = ("digits", "cifar10", "cifar100", "image_folder")
AUGMENTS = ("auto", "none", "cifar", "imagenet")
EVAL_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Where the data is and how it is read.

  Attributes:
    name: `digits` (embedded: scikit-learn's 8x8 digits), `cifar10`, `cifar100` (python-pickle
      directory or image folder) or `image_folder` (`<dir>/train/<class>/*.jpg`, ImageNet).
    dir: the data directory (unused for digits).
    image_size: the side of the training images; 0 keeps the stored size (in-memory data).
    val_fraction: the share of every class of train held out as the validation split.
    eval_split: `val` (the held-out part of train) or `test` (the dataset's own test split).
    augment: `cifar` (pad-crop-flip), `imagenet` (random-resized-crop-flip), `none`, or `auto`
      (none for digits, cifar for small images, imagenet for large ones).
    cache_dir: where decoded small image folders are cached ("" disables the cache).
    workers: processes decoding images (0 decodes in the training process).
    prefetch: batches prepared ahead of the training step.
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
    if not 0 <= self.val_fraction < 1:
      raise ValueError(f"config data.val_fraction={self.val_fraction} must be in [0, 1)")
    if self.eval_split == "val" and self.val_fraction <= 0:
      raise ValueError("config data.eval_split='val' needs data.val_fraction > 0")
