"""Input pipelines: readers against files written here (CIFAR pickles, PNG/JPEG folders),
the validation split, the cache, the step-determined batch order, augmentation shapes and
the errors a user meets (missing directory, unreadable image, wrong class count)."""

import dataclasses
import os
import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from daq_jax import data
from daq_jax.data import augment, device_augment, image_folder
from daq_jax.data.config import DataConfig


def write_cifar_pickles(root, n_per_batch=20):
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    # The official batches' structure: protocol 2, bytes keys, Python ints, a uint8 array.
    batch = {
      b"batch_label": f"{name} of 6".encode(),
      b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
      b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
      b"filenames": [f"img_{i:05d}.png".encode() for i in range(n_per_batch)],
    }
    with open(os.path.join(root, name), "wb") as f:
      pickle.dump(batch, f, protocol=2)
  meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
  with open(os.path.join(root, "batches.meta"), "wb") as f:
    pickle.dump(meta, f, protocol=2)
  return root


class _RunsOnLoad:
  """A pickle that calls a function when it is loaded (here: creates a marker file)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mknod, (self.marker,))


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
  root = write_cifar_pickles(str(tmp_path / "cifar-10-batches-py"))
  marker = tmp_path / "ran"
  with open(os.path.join(root, "data_batch_1"), "wb") as f:
    pickle.dump({b"data": _RunsOnLoad(str(marker)), b"labels": [0]}, f, protocol=2)
  with pytest.raises(ValueError) as info:
    data.load_cifar_pickle(root, "train")
  message = str(info.value)
  assert "data_batch_1" in message and "names the global posix.mknod, which is refused" in message
  assert "\n" not in message
  assert not marker.exists()


def test_numpy_object_arrays_in_a_cifar_batch_are_refused(tmp_path):
  root = write_cifar_pickles(str(tmp_path / "cifar-10-batches-py"))
  with open(os.path.join(root, "test_batch"), "wb") as f:
    pickle.dump({b"data": np.array([1, "x"], dtype=object), b"labels": [0]}, f, protocol=2)
  with pytest.raises(ValueError, match="test_batch: refuses an object dtype"):
    data.load_cifar_pickle(root, "test")


def write_image_folder(root, classes=("cat", "dog"), per_class=5, size=12, ext=".png"):
  rng = np.random.default_rng(1)
  for c in classes:
    os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, c, f"{i:03d}{ext}"))
  return root


def test_digits_ship_with_a_fixed_test_split():
  train, test = data.load_digits("train"), data.load_digits("test")
  assert (len(train), len(test)) == (1437, 360)
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  assert set(np.unique(test.labels)) == set(range(10))
  np.testing.assert_array_equal(data.load_digits("test").images, test.images)


def test_cifar_pickles_are_read_channels_last(tmp_path):
  root = write_cifar_pickles(str(tmp_path / "cifar-10-batches-py"))
  train = data.load_cifar_pickle(root, "train")
  test = data.load_cifar_pickle(root, "test")
  assert train.images.shape == (100, 32, 32, 3) and len(test) == 20
  with open(os.path.join(root, "test_batch"), "rb") as f:
    raw = pickle.load(f, encoding="bytes")[b"data"]
  # The pickle holds planes R, G, B of 1024 bytes: pixel (0, 1) of channel 2 is byte 2049.
  assert test.images[0, 0, 1, 2] == raw[0, 2 * 1024 + 1]
  assert train.class_names[3] == "c3"


def test_cifar100_pickles_use_the_fine_labels(tmp_path):
  root = tmp_path / "cifar-100-python"
  os.makedirs(root)
  rng = np.random.default_rng(0)
  for name, n in (("train", 30), ("test", 10)):
    batch = {
      b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
      b"fine_labels": list(rng.integers(0, 100, n)),
      b"coarse_labels": [0] * n,
    }
    with open(root / name, "wb") as f:
      pickle.dump(batch, f)
  with open(root / "meta", "wb") as f:
    pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f)
  train, _, info = data.load(DataConfig(name="cifar100", dir=str(root)))
  assert len(train) == 30 and info.num_classes == 100
  with open(root / "train", "rb") as f:
    assert list(train.labels) == pickle.load(f, encoding="bytes")[b"fine_labels"]


def test_validation_split_is_stratified_deterministic_and_disjoint():
  labels = np.repeat(np.arange(4), 10)
  train, val = data.validation_split(labels, 0.2)
  assert len(val) == 8 and np.all(np.bincount(labels[val]) == 2)
  assert not set(train) & set(val) and len(train) + len(val) == 40
  np.testing.assert_array_equal(val, data.validation_split(labels, 0.2)[1])
  with pytest.raises(ValueError, match=r"val_fraction"):
    data.validation_split(labels, 1.0)


def test_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path):
  root = write_image_folder(str(tmp_path / "train"))
  files = image_folder.list_images(root)
  assert files.class_names == ("cat", "dog") and len(files) == 10
  cache = str(tmp_path / "cache")
  first = image_folder.decode_all(files, cache)
  assert len(os.listdir(cache)) == 1
  again = image_folder.decode_all(files, cache)
  np.testing.assert_array_equal(first.images, again.images)
  assert first.images.shape == (10, 12, 14, 3)
  np.testing.assert_array_equal(first.labels, np.repeat([0, 1], 5))


def test_an_unreadable_image_names_the_file(tmp_path):
  root = write_image_folder(str(tmp_path / "train"))
  bad = os.path.join(root, "dog", "broken.jpg")
  with open(bad, "wb") as f:
    f.write(b"not a jpeg")
  files = image_folder.list_images(root)
  with pytest.raises(ValueError, match=r"cannot read image .*broken.jpg"):
    image_folder.decode_all(files, None)


def test_missing_data_directory_names_the_config_key(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"data.dir='.*nowhere'"):
    data.load(DataConfig(name="cifar10", dir=str(tmp_path / "nowhere")))
  with pytest.raises(ValueError, match=r"data.dir is empty"):
    data.load(DataConfig(name="image_folder"))
  with pytest.raises(ValueError, match=r"data.name='mnist'"):
    DataConfig(name="mnist")


def test_a_folder_with_the_wrong_class_count_is_not_cifar10(tmp_path):
  write_image_folder(str(tmp_path / "d" / "train"))
  with pytest.raises(ValueError, match=r"2 classes, not cifar10's 10"):
    data.load(DataConfig(name="cifar10", dir=str(tmp_path / "d"), cache_dir=""))


def test_image_folder_dataset_with_val_split_and_test_folder(tmp_path):
  write_image_folder(str(tmp_path / "d" / "train"), per_class=10)
  write_image_folder(str(tmp_path / "d" / "val"), per_class=3)
  cfg = DataConfig(name="image_folder", dir=str(tmp_path / "d"), cache_dir="")
  train, test, info = data.load(cfg)
  assert (len(train), len(test)) == (20, 6)
  assert info.augment == "cifar" and info.image_shape == (12, 14, 3)
  cfg = DataConfig(
    name="image_folder", dir=str(tmp_path / "d"), cache_dir="", val_fraction=0.2, eval_split="val"
  )
  train, val, _ = data.load(cfg)
  assert (len(train), len(val)) == (16, 4)


def test_the_batch_of_a_step_depends_only_on_seed_and_step():
  train = data.load_digits("train")
  _, _, info = data.load(DataConfig(name="digits"))
  a = data.Batches(train, info, 32, seed=3)
  b = data.Batches(train, info, 32, seed=3)
  for step in (0, 5, a.steps_per_epoch + 1):
    np.testing.assert_array_equal(a.train(step)["image"], b.train(step)["image"])
  # Within an epoch every example appears at most once; epochs reshuffle.
  seen = np.concatenate([a.train(s)["label"] for s in range(a.steps_per_epoch)])
  assert len(seen) == 32 * a.steps_per_epoch
  assert not np.array_equal(a.train(0)["label"], a.train(a.steps_per_epoch)["label"])
  c = data.Batches(train, info, 32, seed=4)
  assert not np.array_equal(a.train(0)["label"], c.train(0)["label"])


@pytest.mark.parametrize("kind", ["none", "cifar", "imagenet"])
def test_processes_take_their_slices_of_the_global_batch_augmented_alike(kind):
  """Two processes' halves of a batch are the one process's batch, images and augmentation
  included (each example drawn as in a single process, not per local slice)."""
  train = data.load_digits("train")
  _, _, info = data.load(DataConfig(name="digits"))
  info = dataclasses.replace(info, augment=kind)
  whole = data.Batches(train, info, 32).train(7)
  halves = [
    data.Batches(train, info, 32, process_index=p, process_count=2).train(7) for p in (0, 1)
  ]
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
  assert not np.array_equal(halves[0]["image"], halves[1]["image"])


def test_each_process_decodes_only_its_slice_of_an_image_folder(tmp_path):
  train, _, info = _large_images(tmp_path, augment="cifar")
  decoded = []

  def decoder(paths, size, crop, seeds):
    decoded.append(list(paths))
    return np.stack([image_folder.load_example(p, size, crop, s) for p, s in zip(paths, seeds)])

  whole = data.Batches(train, info, 6, seed=0).train(0)["image"]
  halves = [
    data.Batches(train, info, 6, seed=0, decoder=decoder, process_index=p, process_count=2)
    for p in (0, 1)
  ]
  got = [h.train(0)["image"] for h in halves]
  np.testing.assert_array_equal(np.concatenate(got), whole)
  order = [train.paths[i] for i in halves[0]._epoch_order(0)[:6]]
  assert decoded == [order[:3], order[3:]]  # three paths each, and each its own


def test_evaluation_covers_every_example_once_with_a_mask():
  test = data.load_digits("test")
  _, _, info = data.load(DataConfig(name="digits"))
  batches = list(data.Batches(test, info, 100).evaluation())
  assert len(batches) == 4 and all(len(b["label"]) == 100 for b in batches)
  assert sum(int(b["mask"].sum()) for b in batches) == 360


def test_augmentations_keep_shapes_and_are_seeded():
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  a = augment.pad_crop_flip(images, np.random.default_rng(1))
  b = augment.pad_crop_flip(images, np.random.default_rng(1))
  assert a.shape == images.shape and np.array_equal(a, b)
  image = Image.fromarray(np.zeros((50, 80, 3), np.uint8))
  assert augment.random_resized_crop(image, 24, np.random.default_rng(0)).shape == (24, 24, 3)
  assert augment.center_crop(image, 24).shape == (24, 24, 3)


def test_the_device_augmentation_is_the_host_one_bit_for_bit():
  images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  want = augment.pad_crop_flip(images, np.random.default_rng(5))
  draws = augment.crop_flip_draws(len(images), np.random.default_rng(5))
  assert len(set(draws[0])) > 1 and draws[2].any() and not draws[2].all()  # crops and flips
  got = device_augment.pad_crop_flip(jax.device_put(images), *draws)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_a_dataset_held_on_the_device_gives_train_pys_batches():
  train = data.load_digits("train")
  _, _, info = data.load(DataConfig(name="digits", augment="cifar"))
  batches = data.Batches(train, info, 32, seed=3)
  images, labels = jax.device_put(train.images), jax.device_put(train.labels)
  for step in (0, 7, batches.steps_per_epoch + 2):
    got = device_augment.train_batch(batches, images, labels, step)
    want = batches.train(step)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.asarray(got[key]), want[key])
  plain = data.Batches(train, data.load(DataConfig(name="digits"))[2], 32)
  with pytest.raises(ValueError, match=r"only the CIFAR augmentation .* augment='none'"):
    device_augment.train_batch(plain, images, labels, 0)


def test_large_images_are_read_lazily_with_imagenet_transforms(tmp_path):
  write_image_folder(str(tmp_path / "d" / "train"), per_class=4, size=80, ext=".jpg")
  cfg = DataConfig(
    name="image_folder", dir=str(tmp_path / "d"), image_size=32, val_fraction=0.25, eval_split="val"
  )
  train, val, info = data.load(cfg)
  assert isinstance(train, data.FileDataset) and info.augment == "imagenet"
  batches = data.Batches(train, info, 4, seed=0)
  batch = batches.train(0)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["image"], data.Batches(train, info, 4).train(0)["image"])
  assert next(data.Batches(val, info, 4).evaluation())["image"].shape == (4, 32, 32, 3)


def _large_images(tmp_path, **options):
  """An image folder of 80x80 JPEGs (decoded every batch), read at 32x32 with a val split."""
  write_image_folder(str(tmp_path / "d" / "train"), per_class=4, size=80, ext=".jpg")
  cfg = DataConfig(
    name="image_folder",
    dir=str(tmp_path / "d"),
    image_size=32,
    val_fraction=0.25,
    eval_split="val",
    **options,
  )
  return data.load(cfg)


@pytest.mark.parametrize("kind", ["none", "cifar", "imagenet"])
def test_images_decoded_every_batch_are_augmented_as_configured(tmp_path, kind):
  train, _, info = _large_images(tmp_path, augment=kind)
  assert isinstance(train, data.FileDataset) and info.augment == kind
  batches = data.Batches(train, info, 6, seed=0)
  indices = batches._epoch_order(0)[:6]
  centre = np.stack([image_folder.load_example(train.paths[i], 32, False, ()) for i in indices])
  got = batches.train(0)["image"]
  assert got.shape == centre.shape == (6, 32, 32, 3)
  if kind == "none":  # the centre crop, as in evaluation: no random crop, no flip
    np.testing.assert_array_equal(got, centre)
  elif kind == "cifar":  # pad-crop-flip of the centre crop, drawn as for in-memory images
    flipped = augment.pad_crop_flip(centre, np.random.default_rng([0, 0, 1]))
    np.testing.assert_array_equal(got, flipped)
  else:
    assert not np.array_equal(got, centre)


def test_worker_processes_decode_the_same_batches(tmp_path):
  train, _, info = _large_images(tmp_path)
  local = data.Batches(train, info, 4, seed=0).train(1)["image"]
  pooled = data.Batches(train, info, 4, seed=0, workers=2)
  try:
    np.testing.assert_array_equal(pooled.train(1)["image"], local)
  finally:
    pooled.close()


def test_prefetch_yields_in_order_and_reraises_errors():
  assert list(data.prefetch(iter(range(5)), 2, lambda x: x * 10)) == [0, 10, 20, 30, 40]

  def broken():
    yield 1
    raise ValueError("cannot read image x.jpg")

  with pytest.raises(ValueError, match=r"x.jpg"):
    list(data.prefetch(broken(), 2))


def test_an_image_of_another_size_is_named_and_image_size_resizes_them_all(tmp_path):
  root = write_image_folder(str(tmp_path / "d" / "train"))  # 14x12 images
  odd = os.path.join(root, "dog", "002.png")
  Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(odd)
  split = {"val_fraction": 0.2, "eval_split": "val", "cache_dir": ""}
  cfg = DataConfig(name="image_folder", dir=str(tmp_path / "d"), **split)
  with pytest.raises(ValueError, match=rf"image {odd} is 48x40, but 9 of the 10 images are 14x12"):
    data.load(cfg)
  train, _, info = data.load(DataConfig(**{**cfg.__dict__, "image_size": 10}))
  assert train.images.shape[1:] == (10, 10, 3) and info.image_shape == (10, 10, 3)


def test_small_or_large_is_decided_on_a_sample_and_said(tmp_path):
  root = write_image_folder(str(tmp_path / "d" / "train"), per_class=8)
  Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(os.path.join(root, "cat", "000.png"))
  files = image_folder.list_images(root)
  small, how = image_folder.survey(files)
  assert small and "median longer side of 16 sampled files is 14 px (14-100), <= 64" in how
  split = {"val_fraction": 0.25, "eval_split": "val", "cache_dir": ""}
  cfg = DataConfig(name="image_folder", dir=str(tmp_path / "d"), image_size=14, **split)
  train, _, info = data.load(cfg)
  assert not isinstance(train, data.FileDataset) and "decoded once into memory" in info.source


@pytest.mark.parametrize(
  ("classes", "message"),
  [(("cat",), r"has a single class folder \('cat'\)"), (("cat", "dog", "emu"), r"emu holds no")],
)
def test_an_empty_class_or_a_single_class_is_an_error_naming_it(tmp_path, classes, message):
  root = write_image_folder(str(tmp_path / "train"), classes=classes[:2])
  for name in classes[2:]:
    os.makedirs(os.path.join(root, name))
  with pytest.raises(ValueError, match=message):
    image_folder.list_images(root)
