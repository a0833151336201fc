"""Datasets held in memory as uint8 images: the embedded digits and CIFAR's pickle batches.

A dataset is an `ArrayDataset` (images NHWC uint8, labels int32) or, for ImageNet-size data, a
`FileDataset` (see image_folder.py). Neither module imports JAX, so worker processes that
decode images stay light.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Decoded images in memory.

  Attributes:
    images: (N, H, W, C) uint8.
    labels: (N,) int32.
    class_names: one name per class; its length is the number of classes.
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices: np.ndarray) -> ArrayDataset:
    return ArrayDataset(self.images[indices], self.labels[indices], self.class_names)


DIGITS_TEST_SIZE = 360  # a fixed 20% of sklearn's 1,797 digits


def load_digits(split: str) -> ArrayDataset:
  """scikit-learn's 8x8 handwritten digits (UCI optdigits test set), which ship with it.

  The test split is a fixed 360 images drawn by a permutation seeded with 0; `train` is the
  other 1,437. Pixels (0..16) are scaled to 0..255.
  """
  from sklearn.datasets import load_digits as sklearn_digits

  digits = sklearn_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  chosen = order[-DIGITS_TEST_SIZE:] if split == "test" else order[:-DIGITS_TEST_SIZE]
  chosen = np.sort(chosen)
  names = tuple(str(d) for d in range(10))
  return ArrayDataset(images[chosen], digits.target[chosen].astype(np.int32), names)


def is_cifar_pickle_dir(path: str) -> bool:
  """True for `cifar-10-batches-py` or `cifar-100-python` directories."""
  return os.path.exists(os.path.join(path, "data_batch_1")) or os.path.exists(
    os.path.join(path, "meta")
  )


def _plain_dtype(*args):
  """numpy.dtype, refusing object dtypes (whose arrays would unpickle arbitrary objects)."""
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise pickle.UnpicklingError(f"refuses an object dtype ({dtype})")
  return dtype


def _latin1_bytes(text, encoding="latin1"):
  """How Python 3 pickles bytes at protocol 2: `_codecs.encode(str, "latin1")`, and nothing
  else of `_codecs`."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError("refuses _codecs.encode other than of a str to latin1 bytes")
  return text.encode("latin1")


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], object]:
  """The globals a pickled numpy array needs, under numpy 1's and numpy 2's module names, and
  the one that bytes need in a protocol-2 pickle written by Python 3."""
  core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
  allowed = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_bytes,
  }
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(module, "_reconstruct")] = core.multiarray._reconstruct
    allowed[(module, "scalar")] = core.multiarray.scalar
  return allowed


class _CifarUnpickler(pickle.Unpickler):
  """An unpickler for what the official CIFAR batches hold: dicts, lists, bytes, str, numbers
  and numpy arrays of plain dtypes. Any other global (a function to call on load, a class)
  is refused before anything from the file runs."""

  def find_class(self, module: str, name: str):
    allowed = _numpy_globals()
    if (module, name) not in allowed:
      raise pickle.UnpicklingError(
        f"it names the global {module}.{name}, which is refused (nothing of the file was "
        "run): a CIFAR batch holds only dicts, lists, bytes, str, numbers and numpy arrays"
      )
    return allowed[(module, name)]


def _unpickle(path: str) -> dict:
  """One CIFAR batch, read with `_CifarUnpickler` (never plain `pickle.load`)."""
  try:
    with open(path, "rb") as f:
      batch = _CifarUnpickler(f, encoding="bytes").load()
  except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise ValueError(f"cannot read CIFAR batch {path}: {e}") from None
  if not isinstance(batch, dict):
    kind = type(batch).__name__
    raise ValueError(f"cannot read CIFAR batch {path}: it holds a {kind}, not a dict")
  return batch


def load_cifar_pickle(path: str, split: str) -> ArrayDataset:
  """CIFAR-10 (`data_batch_1..5`, `test_batch`) or CIFAR-100 (`train`, `test`) pickles."""
  cifar10 = os.path.exists(os.path.join(path, "data_batch_1"))
  if cifar10:
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    meta, label_key, names_key = "batches.meta", b"labels", b"label_names"
  else:
    files = ["test" if split == "test" else "train"]
    meta, label_key, names_key = "meta", b"fine_labels", b"fine_label_names"
  images, labels = [], []
  for name in files:
    file = os.path.join(path, name)
    if not os.path.exists(file):
      raise FileNotFoundError(f"CIFAR directory {path} has no {name!r} batch")
    batch = _unpickle(file)
    images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
    labels.append(np.asarray(batch[label_key], np.int32))
  names = tuple(n.decode() for n in _unpickle(os.path.join(path, meta))[names_key])
  images = np.concatenate(images).transpose(0, 2, 3, 1)
  return ArrayDataset(np.ascontiguousarray(images), np.concatenate(labels), names)


def validation_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) indices: the last `fraction` of every class, in the given order.

  Deterministic and independent of the seed, so every run of a config validates on the same
  images; stratified, so the classes keep their proportions.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f"data.val_fraction={fraction} must be in [0, 1)")
  train, val = [], []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    n_val = round(fraction * len(members))
    train.append(members[: len(members) - n_val])
    val.append(members[len(members) - n_val :])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
