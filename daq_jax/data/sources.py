"""From a `DataConfig` to its datasets: which format a directory holds (CIFAR pickles or an
image folder, decoded into memory or per batch), the validation split carved from train, the
eval split, and the normalization statistics and augmentation the run records."""

from __future__ import annotations

import os

import numpy as np

from daq_jax.data import arrays, coco, image_folder, shapes, video, voc
from daq_jax.data.arrays import ArrayDataset
from daq_jax.data.coco import DetectionDataset
from daq_jax.data.config import DataConfig
from daq_jax.data.image_folder import FileDataset
from daq_jax.data.info import DatasetInfo
from daq_jax.data.video import VideoDataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's video models' normalisation (Kinetics-400), for videos read from disk.
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
SMALL_FRAME = 64  # frames up to this side are augmented as CIFAR's, larger ones as ImageNet's

Dataset = ArrayDataset | FileDataset | VideoDataset | DetectionDataset


def _data_dir(cfg: DataConfig) -> str:
  if not cfg.dir:
    raise ValueError(f"config data.dir is empty: data.name={cfg.name!r} needs a directory")
  path = os.path.expanduser(cfg.dir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config data.dir={cfg.dir!r}: no such directory")
  return path


def read_dir(
  path: str,
  split: str,
  cfg: DataConfig,
  class_names=None,
  channels: int = 3,
  classes_at_top: bool = False,
) -> Dataset:
  """The `split` of a CIFAR pickle directory or an image folder at `path`.

  Args:
    class_names: fixes the label of each class folder (evaluation of a trained model).
    channels: 3 (RGB) or 1 (grey).
    classes_at_top: a test split may also be the class folders right under `path`.
  """
  return _read_dir(path, split, cfg, class_names, channels, classes_at_top)[0]


def _split_folder(path: str, split: str, classes_at_top: bool) -> str:
  """The folder of `split` under `path` (or `path` itself where the class folders may be
  right under it); an error naming `path` when there is none."""
  folder = image_folder.split_dir(path, split) or (path if classes_at_top else None)
  if folder is None:
    raise FileNotFoundError(f"{path} has no {split} split (expected {path}/val or {path}/test)")
  return folder


def _splits(cfg: DataConfig, train, read_test):
  """(train, eval): the validation split carved from `train` when `val_fraction` > 0, and the
  eval split, that one or `read_test(train.class_names)` (read only when it is the one)."""
  val = None
  if cfg.val_fraction > 0:
    train_idx, val_idx = arrays.validation_split(train.labels, cfg.val_fraction)
    train, val = train.take(train_idx), train.take(val_idx)
  return train, val if cfg.eval_split == "val" else read_test(train.class_names)


def _read_dir(path, split, cfg, class_names=None, channels=3, classes_at_top=False):
  """`read_dir`, and how the data is read, in words."""
  if arrays.is_cifar_pickle_dir(path):
    dataset = arrays.load_cifar_pickle(path, split)
    return dataset, f"CIFAR python pickles in {path}, {len(dataset)} {split} images"
  folder = _split_folder(path, split, classes_at_top)
  files = image_folder.list_images(folder, class_names)
  small, how = image_folder.survey(files)
  how = f"image folder {folder}: {how}"
  if small:
    cache = os.path.expanduser(cfg.cache_dir) if cfg.cache_dir else None
    return image_folder.decode_all(files, cache, cfg.workers, channels, cfg.image_size), how
  return files, how


def channel_statistics(train: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The normalisation of `train`: per-channel mean and std of its pixels in [0, 1] (exact,
  rounded to 4 places), or ImageNet's for images read from files."""
  if isinstance(train, FileDataset):
    return IMAGENET_MEAN, IMAGENET_STD
  return _moments(train.images)


def _moments(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 `images` (any leading axes) in [0, 1], exact, rounded
  to 4 places."""
  # A chunk of images at a time (no float copy of the dataset).
  channels = images.shape[-1]
  total, squares, count = np.zeros(channels), np.zeros(channels), 0
  for start in range(0, len(images), 1024):
    chunk = images[start : start + 1024].reshape(-1, channels).astype(np.int64)
    total += chunk.sum(0)
    squares += (chunk * chunk).sum(0)
    count += len(chunk)
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean**2, 0))
  return tuple((mean / 255).round(4).tolist()), tuple((std / 255).round(4).tolist())


def load(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
  """(train, eval, info) for a config; eval is the validation or the test split."""
  if cfg.is_video:
    return load_videos(cfg)
  if cfg.is_detection:
    return load_detection(cfg)
  if cfg.name == "digits":
    train, source = arrays.load_digits("train"), "the embedded 8x8 digits"
  else:
    train, source = _read_dir(_data_dir(cfg), "train", cfg)
  if cfg.name in ("cifar10", "cifar100"):
    expected = 10 if cfg.name == "cifar10" else 100
    if len(train.class_names) != expected:
      raise ValueError(
        f"config data.dir={cfg.dir!r} holds {len(train.class_names)} classes, not {cfg.name}'s "
        f"{expected}"
      )
  train, evaluation = _splits(
    cfg,
    train,
    lambda names: (
      arrays.load_digits("test")
      if cfg.name == "digits"
      else read_dir(_data_dir(cfg), "test", cfg, names)
    ),
  )
  if isinstance(train, FileDataset):
    size = cfg.image_size or 224
    shape = (size, size, 3)
    kind = "imagenet" if cfg.augment == "auto" else cfg.augment
  else:
    size = cfg.image_size
    shape = (size, size, train.images.shape[-1]) if size else train.images.shape[1:]
    small_default = "none" if cfg.name == "digits" else "cifar"
    kind = small_default if cfg.augment == "auto" else cfg.augment
  mean, std = channel_statistics(train)
  info = DatasetInfo(
    train.class_names,
    tuple(shape),
    mean,
    std,
    kind,
    dir="" if cfg.name == "digits" else os.path.abspath(os.path.expanduser(cfg.dir)),
    train_examples=len(train),
    eval_examples=len(evaluation),
    source=source,
  )
  return train, evaluation, info


def read_video_dir(path: str, split: str, cfg: DataConfig, class_names=None, classes_at_top=False):
  """The `split` of a video folder at `path` (`video.list_videos`)."""
  folder = _split_folder(path, split, classes_at_top)
  return video.list_videos(folder, class_names, any_size=bool(cfg.image_size))


def load_videos(cfg: DataConfig) -> tuple[VideoDataset, VideoDataset, DatasetInfo]:
  """(train, eval, info) of a video dataset: the embedded moving digits (in memory) or a video
  folder (read per batch).

  Raises:
    ValueError: one line naming the key: a clip longer than the shortest video.
  """
  if cfg.name == "moving_digits":
    train, source = video.moving_digits("train"), "the embedded moving digits (16x32x32 clips)"
  else:
    root = _data_dir(cfg)
    train = read_video_dir(root, "train", cfg)
    source = f"video folder {root}: {len(train)} training videos, decoded from disk every batch"
  train, evaluation = _splits(
    cfg,
    train,
    lambda names: (
      video.moving_digits("test")
      if cfg.name == "moving_digits"
      else read_video_dir(root, "test", cfg, names)
    ),
  )
  span = video.clip_span(cfg.clip_frames, cfg.frame_stride)
  for split, data in (("train", train), (cfg.eval_split, evaluation)):
    shortest = int(np.argmin(data.frames))
    if data.frames[shortest] < span:
      raise ValueError(
        f"config data.clip_frames={cfg.clip_frames} with data.frame_stride={cfg.frame_stride} "
        f"spans {span} frames, more than the {int(data.frames[shortest])} of the shortest "
        f"{split} video ({data.name(shortest)})"
      )
  height, width, channels = train.frame_shape
  if cfg.image_size:
    height = width = cfg.image_size
  if train.videos is not None:
    mean, std = _moments(train.videos)
  else:
    mean, std = KINETICS_MEAN, KINETICS_STD
  if cfg.name == "moving_digits":
    default_kind = "none"
  else:
    default_kind = "cifar" if max(train.frame_shape[:2]) <= SMALL_FRAME else "video"
  info = DatasetInfo(
    train.class_names,
    (cfg.clip_frames, height, width, channels),
    mean,
    std,
    default_kind if cfg.augment == "auto" else cfg.augment,
    frame_stride=cfg.frame_stride,
    eval_clips=cfg.eval_clips,
    dir="" if cfg.name == "moving_digits" else os.path.abspath(os.path.expanduser(cfg.dir)),
    train_examples=len(train),
    eval_examples=len(evaluation),
    source=source,
  )
  return train, evaluation, info


def load_detection(cfg: DataConfig) -> tuple[DetectionDataset, DetectionDataset, DatasetInfo]:
  """(train, eval, info) of a detection dataset: the embedded shapes (in memory), a COCO
  directory (train2017, and val2017 as its test split) or a Pascal VOC year directory
  (`voc.splits`); the images of the last two are read per batch.

  Raises:
    ValueError: one line naming the key or the image: no input size for COCO or VOC, an
      image with more boxes than `data.max_boxes`.
  """
  if cfg.name == "shapes":
    train, source = shapes.shapes("train"), "the embedded shapes (96x96, 3 classes)"
    size = cfg.image_size or shapes.IMAGE_SIZE
  else:
    if not cfg.image_size:
      raise ValueError(
        f"config data.image_size=0: {cfg.name.upper()} images differ in size; set the square "
        "input side (e.g. 1024) every image is letterboxed to"
      )
    root = _data_dir(cfg)
    if cfg.name == "coco":
      train, test_split = coco.read_coco(root, "train"), "val"
      listed = coco.annotation_file(root, "train")
    else:
      train_split, test_split = voc.splits(root)
      train, listed = voc.read_voc(root, train_split), f"{root} ({train_split})"
    size = cfg.image_size
    source = f"{cfg.name.upper()} {listed}: {len(train)} images, read every batch"
  if cfg.val_fraction > 0:
    train_idx, val_idx = arrays.validation_split(np.zeros(len(train)), cfg.val_fraction)
    train, val = train.take(train_idx), train.take(val_idx)
  if cfg.eval_split == "val":
    evaluation = val
  elif cfg.name == "shapes":
    evaluation = shapes.shapes("test")
  else:
    read = coco.read_coco if cfg.name == "coco" else voc.read_voc
    evaluation = read(root, test_split)
    if evaluation.category_ids != train.category_ids:
      raise ValueError(
        f"{evaluation.source}: its categories {evaluation.category_ids} differ from the "
        f"training split's {train.category_ids}"
      )
  for data in (train, evaluation):
    most = int(np.argmax([len(b) for b in data.boxes])) if len(data) else 0
    if len(data) and len(data.boxes[most]) > cfg.max_boxes:
      raise ValueError(
        f"{data.source}: image {int(data.image_ids[most])} has {len(data.boxes[most])} boxes, "
        f"more than config data.max_boxes={cfg.max_boxes}: raise it"
      )
  mean, std = _moments(train.images) if train.images is not None else (IMAGENET_MEAN, IMAGENET_STD)
  info = DatasetInfo(
    train.class_names,
    (size, size, 3),
    mean,
    std,
    "flip" if cfg.augment == "auto" else cfg.augment,
    max_boxes=cfg.max_boxes,
    dir="" if cfg.name == "shapes" else os.path.abspath(os.path.expanduser(cfg.dir)),
    train_examples=len(train),
    eval_examples=len(evaluation),
    source=source,
  )
  return train, evaluation, info
