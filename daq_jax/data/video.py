"""Videos for clip classification: the embedded moving digits, and video folders on disk.

A video folder holds `DIR/<class>/<video>/` folders of frames (JPEG or PNG, in the order of
their sorted names, as frame-extraction tools write them: `ffmpeg -i v.mp4 v/%05d.jpg`),
`DIR/<class>/<video>.npy` arrays (T, H, W, C) uint8, and, when PyAV is installed
(`pip install 'daq_jax[video]'`), container files (.mp4, .avi, .mkv, .webm, .mov). The
splits are laid out as for images: `DIR/train/<class>/...` and `DIR/val|test/<class>/...`.

A clip is `clip_frames` frames taken every `frame_stride` frames. Training takes one clip per
video from a random start; evaluation takes `eval_clips` clips per video, evenly spaced
(`clip_starts`). Every bad input is a one-line error naming the file or folder. Like the
other data modules this one does not import JAX, so decoding workers stay light.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from daq_jax.data import augment
from daq_jax.data.image_folder import IMAGE_EXTENSIONS, class_folders

CONTAINER_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


@dataclasses.dataclass(frozen=True)
class VideoDataset:
  """Videos held in memory (`videos`) or read from disk per batch (`paths`).

  Attributes:
    labels: (N,) int32.
    class_names: one name per class.
    frames: (N,) int: each video's frame count.
    frame_shape: (H, W, C) of every frame.
    videos: (N, T, H, W, C) uint8, when in memory.
    paths: one frame folder, .npy or container file per video, when on disk.
  """

  labels: np.ndarray
  class_names: tuple[str, ...]
  frames: np.ndarray
  frame_shape: tuple[int, int, int]
  videos: np.ndarray | None = None
  paths: tuple[str, ...] | None = None

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices: np.ndarray) -> VideoDataset:
    return dataclasses.replace(
      self,
      labels=self.labels[indices],
      frames=self.frames[indices],
      videos=None if self.videos is None else self.videos[indices],
      paths=None if self.paths is None else tuple(self.paths[i] for i in indices),
    )

  def name(self, i: int) -> str:
    return self.paths[i] if self.paths is not None else f"video {i}"


def clip_span(clip_frames: int, frame_stride: int) -> int:
  """How many consecutive frames one clip covers."""
  return (clip_frames - 1) * frame_stride + 1


def clip_starts(frames: int, span: int, clips: int) -> np.ndarray:
  """The first frames of `clips` evenly spaced clips of `span` frames in a video of `frames`:
  the first at 0, the last ending at the video's end (one clip: the centre one)."""
  if clips == 1:
    return np.asarray([(frames - span) // 2])
  return np.round(np.linspace(0, frames - span, clips)).astype(int)


def read_frames(dataset: VideoDataset, i: int, indices: np.ndarray) -> np.ndarray:
  """Frames `indices` of video `i`, (len(indices), H, W, C) uint8."""
  if dataset.videos is not None:
    return dataset.videos[i][indices]
  return read_clip(dataset.paths[i], indices, dataset.frame_shape[-1])


# --- moving digits ---------------------------------------------------------------------------

MOVING_DIGITS_FRAMES = 16
MOVING_DIGITS_SIZE = 32
# Directions of motion, two pixels a frame (once around the canvas in 16 frames): the class is
# (digit, direction).
DIRECTIONS = (("right", 0, 2), ("left", 0, -2), ("down", 2, 0), ("up", -2, 0))


def moving_digits(split: str) -> VideoDataset:
  """scikit-learn's 8x8 digits, each upscaled to 16x16 and drifting across a 32x32 canvas
  over 16 frames, two pixels a frame in one of four directions, wrapping around the edges.

  The class is the digit and its direction (40 classes, "3/left"), so that time matters: a
  single frame shows the digit, and, with the start drawn uniformly on the torus, nothing of
  the direction: a classifier of single frames reaches at most 25 % top-1 (the digit right,
  the direction guessed). The split is the digits' own (360 test, 1,437 train,
  `arrays.load_digits`); directions and starts are drawn from a fixed seed per split.
  """
  from daq_jax.data.arrays import load_digits

  digits = load_digits(split)
  n, size = len(digits), MOVING_DIGITS_SIZE
  videos = np.zeros((n, MOVING_DIGITS_FRAMES, size, size, 1), np.uint8)
  labels = np.zeros(n, np.int32)
  rng = np.random.default_rng([7, 0 if split == "train" else 1])
  directions = rng.integers(0, len(DIRECTIONS), n)
  starts = rng.integers(0, size, (n, 2))
  for i in range(n):
    sprite = np.kron(digits.images[i, :, :, 0], np.ones((2, 2), np.uint8))  # 16x16
    canvas = np.zeros((size, size), np.uint8)
    canvas[:16, :16] = sprite
    _, dy, dx = DIRECTIONS[directions[i]]
    for t in range(MOVING_DIGITS_FRAMES):
      shift = (starts[i, 0] + dy * t, starts[i, 1] + dx * t)
      videos[i, t, :, :, 0] = np.roll(canvas, shift, axis=(0, 1))
    labels[i] = digits.labels[i] * len(DIRECTIONS) + directions[i]
  names = tuple(f"{d}/{name}" for d in range(10) for name, _, _ in DIRECTIONS)
  frames = np.full(n, MOVING_DIGITS_FRAMES)
  return VideoDataset(labels, names, frames, (size, size, 1), videos=videos)


# --- video folders ---------------------------------------------------------------------------


def _frame_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _container_frames(path: str, last: int | None = None) -> list[np.ndarray]:
  """The frames of a container, RGB, up to frame `last` (all when None)."""
  try:
    import av
  except ImportError:
    raise ValueError(
      f"video {path}: reading {os.path.splitext(path)[1]} files needs PyAV "
      "(pip install 'daq_jax[video]'), or extract the frames (ffmpeg -i VIDEO DIR/%05d.jpg)"
    ) from None
  try:
    frames = []
    with av.open(path) as container:
      for frame in container.decode(video=0):
        frames.append(frame.to_ndarray(format="rgb24"))
        if last is not None and len(frames) > last:
          break
    return frames
  except (av.FFmpegError, OSError, ValueError, IndexError) as e:
    raise ValueError(f"cannot decode video {path}: {e}") from None


def probe(path: str, channels: int = 3) -> tuple[int, tuple[int, int, int]]:
  """(frame count, (H, W, C)) of one video on disk; an error naming the file or folder when it
  cannot be read, is empty, or (a frame folder) mixes frame sizes."""
  if os.path.isdir(path):
    files = _frame_files(path)
    if not files:
      raise ValueError(f"video folder {path} holds no frames ({', '.join(IMAGE_EXTENSIONS)})")
    sizes = {}
    for f in files:
      try:
        with Image.open(os.path.join(path, f)) as image:
          sizes.setdefault(image.size, f)
      except (OSError, ValueError) as e:
        raise ValueError(f"cannot read frame {os.path.join(path, f)}: {e}") from None
    if len(sizes) > 1:
      (a, fa), (b, fb) = list(sizes.items())[:2]
      raise ValueError(
        f"video folder {path} mixes frame sizes: {fa} is {a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}"
      )
    (width, height), _ = next(iter(sizes.items()))
    return len(files), (height, width, channels)
  if path.endswith(".npy"):
    array = _open_npy(path)
    return array.shape[0], (*array.shape[1:3], channels)
  frames = _container_frames(path)
  if not frames:
    raise ValueError(f"video {path} has no frames")
  return len(frames), (*frames[0].shape[:2], channels)


def _open_npy(path: str) -> np.ndarray:
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read video {path}: {e}") from None
  if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] == 0:
    raise ValueError(
      f"video {path} holds a {array.dtype} array of shape {array.shape}, not (T, H, W, C) "
      "uint8 with T > 0"
    )
  return array


def _as_channels(frame: np.ndarray, channels: int) -> np.ndarray:
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.shape[-1] == channels:
    return frame
  mode = "L" if channels == 1 else "RGB"
  pil = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
  out = np.asarray(pil.convert(mode))
  return out[..., None] if channels == 1 else out


def read_clip(path: str, indices: np.ndarray, channels: int = 3) -> np.ndarray:
  """Frames `indices` of the video at `path`, (len(indices), H, W, C) uint8: only those frames
  are decoded from a frame folder or an .npy file (memory-mapped); a container is decoded up
  to its last wanted frame."""
  if os.path.isdir(path):
    files = _frame_files(path)
    frames = []
    for i in indices:
      name = os.path.join(path, files[i])
      try:
        with Image.open(name) as image:
          frames.append(np.asarray(image.convert("L" if channels == 1 else "RGB")))
      except (OSError, ValueError) as e:
        raise ValueError(f"cannot read frame {name}: {e}") from None
    if len({f.shape for f in frames}) > 1:
      raise ValueError(f"video folder {path} mixes frame sizes")
    clip = np.stack(frames)
    return clip[..., None] if channels == 1 else clip
  if path.endswith(".npy"):
    array = _open_npy(path)
    return np.stack([_as_channels(np.asarray(array[i]), channels) for i in indices])
  frames = _container_frames(path, int(max(indices)))
  return np.stack([_as_channels(frames[i], channels) for i in indices])


def _is_video(path: str) -> bool:
  lower = path.lower()
  return os.path.isdir(path) or lower.endswith(".npy") or lower.endswith(CONTAINER_EXTENSIONS)


def list_videos(
  root: str, class_names: tuple[str, ...] | None = None, channels: int = 3, any_size=False
) -> VideoDataset:
  """Every video under `root/<class>/` (frame folders, .npy files, containers), probed for
  its frame count and frame size; `class_names` fixes the label of each class folder.
  `any_size`: videos of different frame sizes are allowed (they are resized per batch).

  Raises:
    ValueError: one line naming the folder or file: no class folders, a single class for
      training, a class folder without videos, an unreadable video, frames of mixed sizes,
      or videos of different frame sizes.
  """
  found, names = class_folders(root, class_names, "video folder", "<class>/<video>")
  index = {name: i for i, name in enumerate(names)}
  paths, labels, counts, shapes = [], [], [], {}
  for name in found:
    folder = os.path.join(root, name)
    videos = sorted(
      os.path.join(folder, entry)
      for entry in os.listdir(folder)
      if _is_video(os.path.join(folder, entry))
    )
    if not videos:
      raise ValueError(
        f"video folder {root}: class folder {folder} holds no videos (frame folders, .npy, "
        f"{', '.join(CONTAINER_EXTENSIONS)}): remove it or add its videos"
      )
    for path in videos:
      count, shape = probe(path, channels)
      shapes.setdefault(shape, path)
      paths.append(path)
      labels.append(index[name])
      counts.append(count)
  if len(shapes) > 1 and not any_size:
    (a, pa), (b, pb) = list(shapes.items())[:2]
    raise ValueError(
      f"video folder {root} mixes frame sizes: {pa} has {a[1]}x{a[0]} frames, {pb} {b[1]}x{b[0]}"
      ": set config data.image_size to resize them all"
    )
  return VideoDataset(
    np.asarray(labels, np.int32), names, np.asarray(counts), next(iter(shapes)), paths=tuple(paths)
  )


# --- clips for a batch -----------------------------------------------------------------------


def _crop_resized(clip: np.ndarray, size: tuple[int, int], box) -> np.ndarray:
  """The `box` (left, top, right, bottom) of every frame, resized to `size` (H, W)."""
  height, width = size
  out = []
  for frame in clip:
    pil = Image.fromarray(augment.as_pil(frame))
    out.append(np.asarray(pil.resize((width, height), Image.BILINEAR, box=box)))
  return np.stack(out).reshape(len(clip), height, width, clip.shape[-1])


VIDEO_SHORT_SIDE = 128 / 112  # the short side before the crop, per crop side (Tran et al.)


def _scale_crop(clip: np.ndarray, size: tuple[int, int], rng) -> np.ndarray:
  """The video models' transform (Tran et al. 2018): frames resized to a short side of
  128/112 of the crop (128x171 for 4:3 frames and a 112 crop), then a random crop and flip in
  training, the central crop in evaluation."""
  height, width = clip.shape[1:3]
  short = round(size[0] * VIDEO_SHORT_SIDE)
  scale = short / min(height, width)
  resized = augment.resize_batch(
    clip, (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
  )
  top_room, left_room = resized.shape[1] - size[0], resized.shape[2] - size[1]
  if rng is None:
    top, left = top_room // 2, left_room // 2
  else:
    top, left = int(rng.integers(0, top_room + 1)), int(rng.integers(0, left_room + 1))
  out = resized[:, top : top + size[0], left : left + size[1]]
  return out[:, :, ::-1] if rng is not None and rng.random() < 0.5 else out


def transform_clip(
  clip: np.ndarray, size: tuple[int, int], kind: str, rng: np.random.Generator | None
) -> np.ndarray:
  """A clip (T, H, W, C) for the model, every frame transformed alike: resized to `size`
  (`none`), then in training (`rng` given) a 4-pixel pad, crop and flip (`cifar`), a random
  resized crop and flip (`imagenet`), or the video models' scale and random crop and flip
  (`video`, `_scale_crop`); in evaluation `imagenet` and `video` take the central crop."""
  if kind == "video":
    return _scale_crop(clip, size, rng)
  if kind == "imagenet":
    if rng is None:
      frames = [augment.center_crop(Image.fromarray(augment.as_pil(f)), size[0]) for f in clip]
      return np.stack(frames).reshape(len(clip), *size, clip.shape[-1])
    box = augment.random_resized_box(clip.shape[2], clip.shape[1], rng)
    out = _crop_resized(clip, size, box)
    return out[:, :, ::-1] if rng.random() < 0.5 else out
  clip = augment.resize_batch(clip, size)
  if kind == "cifar" and rng is not None:
    pad = 4
    top, left = rng.integers(0, 2 * pad + 1, 2)
    flip = rng.random() < 0.5
    frames = len(clip)  # the images' augmentation, with one draw for every frame
    draws = (np.full(frames, top), np.full(frames, left), np.full(frames, flip))
    return augment.pad_crop_flip(clip, None, pad, draws=draws)
  return clip


def load_clip(
  source, indices: np.ndarray, channels: int, size: tuple[int, int], kind: str, seed
) -> np.ndarray:
  """One clip for a batch, from a video in memory ((T, H, W, C) array) or on disk (its path):
  frames `indices`, transformed by `transform_clip` (training when `seed` is given)."""
  clip = source[indices] if isinstance(source, np.ndarray) else read_clip(source, indices, channels)
  rng = np.random.default_rng(seed) if seed is not None else None
  return transform_clip(clip, size, kind, rng)
