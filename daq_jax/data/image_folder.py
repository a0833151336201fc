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


def class_folders(
  root: str, class_names=None, what: str = "image folder", layout: str = "<class>/*.jpg"
) -> tuple[list[str], tuple[str, ...]]:
  """(the class folders found under `root`, sorted; the class names, `class_names` or those
  folders). A training split (no `class_names`) needs two classes or more, and every folder
  found must be a known class; the errors name `root` as a `what`."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{what} {root} does not exist")
  found = sorted(d.name for d in os.scandir(root) if d.is_dir())
  if not found:
    raise ValueError(f"{what} {root} has no class subfolders (expected {root}/{layout})")
  if class_names is None and len(found) == 1:
    raise ValueError(
      f"{what} {root} has a single class folder ({found[0]!r}): a classifier needs two "
      "classes or more"
    )
  names = tuple(found) if class_names is None else tuple(class_names)
  unknown = sorted(set(found) - set(names))
  if unknown:
    raise ValueError(f"{what} {root}: classes {unknown} are not among the model's {names}")
  return found, names


def list_images(root: str, class_names: tuple[str, ...] | None = None) -> FileDataset:
  """All images under `root/<class>/`, sorted; `class_names` fixes the label of each folder.

  Without `class_names` (a training split) there must be two classes or more; every class
  folder must hold an image. The errors name the folder.
  """
  found, names = class_folders(root, class_names)
  index = {name: i for i, name in enumerate(names)}
  paths, labels = [], []
  for name in found:
    folder = os.path.join(root, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(
        f"image folder {root}: class folder {folder} holds no images "
        f"({', '.join(IMAGE_EXTENSIONS)}): remove it or add its images"
      )
    paths += [os.path.join(folder, f) for f in files]
    labels += [index[name]] * len(files)
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


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  resized = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return resized.reshape(size, size, image.shape[-1])


def _cache_key(files: FileDataset) -> str:
  digest = hashlib.sha1()
  for path, label in zip(files.paths, files.labels):
    stat = os.stat(path)
    digest.update(f"{os.path.abspath(path)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  digest.update("|".join(files.class_names).encode())
  return digest.hexdigest()[:20]


def _side(shape: tuple[int, ...]) -> str:
  return f"{shape[1]}x{shape[0]}"


def _check_sizes(files: FileDataset, decoded: list[np.ndarray]) -> None:
  """One size for all, or an error naming the first image of another size than most."""
  shapes = [im.shape for im in decoded]
  common = max(set(shapes), key=shapes.count)
  for path, shape in zip(files.paths, shapes):
    if shape != common:
      raise ValueError(
        f"image {path} is {_side(shape)}, but {shapes.count(common)} of the {len(shapes)} images "
        f"are {_side(common)}: set config data.image_size to resize them all to one size"
      )


def decode_all(
  files: FileDataset, cache_dir: str | None, workers: int = 0, channels: int = 3, size: int = 0
) -> ArrayDataset:
  """Decodes every (small) image once; reuses `cache_dir/<hash>.npz` later.

  Images of one size are kept as they are. Mixed sizes are resized to `size` x `size` when
  `size` is given (config data.image_size), else refused naming the odd image.

  The cache key covers every path, size and modification time, so a changed folder is decoded
  again. The cache file is written to a temporary name and renamed (atomic).
  """
  key = f"{_cache_key(files)}-{channels}" + (f"-{size}" if size else "")
  cache = os.path.join(cache_dir, f"images-{key}.npz") if cache_dir else None
  if cache and os.path.exists(cache):
    with np.load(cache) as data:
      return ArrayDataset(data["images"], data["labels"], files.class_names)
  decoded = _decode_each(files.paths, channels, workers)
  if len({im.shape for im in decoded}) > 1:
    if not size:
      _check_sizes(files, decoded)
    decoded = [_resize(im, size) for im in decoded]
  images = np.stack(decoded)
  if cache:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cache}.tmp-{os.getpid()}.npz"
    np.savez(tmp, images=images, labels=files.labels)
    os.replace(tmp, cache)
  return ArrayDataset(images, files.labels, files.class_names)


def _decode_each(paths, channels: int, workers: int) -> list[np.ndarray]:
  if workers > 1:
    with _pool(workers) as pool:
      return list(pool.map(_decode_small, paths, [channels] * len(paths), chunksize=256))
  return [_decode_small(p, channels) for p in paths]


def survey(files: FileDataset, samples: int = 32) -> tuple[bool, str]:
  """Whether the images are small enough to decode into memory, and why, in words.

  Looks at up to `samples` files spread evenly over the sorted list (so over the classes):
  small when the median of their longer sides is at most SMALL_IMAGE pixels.
  """
  picks = np.unique(np.linspace(0, len(files) - 1, min(samples, len(files))).round().astype(int))
  sides = [max(image_size(files.paths[i])) for i in picks]
  median = float(np.median(sides))
  small = median <= SMALL_IMAGE
  how = "decoded once into memory" if small else "decoded from disk every batch"
  return small, (
    f"{len(files)} images, {how}: the median longer side of {len(picks)} sampled files is "
    f"{median:g} px ({min(sides)}-{max(sides)}), {'<=' if small else '>'} {SMALL_IMAGE}"
  )


def _spawn():
  import multiprocessing

  # Not fork: the parent runs JAX's threads, and a forked child could deadlock on their locks.
  return multiprocessing.get_context("spawn")


def _ignore_stop_signals() -> None:
  """Worker initializer: Ctrl-C reaches the whole process group, and a scheduler may signal
  it too; the training process decides when to stop, and shuts its workers down itself."""
  import signal

  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _pool(workers: int) -> futures.ProcessPoolExecutor:
  return futures.ProcessPoolExecutor(workers, mp_context=_spawn(), initializer=_ignore_stop_signals)


def load_example(path: str, size: int, random_crop: bool, seed: tuple[int, ...]) -> np.ndarray:
  """One image for a batch: a random-resized crop and flip drawn from `seed` (ImageNet's
  training augmentation), or else the centre crop."""
  image = open_image(path)
  if random_crop:
    return augment.random_resized_crop(image, size, np.random.default_rng(seed))
  return augment.center_crop(image, size)


class Decoder:
  """Decodes batches of a `FileDataset` (or of videos on disk), in `workers` spawned processes
  (0: in this one)."""

  def __init__(self, workers: int):
    self._pool = _pool(workers) if workers > 0 else None

  def __call__(self, paths, size: int, random_crop: bool, seeds) -> np.ndarray:
    """The images at `paths` (`load_example`), stacked."""
    args = (paths, [size] * len(paths), [random_crop] * len(paths), seeds)
    if self._pool is None:
      return np.stack(list(map(load_example, *args)))
    return np.stack(list(self._pool.map(load_example, *args, chunksize=8)))

  def map(self, fn, *args) -> list:
    """`fn` over `args` (as `map`), in the workers: any picklable top-level function (the video
    clips use it)."""
    if self._pool is None:
      return list(map(fn, *args))
    return list(self._pool.map(fn, *args, chunksize=8))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
