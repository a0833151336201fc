"""Image folders (`<root>/<class>/*.jpg|png`, ImageNet-style), decoded once and cached when the
images are small, read lazily in worker processes when they are not.

The layout: `root/train/<class>/...` (and optionally `root/val|test/<class>/...`), or the
class folders directly under `root`. Class indices follow the sorted folder names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent import futures

import numpy as np
from PIL import Image

from daq_jax.data import augment
from daq_jax.data.arrays import ArrayDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
SMALL_IMAGE = 64  # images up to this side are decoded once into memory (CIFAR, Tiny)


@dataclasses.dataclass(frozen=True)
class FileDataset:
  """Images on disk, decoded per batch.

  Attributes:
    paths: one file per example.
    labels: (N,) int32.
    class_names: one name per class.
  """

  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices: np.ndarray) -> FileDataset:
    return FileDataset(
      tuple(self.paths[i] for i in indices), self.labels[indices], self.class_names
    )


def split_dir(root: str, split: str) -> str | None:
  """The folder of `split` ("train" or "test") under root, or None if there is none."""
  names = ("train",) if split == "train" else ("val", "test", "validation")
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  return root if split == "train" else None


def list_images(root: str, class_names: tuple[str, ...] | None = None) -> FileDataset:
  """All images under `root/<class>/`, sorted; `class_names` fixes the label of each folder."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist")
  found = sorted(d.name for d in os.scandir(root) if d.is_dir())
  if not found:
    raise ValueError(f"image folder {root} has no class subfolders (expected {root}/<class>/*.jpg)")
  names = tuple(found) if class_names is None else tuple(class_names)
  unknown = sorted(set(found) - set(names))
  if unknown:
    raise ValueError(f"image folder {root}: classes {unknown} are not among the model's {names}")
  index = {name: i for i, name in enumerate(names)}
  paths, labels = [], []
  for name in found:
    folder = os.path.join(root, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    paths += [os.path.join(folder, f) for f in files]
    labels += [index[name]] * len(files)
  if not paths:
    raise ValueError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  return FileDataset(tuple(paths), np.asarray(labels, np.int32), names)


def open_image(path: str, channels: int = 3) -> Image.Image:
  """The image at `path` in RGB (or L for channels=1); a clear error if it cannot be read."""
  try:
    with Image.open(path) as image:
      return image.convert("RGB" if channels == 3 else "L")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def image_size(path: str) -> tuple[int, int]:
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _decode_small(path: str, channels: int = 3) -> np.ndarray:
  image = np.asarray(open_image(path, channels))
  return image[..., None] if channels == 1 else image


def _cache_key(files: FileDataset) -> str:
  digest = hashlib.sha1()
  for path, label in zip(files.paths, files.labels):
    stat = os.stat(path)
    digest.update(f"{os.path.abspath(path)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  digest.update("|".join(files.class_names).encode())
  return digest.hexdigest()[:20]


def decode_all(
  files: FileDataset, cache_dir: str | None, workers: int = 0, channels: int = 3
) -> ArrayDataset:
  """Decodes every (small, equally sized) image once; reuses `cache_dir/<hash>.npz` later.

  The cache key covers every path, size and modification time, so a changed folder is decoded
  again. The cache file is written to a temporary name and renamed (atomic).
  """
  key = f"{_cache_key(files)}-{channels}"
  cache = os.path.join(cache_dir, f"images-{key}.npz") if cache_dir else None
  if cache and os.path.exists(cache):
    with np.load(cache) as data:
      return ArrayDataset(data["images"], data["labels"], files.class_names)
  if workers > 1:
    with futures.ProcessPoolExecutor(workers, mp_context=_spawn()) as pool:
      decoded = list(pool.map(_decode_small, files.paths, [channels] * len(files), chunksize=256))
  else:
    decoded = [_decode_small(p, channels) for p in files.paths]
  shapes = {im.shape for im in decoded}
  if len(shapes) != 1:
    raise ValueError(f"images under {os.path.dirname(files.paths[0])} differ in size: {shapes}")
  images = np.stack(decoded)
  if cache:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cache}.tmp-{os.getpid()}.npz"
    np.savez(tmp, images=images, labels=files.labels)
    os.replace(tmp, cache)
  return ArrayDataset(images, files.labels, files.class_names)


def is_small(files: FileDataset) -> bool:
  return max(image_size(files.paths[0])) <= SMALL_IMAGE


def _spawn():
  import multiprocessing

  # Not fork: the parent runs JAX's threads, and a forked child could deadlock on their locks.
  return multiprocessing.get_context("spawn")


def load_example(path: str, size: int, train: bool, seed: tuple[int, ...]) -> np.ndarray:
  """One image for a batch: random-resized-crop and flip in training, centre crop in eval."""
  image = open_image(path)
  if train:
    return augment.random_resized_crop(image, size, np.random.default_rng(seed))
  return augment.center_crop(image, size)


class Decoder:
  """Decodes batches of a `FileDataset`, in `workers` spawned processes (0: in this one)."""

  def __init__(self, workers: int):
    self._pool = futures.ProcessPoolExecutor(workers, mp_context=_spawn()) if workers > 0 else None

  def __call__(self, paths, size: int, train: bool, seeds) -> np.ndarray:
    args = (paths, [size] * len(paths), [train] * len(paths), seeds)
    if self._pool is None:
      return np.stack(list(map(load_example, *args)))
    return np.stack(list(self._pool.map(load_example, *args, chunksize=8)))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
