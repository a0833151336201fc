"""From a `DataConfig` to batches: dataset loading, validation split, normalization statistics,
and the deterministic, resumable batch order.

The batch of training step s is a pure function of (seed, s): epoch e = s // steps_per_epoch
is a permutation seeded with (seed, e), and augmentation draws from (seed, s). A run resumed
at step s therefore sees exactly the batches the uninterrupted run saw. With several processes
each one takes its slice of the global batch.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from daq_jax.data import arrays, augment, image_folder
from daq_jax.data.arrays import ArrayDataset
from daq_jax.data.image_folder import FileDataset

DATASETS = ("digits", "cifar10", "cifar100", "image_folder")
AUGMENTS = ("auto", "none", "cifar", "imagenet")
EVAL_SPLITS = ("val", "test")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trained model needs to know of its data, and which data it was (`dataset.json`).

  Attributes:
    class_names, image_shape, mean, std, augment: what the model and its input pipeline use.
    dir: the data directory, absolute ("" for the embedded digits).
    train_examples, eval_examples: the sizes of the two splits.
    source: how the data is read, in words (logged at the start of a run).
  """

  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str
  dir: str = ""
  train_examples: int = 0
  eval_examples: int = 0
  source: str = ""

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


Dataset = ArrayDataset | FileDataset


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


def _read_dir(path, split, cfg, class_names=None, channels=3, classes_at_top=False):
  """`read_dir`, and how the data is read, in words."""
  if arrays.is_cifar_pickle_dir(path):
    dataset = arrays.load_cifar_pickle(path, split)
    return dataset, f"CIFAR python pickles in {path}, {len(dataset)} {split} images"
  folder = image_folder.split_dir(path, split) or (path if classes_at_top else None)
  if folder is None:
    raise FileNotFoundError(f"{path} has no {split} split (expected {path}/val or {path}/test)")
  files = image_folder.list_images(folder, class_names)
  small, how = image_folder.survey(files)
  how = f"image folder {folder}: {how}"
  if small:
    cache = os.path.expanduser(cfg.cache_dir) if cfg.cache_dir else None
    return image_folder.decode_all(files, cache, cfg.workers, channels, cfg.image_size), how
  return files, how


def _statistics(train: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
  if isinstance(train, FileDataset):
    return IMAGENET_MEAN, IMAGENET_STD
  # Exact per-channel moments, a chunk of images at a time (no float copy of the dataset).
  channels = train.images.shape[-1]
  total, squares, count = np.zeros(channels), np.zeros(channels), 0
  for start in range(0, len(train), 1024):
    chunk = train.images[start : start + 1024].reshape(-1, channels).astype(np.int64)
    total += chunk.sum(0)
    squares += (chunk * chunk).sum(0)
    count += len(chunk)
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean**2, 0))
  return tuple((mean / 255).round(4).tolist()), tuple((std / 255).round(4).tolist())


def load(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
  """(train, eval, info) for a config; eval is the validation or the test split."""
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
  if cfg.val_fraction > 0:
    train_idx, val_idx = arrays.validation_split(train.labels, cfg.val_fraction)
    train, val = train.take(train_idx), train.take(val_idx)
  if cfg.eval_split == "val":
    evaluation = val
  elif cfg.name == "digits":
    evaluation = arrays.load_digits("test")
  else:
    evaluation = read_dir(_data_dir(cfg), "test", cfg, train.class_names)
  if isinstance(train, FileDataset):
    size = cfg.image_size or 224
    shape = (size, size, 3)
    kind = "imagenet" if cfg.augment == "auto" else cfg.augment
  else:
    size = cfg.image_size
    shape = (size, size, train.images.shape[-1]) if size else train.images.shape[1:]
    small_default = "none" if cfg.name == "digits" else "cifar"
    kind = small_default if cfg.augment == "auto" else cfg.augment
  mean, std = _statistics(train)
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


class Batches:
  """Host batches of one dataset for one process: `train(step)` and `evaluation()`.

  Each batch is a dict of `image` (B, H, W, C) uint8, `label` (B,) int32 and, in evaluation,
  `mask` (B,) bool marking the examples that pad the last batch. Images on disk are decoded by
  `decoder` when given (one worker pool serving train and eval), else by `workers` processes.
  """

  def __init__(
    self,
    dataset: Dataset,
    info: DatasetInfo,
    global_batch: int,
    *,
    seed: int = 0,
    workers: int = 0,
    decoder: image_folder.Decoder | None = None,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if global_batch % process_count:
      raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    self.dataset, self.info, self.global_batch, self.seed = dataset, info, global_batch, seed
    self.local = slice(
      process_index * global_batch // process_count,
      (process_index + 1) * global_batch // process_count,
    )
    # A FileDataset decodes in `decoder` (shared, closed by its owner) or in a pool of its own.
    self._owns_decoder = decoder is None and isinstance(dataset, FileDataset)
    self._decoder = image_folder.Decoder(workers) if self._owns_decoder else decoder
    self._order: tuple[int, np.ndarray] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.dataset) // self.global_batch

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if self._order is None or self._order[0] != epoch:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
      self._order = (epoch, order)
    return self._order[1]

  def _images(self, indices: np.ndarray, train: bool, step: int) -> np.ndarray:
    """The batch's images, augmented in training as `info.augment` says: `none` (resized, or
    centre-cropped when decoded from files), `cifar` (then pad-crop-flip) or `imagenet`
    (random-resized-crop-flip)."""
    size = self.info.image_shape[:2]
    kind = self.info.augment if train else "none"
    rng = np.random.default_rng([self.seed, step, 1])
    if self._decoder is not None:
      seeds = [(self.seed, step, int(i)) for i in indices]
      paths = [self.dataset.paths[i] for i in indices]
      images = self._decoder(paths, size[0], kind == "imagenet", seeds)
      return augment.pad_crop_flip(images, rng) if kind == "cifar" else images
    images = self.dataset.images[indices]
    if kind == "none":
      return augment.resize_batch(images, size)
    if kind == "cifar":
      return augment.pad_crop_flip(augment.resize_batch(images, size), rng)
    crops = [
      augment.random_resized_crop(Image.fromarray(augment.as_pil(im)), size[0], rng)
      for im in images
    ]
    return np.stack(crops).reshape(len(images), *self.info.image_shape)

  def train(self, step: int) -> dict[str, np.ndarray]:
    """The local part of training batch `step` (a pure function of the seed and the step)."""
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"the training split has {len(self.dataset)} examples, fewer than one batch of "
        f"{self.global_batch}"
      )
    epoch, i = divmod(step, self.steps_per_epoch)
    indices = self._epoch_order(epoch)[i * self.global_batch : (i + 1) * self.global_batch]
    indices = indices[self.local]
    return {"image": self._images(indices, True, step), "label": self.dataset.labels[indices]}

  def evaluation(self) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order; the last batch is padded and masked."""
    n = len(self.dataset)
    for start in range(0, n, self.global_batch):
      indices = np.arange(start, start + self.global_batch)[self.local]
      mask = indices < n
      indices = np.where(mask, indices, 0)
      yield {
        "image": self._images(indices, False, 0),
        "label": self.dataset.labels[indices],
        "mask": mask,
      }

  def close(self) -> None:
    if self._owns_decoder:
      self._decoder.close()


def prefetch(batches: Iterator, size: int, transform: Callable = lambda b: b) -> Iterator:
  """Runs `transform(next(batches))` `size` batches ahead in a thread; errors surface here."""
  if size <= 0:
    yield from map(transform, batches)
    return
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for batch in batches:
        if stop.is_set():
          return
        buffer.put(transform(batch))
      buffer.put(done)
    except BaseException as e:
      buffer.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while not buffer.empty():
      buffer.get_nowait()
