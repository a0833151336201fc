"""`DatasetInfo`: what a trained model needs to know of its data, and which data it was (the
run's `dataset.json`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trained model needs to know of its data, and which data it was (`dataset.json`).

  Attributes:
    class_names, image_shape, mean, std, augment: what the model and its input pipeline use;
      image_shape is (T, H, W, C) for clips of T frames.
    frame_stride: the frames between two frames of a clip (videos).
    eval_clips: clips per video in evaluation; 0 for images.
    max_boxes: ground-truth boxes per image in a batch (detection); 0 for classification.
    dir: the data directory, absolute ("" for the embedded digits).
    train_examples, eval_examples: the sizes of the two splits.
    source: how the data is read, in words (logged at the start of a run).
  """

  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str
  frame_stride: int = 1
  eval_clips: int = 0
  max_boxes: int = 0
  dir: str = ""
  train_examples: int = 0
  eval_examples: int = 0
  source: str = ""

  @property
  def is_video(self) -> bool:
    return self.eval_clips > 0

  @property
  def is_detection(self) -> bool:
    return self.max_boxes > 0

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> DatasetInfo:
    """The info of a `dataset.json`, of this version or an older one (fewer fields)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})
