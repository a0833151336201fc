"""`Batches`: the deterministic, resumable batch order of one dataset for one process.

The batch of training step s is a pure function of (seed, s): epoch e = s // steps_per_epoch
is a permutation seeded with (seed, e), and augmentation draws from (seed, s). A run resumed
at step s therefore sees exactly the batches the uninterrupted run saw. With several processes
each one takes its slice of the global batch.

For videos (a `VideoDataset`) an example is a clip: in training one per video, from a start
drawn from (seed, step, video); in evaluation `info.eval_clips` evenly spaced clips per video,
each batch also carrying `video`, the index of each clip's video.

For detection (a `DetectionDataset`) a batch also holds each image's boxes (`data.coco.batch`),
flipped in training by draws from (seed, step).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from daq_jax.data import augment, coco, image_folder, video
from daq_jax.data.coco import DetectionDataset
from daq_jax.data.image_folder import FileDataset
from daq_jax.data.info import DatasetInfo
from daq_jax.data.sources import Dataset
from daq_jax.data.video import VideoDataset


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
    on_disk = isinstance(dataset, FileDataset) or (
      isinstance(dataset, (VideoDataset, DetectionDataset)) and dataset.paths is not None
    )
    self._owns_decoder = decoder is None and on_disk
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
    if self._decoder is not None:
      seeds = [(self.seed, step, int(i)) for i in indices]
      paths = [self.dataset.paths[i] for i in indices]
      images = self._decoder(paths, size[0], kind == "imagenet", seeds)
      return (
        augment.pad_crop_flip(images, None, draws=self.crop_flip_draws(step))
        if kind == "cifar"
        else images
      )
    images = self.dataset.images[indices]
    if kind == "none":
      return augment.resize_batch(images, size)
    if kind == "cifar":
      resized = augment.resize_batch(images, size)
      return augment.pad_crop_flip(resized, None, draws=self.crop_flip_draws(step))
    # One generator per example, as the decoder's: the same crops whatever the process count.
    crops = [
      augment.random_resized_crop(
        Image.fromarray(augment.as_pil(im)),
        size[0],
        np.random.default_rng([self.seed, step, int(i)]),
      )
      for i, im in zip(indices, images, strict=True)
    ]
    return np.stack(crops).reshape(len(images), *self.info.image_shape)

  def augment_rng(self, step: int) -> np.random.Generator:
    """The generator the CIFAR augmentation of training batch `step` draws from."""
    return np.random.default_rng([self.seed, step, 1])

  def crop_flip_draws(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CIFAR augmentation's draws for the local part of training batch `step`: drawn for
    the whole global batch and sliced, so that an example is augmented alike whatever the
    number of processes."""
    draws = augment.crop_flip_draws(self.global_batch, self.augment_rng(step))
    return tuple(d[self.local] for d in draws)

  def train_indices(self, step: int) -> np.ndarray:
    """The dataset indices of the local part of training batch `step`."""
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"the training split has {len(self.dataset)} examples, fewer than one batch of "
        f"{self.global_batch}"
      )
    epoch, i = divmod(step, self.steps_per_epoch)
    indices = self._epoch_order(epoch)[i * self.global_batch : (i + 1) * self.global_batch]
    return indices[self.local]

  @property
  def is_video(self) -> bool:
    return isinstance(self.dataset, VideoDataset)

  def _clips(self, videos: np.ndarray, starts: np.ndarray, seeds) -> np.ndarray:
    """The clips of `videos` from frames `starts`, transformed (training where `seeds`)."""
    frames, height, width, channels = self.info.image_shape
    steps = np.arange(frames) * self.info.frame_stride
    data = self.dataset
    sources = [data.videos[v] if data.videos is not None else data.paths[v] for v in videos]
    args = (
      sources,
      [start + steps for start in starts],
      [channels] * len(videos),
      [(height, width)] * len(videos),
      [self.info.augment] * len(videos),
      seeds,
    )
    if self._decoder is not None:
      return np.stack(self._decoder.map(video.load_clip, *args))
    return np.stack(list(map(video.load_clip, *args)))

  @property
  def is_detection(self) -> bool:
    return isinstance(self.dataset, DetectionDataset)

  def _detection(self, indices: np.ndarray, flips) -> dict[str, np.ndarray]:
    size, max_boxes = self.info.image_shape[0], self.info.max_boxes
    return coco.batch(self.dataset, indices, size, flips, max_boxes, self._decoder)

  def train(self, step: int) -> dict[str, np.ndarray]:
    """The local part of training batch `step` (a pure function of the seed and the step)."""
    indices = self.train_indices(step)
    if self.is_detection:
      # Drawn for the global batch and sliced, as the CIFAR augmentation's.
      flips = np.random.default_rng([self.seed, step, 2]).random(self.global_batch) < 0.5
      flips = flips[self.local] if self.info.augment == "flip" else np.zeros(len(indices), bool)
      batch = self._detection(indices, flips)
      del batch["image_index"], batch["scale"]  # for the evaluation's detections only
      return batch
    if self.is_video:
      span = video.clip_span(self.info.image_shape[0], self.info.frame_stride)
      starts = [
        int(np.random.default_rng([self.seed, step, int(i)]).integers(0, n - span + 1))
        for i, n in zip(indices, self.dataset.frames[indices], strict=True)
      ]
      seeds = [(self.seed, step, int(i), 1) for i in indices]
      images = self._clips(indices, np.asarray(starts), seeds)
      return {"image": images, "label": self.dataset.labels[indices]}
    return {"image": self._images(indices, True, step), "label": self.dataset.labels[indices]}

  @property
  def eval_examples(self) -> int:
    """Examples of one evaluation: the clips of every video, or the images."""
    return len(self.dataset) * (self.info.eval_clips if self.is_video else 1)

  def evaluation(self) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order (for videos: each video's clips in turn); the last batch
    is padded and masked."""
    n = self.eval_examples
    for start in range(0, n, self.global_batch):
      indices = np.arange(start, start + self.global_batch)[self.local]
      mask = indices < n
      indices = np.where(mask, indices, 0)
      if self.is_detection:
        yield {**self._detection(indices, np.zeros(len(indices), bool)), "mask": mask}
        continue
      if not self.is_video:
        yield {
          "image": self._images(indices, False, 0),
          "label": self.dataset.labels[indices],
          "mask": mask,
        }
        continue
      clips = self.info.eval_clips
      videos, which = np.divmod(indices, clips)
      span = video.clip_span(self.info.image_shape[0], self.info.frame_stride)
      starts = [
        video.clip_starts(int(self.dataset.frames[v]), span, clips)[k]
        for v, k in zip(videos, which, strict=True)
      ]
      yield {
        "image": self._clips(videos, np.asarray(starts), [None] * len(videos)),
        "label": self.dataset.labels[videos],
        "mask": mask,
        "video": videos.astype(np.int32),
      }

  def close(self) -> None:
    if self._owns_decoder:
      self._decoder.close()
