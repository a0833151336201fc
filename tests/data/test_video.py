"""Video data: the embedded moving digits (deterministic, the motion the label names), clip
sampling (random starts in training, evenly spaced clips in evaluation, one augmentation for
every frame of a clip), batches as a pure function of (seed, step) that split across
processes as images do, video folders on disk (frame folders, .npy, .mp4 through PyAV) read
frame by frame, and every bad input a one-line error naming the file, folder or key."""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from daq_jax import data as data_lib
from daq_jax.data import video
from daq_jax.data.config import DataConfig
from daq_jax.training.evaluation import video_top1


def test_moving_digits_are_deterministic_and_move_as_their_label_says():
  train, again = video.moving_digits("train"), video.moving_digits("train")
  test = video.moving_digits("test")
  assert train.videos.shape == (1437, 16, 32, 32, 1) and test.videos.shape == (360, 16, 32, 32, 1)
  np.testing.assert_array_equal(train.videos, again.videos)
  assert len(train.class_names) == 40 and set(np.unique(train.labels)) == set(range(40))
  for i in range(20):
    name, dy, dx = video.DIRECTIONS[train.labels[i] % 4]
    first, second = train.videos[i, 0, :, :, 0], train.videos[i, 1, :, :, 0]
    np.testing.assert_array_equal(np.roll(first, (dy, dx), axis=(0, 1)), second)
    assert train.class_names[train.labels[i]] == f"{train.labels[i] // 4}/{name}"


def test_eval_clips_are_evenly_spaced_from_the_first_frame_to_the_last():
  np.testing.assert_array_equal(video.clip_starts(16, 7, 3), [0, 4, 9])
  np.testing.assert_array_equal(video.clip_starts(16, 7, 1), [4])
  assert video.clip_span(4, 2) == 7


def _batches(dataset, info, batch=8, **kw):
  return data_lib.Batches(dataset, info, batch, seed=3, **kw)


def _moving(**overrides):
  cfg = DataConfig(name="moving_digits", clip_frames=4, frame_stride=2, eval_clips=3, **overrides)
  return data_lib.load(cfg)


def test_training_clips_are_a_pure_function_of_seed_and_step_and_split_across_processes():
  train, _, info = _moving()
  assert info.image_shape == (4, 32, 32, 1) and info.is_video
  whole = _batches(train, info).train(5)
  np.testing.assert_array_equal(whole["image"], _batches(train, info).train(5)["image"])
  halves = [_batches(train, info, process_index=i, process_count=2).train(5) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
  # Each clip is 4 frames 2 apart of its video, from a start in range.
  indices = _batches(train, info).train_indices(5)
  for clip, i in zip(whole["image"], indices, strict=True):
    starts = [s for s in range(16 - 6) if np.array_equal(train.videos[i][s : s + 7 : 2], clip)]
    assert starts, i


@pytest.mark.parametrize("kind", ["cifar", "imagenet", "video"])
def test_every_frame_of_a_clip_is_augmented_alike(kind):
  frame = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
  clip = np.stack([frame] * 5)
  for seed in range(6):
    out = video.transform_clip(clip, (32, 32), kind, np.random.default_rng(seed))
    assert out.shape == (5, 32, 32, 3)
    assert all(np.array_equal(out[0], f) for f in out[1:])
  evaluated = video.transform_clip(clip, (32, 32), kind, None)
  assert all(np.array_equal(evaluated[0], f) for f in evaluated[1:])


def test_evaluation_takes_each_videos_clips_and_pads_the_last_batch():
  _, test, info = _moving()
  batches = list(_batches(test, info, batch=64).evaluation())
  assert sum(int(b["mask"].sum()) for b in batches) == 360 * 3
  first = batches[0]
  np.testing.assert_array_equal(first["video"][:6], [0, 0, 0, 1, 1, 1])
  for k, start in enumerate(video.clip_starts(16, 7, 3)):
    np.testing.assert_array_equal(first["image"][k], test.videos[0][start : start + 7 : 2])
  np.testing.assert_array_equal(first["label"][:3], [test.labels[0]] * 3)


def test_video_top1_ranks_the_mean_of_each_videos_clip_logits():
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0], [9.0, 0.0]])
  clips = [
    {
      "logits": logits,
      "video": np.array([0, 0, 0, 1, 1]),
      "label": np.array([0, 0, 0, 1, 1]),
      "mask": np.array([True, True, True, True, False]),  # the last one pads
    }
  ]
  # Video 0: mean (0.67, 0.67) -> a tie, argmax 0: right; video 1: (0, 3): right.
  assert video_top1(clips, 2) == {"video_top1": 1.0, "videos": 2}
  clips[0]["label"] = np.array([1, 1, 1, 1, 1])
  assert video_top1(clips, 2)["video_top1"] == 0.5


# --- folders on disk -------------------------------------------------------------------------


def _frames(folder, count, size=(24, 20), seed=0):
  os.makedirs(folder)
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 255, (count, size[1], size[0], 3), dtype=np.uint8)
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"{t + 1:05d}.png"))
  return frames


def _folder(root, frames=12):
  """train/{a,b} with one frame folder and one .npy each; test/{a,b} with a frame folder."""
  made = {}
  for split in ("train", "test"):
    for c, name in enumerate(("a", "b")):
      made[f"{split}/{name}/v0"] = _frames(root / split / name / "v0", frames, seed=c)
      if split == "train":
        array = np.random.default_rng(10 + c).integers(0, 255, (frames, 20, 24, 3), np.uint8)
        np.save(root / split / name / "v1.npy", array)
        made[f"{split}/{name}/v1.npy"] = array
  return made


def test_a_video_folder_of_frame_folders_and_npy_files_is_read_frame_by_frame(tmp_path):
  made = _folder(tmp_path)
  cfg = DataConfig(name="video_folder", dir=str(tmp_path), clip_frames=3, frame_stride=2)
  train, test, info = data_lib.load(cfg)
  assert len(train) == 4 and len(test) == 2 and info.image_shape == (3, 20, 24, 3)
  assert train.class_names == ("a", "b") and info.augment == "cifar"
  for i, path in enumerate(train.paths):
    key = os.path.relpath(path, tmp_path)
    np.testing.assert_array_equal(video.read_clip(path, np.array([1, 3, 5])), made[key][1:6:2])
    assert train.frames[i] == 12
  (batch,) = list(_batches(test, info, batch=8).evaluation())  # 2 videos x 3 clips, padded
  assert batch["image"].shape == (8, 3, 20, 24, 3) and batch["mask"].sum() == 2 * 3
  np.testing.assert_array_equal(batch["image"][0], made["test/a/v0"][0:5:2])
  # In worker processes, the same clips.
  with_workers = _batches(train, info, batch=4, workers=2)
  try:
    np.testing.assert_array_equal(
      with_workers.train(1)["image"], _batches(train, info, batch=4).train(1)["image"]
    )
  finally:
    with_workers.close()


def test_an_mp4_is_decoded_through_pyav(tmp_path):
  av = pytest.importorskip("av")
  frames = np.zeros((10, 32, 32, 3), np.uint8)
  for t in range(10):
    frames[t, :, 3 * t : 3 * t + 4] = 255  # a bar moving right
  for split in ("train", "test"):
    for name in ("a", "b"):
      os.makedirs(tmp_path / split / name)
      with av.open(str(tmp_path / split / name / "v.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
          out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
  train, _, info = data_lib.load(
    DataConfig(name="video_folder", dir=str(tmp_path), clip_frames=4, frame_stride=2)
  )
  assert train.frames.tolist() == [10, 10] and info.image_shape == (4, 32, 32, 3)
  clip = video.read_clip(train.paths[0], np.array([0, 6]))
  # Lossy, but the bar is where it was drawn.
  assert clip[0, :, 0:4].mean() > 200 and clip[1, :, 18:22].mean() > 200
  assert clip[0, :, 18:22].mean() < 60


@pytest.mark.parametrize(
  ("damage", "message"),
  [
    ("empty_class", "class folder {root}/train/b holds no videos"),
    ("mixed_frames", "video folder {root}/train/a/v0 mixes frame sizes: 00001.png is 24x20"),
    ("bad_npy", "video {root}/train/a/v1.npy holds a float32 array of shape (12, 4)"),
    ("no_frames", "video folder {root}/train/a/v2 holds no frames"),
    (
      "short",
      "config data.clip_frames=5 with data.frame_stride=3 spans 13 frames, more than the 12",
    ),
  ],
)
def test_bad_videos_are_one_line_errors_naming_the_file(tmp_path, damage, message):
  _folder(tmp_path)
  root = tmp_path / "train"
  if damage == "empty_class":
    for entry in os.listdir(root / "b"):
      path = root / "b" / entry
      if path.is_dir():
        for f in os.listdir(path):
          os.remove(path / f)
        os.rmdir(path)
      else:
        os.remove(path)
  elif damage == "mixed_frames":
    Image.new("RGB", (30, 30)).save(root / "a" / "v0" / "00003.png")
  elif damage == "bad_npy":
    np.save(root / "a" / "v1.npy", np.zeros((12, 4), np.float32))
  elif damage == "no_frames":
    os.makedirs(root / "a" / "v2")
  cfg = DataConfig(name="video_folder", dir=str(tmp_path), clip_frames=3)
  if damage == "short":
    cfg = dataclasses.replace(cfg, clip_frames=5, frame_stride=3)
  with pytest.raises(ValueError) as e:
    data_lib.load(cfg)
  assert message.format(root=tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_eval_clips_zero_and_the_video_transform_on_images_are_errors_naming_the_key():
  with pytest.raises(ValueError, match=r"config data.eval_clips=0 must be >= 1"):
    DataConfig(name="moving_digits", eval_clips=0)
  with pytest.raises(ValueError, match=r"data.augment='video' is for video datasets"):
    DataConfig(name="cifar10", augment="video")


def test_the_video_transform_scales_the_short_side_then_crops():
  clip = np.zeros((2, 240, 320, 3), np.uint8)
  clip[:, 120:, :] = 255  # the lower half white
  out = video.transform_clip(clip, (112, 112), "video", None)
  # 240x320 -> 128x171, the central 112x112: rows 8..120 of 128, the lower half from row 64.
  assert out.shape == (2, 112, 112, 3)
  assert out[:, :50].max() == 0 and out[:, 62:].min() == 255


@pytest.mark.slow  # compiles a training step and spawns a decoding worker: 30-80 s
def test_train_py_trains_and_evaluates_from_a_video_folder_with_decoding_workers(tmp_path):
  from daq_jax.training import train_and_evaluate
  from daq_jax.training.config import TrainConfig, to_dict

  _folder(tmp_path / "data")
  cfg = to_dict(TrainConfig())
  cfg.update(num_steps=2, log_every_steps=1, batch_size=2)
  cfg["model"]["name"] = "c3d_small"
  cfg["data"].update(
    name="video_folder", dir=str(tmp_path / "data"), clip_frames=4, eval_clips=2, workers=1
  )
  summary = train_and_evaluate(cfg, str(tmp_path / "run"))
  assert summary["eval_examples"] == 4 and summary["eval_videos"] == 2
  assert 0 <= summary["eval_video_top1"] <= 1
