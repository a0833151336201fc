"""Training batches of a dataset held on the device: the CIFAR augmentation there, the twin of
`augment.pad_crop_flip` applying the same draws (`Batches.crop_flip_draws`), so that a loop
that keeps its images on the accelerator gets exactly the batches of `train.py`'s host
pipeline (`Batches.train`), without a host copy per step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from daq_jax.data.batches import Batches
from daq_jax.data.image_folder import FileDataset


@functools.partial(jax.jit, static_argnames=("pad",))
def pad_crop_flip(images: jax.Array, tops, lefts, flips, pad: int = 4) -> jax.Array:
  """4-pixel zero padding, the crop at (tops, lefts) of each image and a horizontal flip where
  `flips`, of a (N, H, W, C) batch; bit for bit `augment.pad_crop_flip` given its draws."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def crop(image, top, left):
    return jax.lax.dynamic_slice(image, (top, left, 0), (height, width, channels))

  out = jax.vmap(crop)(padded, jnp.asarray(tops), jnp.asarray(lefts))
  return jnp.where(jnp.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def train_batch(batches: Batches, images: jax.Array, labels: jax.Array, step: int) -> dict:
  """`batches.train(step)` taken from `images` and `labels`, the whole training set of
  `batches` held on the device, bit for bit.

  Raises:
    ValueError: when `batches` reads files or augments other than as CIFAR (`none` or
      `imagenet` transforms run on the host) at the images' own size.
  """
  if (
    isinstance(batches.dataset, FileDataset)
    or batches.info.augment != "cifar"
    or tuple(images.shape[1:]) != tuple(batches.info.image_shape)
  ):
    raise ValueError(
      "train_batch: on the device only the CIFAR augmentation of arrays at their own size "
      f"(got augment={batches.info.augment!r}, images {tuple(images.shape[1:])}, model input "
      f"{tuple(batches.info.image_shape)})"
    )
  indices = batches.train_indices(step)
  draws = batches.crop_flip_draws(step)
  taken = jnp.asarray(indices)
  return {"image": pad_crop_flip(images[taken], *draws), "label": labels[taken]}
