"""Host-side augmentation in numpy and PIL, deterministic given a numpy Generator.

CIFAR: 4-pixel zero padding, a random 32x32 crop and a horizontal flip (He et al. 2016).
ImageNet: a random crop of 8-100% of the area with aspect ratio 3/4-4/3, resized, and a
flip (Szegedy et al. 2015); evaluation resizes the shorter side to size/0.875 and takes the
central crop.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

EVAL_CROP_FRACTION = 0.875


def crop_flip_draws(
  n: int, rng: np.random.Generator, pad: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tops, lefts, flips) of the CIFAR augmentation of n images: the crop's offsets in the
  padded image, and which images are flipped (`device_augment` applies the same draws)."""
  tops = rng.integers(0, 2 * pad + 1, n)
  lefts = rng.integers(0, 2 * pad + 1, n)
  flips = rng.random(n) < 0.5
  return tops, lefts, flips


def pad_crop_flip(
  images: np.ndarray, rng: np.random.Generator | None, pad: int = 4, draws=None
) -> np.ndarray:
  """CIFAR augmentation of a (N, H, W, C) uint8 batch, drawn from `rng` or given as `draws`
  (`crop_flip_draws`' three arrays)."""
  n, height, width, _ = images.shape
  padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  tops, lefts, flips = draws if draws is not None else crop_flip_draws(n, rng, pad)
  out = np.empty_like(images)
  for i in range(n):
    crop = padded[i, tops[i] : tops[i] + height, lefts[i] : lefts[i] + width]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


def random_resized_box(
  width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """The (left, top, right, bottom) box of an Inception-style crop of a width x height image:
  8-100 % of the area at an aspect ratio of 3/4-4/3 (10 tries, then the central crop)."""
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return (left, top, left + w, top + h)
  # The central crop at the nearest allowed aspect ratio.
  aspect = min(max(width / height, ratio[0]), ratio[1])
  w, h = (
    (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
  )
  w, h = min(w, width), min(h, height)
  left, top = (width - w) // 2, (height - h) // 2
  return (left, top, left + w, top + h)


def random_resized_crop(
  image: Image.Image, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
  """Inception-style crop and flip of one PIL image, to a (size, size, C) uint8 array."""
  box = random_resized_box(*image.size, rng, scale, ratio)
  out = np.asarray(image.resize((size, size), Image.BILINEAR, box=box))
  return out[:, ::-1] if rng.random() < 0.5 else out


def center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Evaluation transform: resize the shorter side to size/0.875, crop the centre."""
  width, height = image.size
  short = round(size / EVAL_CROP_FRACTION)
  scale = short / min(width, height)
  w, h = max(size, round(width * scale)), max(size, round(height * scale))
  image = image.resize((w, h), Image.BILINEAR)
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def as_pil(image: np.ndarray) -> np.ndarray:
  """An (H, W, C) array as PIL wants it: grey images without their channel axis."""
  return image[..., 0] if image.shape[-1] == 1 else image


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 batch to (height, width) (for in-memory data of another size)."""
  height, width = size
  if images.shape[1:3] == (height, width):
    return images
  out = [
    np.asarray(Image.fromarray(as_pil(im)).resize((width, height), Image.BILINEAR)) for im in images
  ]
  return np.stack(out).reshape(len(images), height, width, images.shape[-1])
