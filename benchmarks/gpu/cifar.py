"""GPU check, stage `cifar`, and the packing it needs (`prepare`).

CIFAR-10 ResNet-20 trained with `train.py`'s own pieces: its config, model, step, optimizer,
validation split (`data.validation_split`, 10 % stratified, as `data.val_fraction=0.1`), the
normalisation of the training images (`data.sources.channel_statistics`), its batch order and
its CIFAR augmentation, applied on the device to the images held there
(`data.device_augment.train_batch`, `Batches.train` bit for bit) so that the GPU is not fed
from the host. fp32 against the recommended method (`quant.config.RECOMMENDED`), daq and
daq_sr, alternating epochs until the deadline, validation top-1 after each. The JPEGs, packed
by `prepare` into one file, are decoded once.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from benchmarks.gpu.record import Recorder

PACKED = pathlib.Path(".gpu")
DATA_FILE = "cifar10_train.bin"
INDEX_FILE = "cifar10_train.json"
# Wheels the GPU image lacks (Python 3.12 there): ml_collections (configs), tensorboardX
# (daq_jax.training's metric writer, imported by the trainer).
WHEELS = ("ml_collections==1.1.0", "tensorboardX==2.6.2.2")
VAL_FRACTION = 0.1


def prepare(data_dir: pathlib.Path, to: pathlib.Path, wheels: bool) -> None:
  """Packs the JPEG folder into one file plus an index (46 MB, not 50,000 files), and
  downloads the wheels the GPU image lacks, into `to` (an ignored folder to carry)."""
  to.mkdir(parents=True, exist_ok=True)
  classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
  if len(classes) < 2:
    raise SystemExit(f"error: {data_dir} has {len(classes)} class folders, not an image folder")
  offsets, labels = [0], []
  with open(to / DATA_FILE, "wb") as out:
    for label, name in enumerate(classes):
      for path in sorted((data_dir / name).iterdir()):
        data = path.read_bytes()
        out.write(data)
        offsets.append(offsets[-1] + len(data))
        labels.append(label)
  index = {"classes": classes, "offsets": offsets, "labels": labels, "source": str(data_dir)}
  (to / INDEX_FILE).write_text(json.dumps(index))
  print(f"packed {len(labels)} images of {len(classes)} classes: {offsets[-1] / 1e6:.1f} MB")
  if wheels:
    subprocess.run(
      [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
      + ["--python-version", "3.12", "--implementation", "py", "-d", str(to / "wheels")]
      + list(WHEELS),
      check=True,
    )
    print("wheels:", sorted(p.name for p in (to / "wheels").iterdir()))


def load_packed(folder: pathlib.Path, smoke: bool):
  """The packed training images as a `data.ArrayDataset`. Smoke: 320 random images."""
  from daq_jax.data import ArrayDataset

  if smoke:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (320, 32, 32, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(320, dtype=np.int32) % 10, tuple(map(str, range(10))))
  from concurrent.futures import ThreadPoolExecutor

  from PIL import Image

  index = json.loads((folder / INDEX_FILE).read_text())
  blob = (folder / DATA_FILE).read_bytes()
  offsets = index["offsets"]

  def decode(i):
    with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]])) as im:
      return np.asarray(im.convert("RGB"), np.uint8)

  with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
    images = np.stack(list(pool.map(decode, range(len(offsets) - 1))))
  labels = np.asarray(index["labels"], np.int32)
  return ArrayDataset(images, labels, tuple(index["classes"]))


def run(rec: Recorder, smoke: bool, deadline_s: float, data: pathlib.Path, steps_cap: int = 0):
  import jax

  from daq_jax import data as data_lib
  from daq_jax.data import device_augment, sources
  from daq_jax.data.info import DatasetInfo
  from daq_jax.quant import config as quant_config
  from daq_jax.training import modeling, optim, parallel, steps
  from daq_jax.training.config import from_dict
  from daq_jax.training.evaluation import evaluate_batches

  start = time.perf_counter()
  dataset = load_packed(data, smoke)
  train_idx, val_idx = data_lib.validation_split(dataset.labels, VAL_FRACTION)
  train, val = dataset.take(train_idx), dataset.take(val_idx)
  mean, std = sources.channel_statistics(train)
  info = DatasetInfo(train.class_names, train.images.shape[1:], mean, std, "cifar")
  rec.set(
    "data",
    {
      "train": len(train),
      "val": len(val),
      "mean": mean,
      "std": std,
      "decode_s": time.perf_counter() - start,
    },
  )
  batch = 32 if smoke else 128
  mesh = parallel.make_mesh(1, batch)
  replicated = parallel.replicated(mesh)
  images, labels = jax.device_put(train.images), jax.device_put(train.labels)
  rec.set("model", "small_cnn" if smoke else "resnet20")
  # The recommended method, and the paper's DAQ against its stochastic-rounding variant.
  cfgs = {
    method: from_dict(
      {
        "model": {"name": rec.data["model"], "dtype": "float32"},
        "quant": {"method": method},
        "batch_size": batch,
        "optim": {"base_batch_size": 128, "weight_decay": 1e-4},
      }
    )
    for method in dict.fromkeys(("fp32", quant_config.RECOMMENDED, "daq", "daq_sr"))
  }
  seed = cfgs["fp32"].seed  # every method sees the same batches
  batches = data_lib.Batches(train, info, batch, seed=seed)
  val_batches = data_lib.Batches(val, info, 500 if not smoke else 64, seed=seed)
  runs = {}
  for method, cfg in cfgs.items():
    model = modeling.create_model(cfg, info.num_classes, info.image_shape)
    tx, _ = optim.build_optimizer(cfg, batches.steps_per_epoch, 164 * batches.steps_per_epoch)
    state = steps.init_train_state(model, tx, info, seed, replicated)
    train_fn, eval_fn = steps.compile_steps(model, tx, info, cfg, replicated)
    runs[method] = {"state": state, "train": train_fn, "eval": eval_fn, "epoch_s": None}
  # A rehearsal on a slow machine caps the epochs: the first steps of each epoch's order.
  spe = min(batches.steps_per_epoch, steps_cap or batches.steps_per_epoch)
  if steps_cap:
    rec.set("steps_per_epoch_cap", steps_cap)

  epoch = 0
  while True:
    epoch += 1
    expected = sum(r["epoch_s"] or 0.0 for r in runs.values())
    left = deadline_s - (time.perf_counter() - rec.start)
    if epoch > 1 and expected * 1.2 > left:
      rec.set(
        "stopped", f"before epoch {epoch}: {left:.0f} s left, an epoch pair takes {expected:.0f} s"
      )
      break
    if smoke and epoch > 1:
      break
    for method, run in runs.items():
      warm = min(5, spe - 1)  # steps before the timing of the rate (compilation)
      t0 = t_warm = time.perf_counter()
      loss = None
      for i in range(spe):
        if i == warm:
          jax.block_until_ready(run["state"])
          t_warm = time.perf_counter()
        step = (epoch - 1) * batches.steps_per_epoch + i
        batch_i = device_augment.train_batch(batches, images, labels, step)
        run["state"], metrics = run["train"](run["state"], batch_i)
        loss = metrics["loss"]
      jax.block_until_ready(loss)
      t1 = time.perf_counter()
      result = evaluate_batches(run["eval"], run["state"], val_batches, mesh)
      validate_s = time.perf_counter() - t1
      step_s = (t1 - t_warm) / (spe - warm)
      run["epoch_s"] = step_s * spe + validate_s  # the next epoch, compiled
      rec.row(
        method=method,
        epoch=epoch,
        val_top1=result["top1"],
        val_loss=result["loss"],
        train_loss=float(loss),
        epoch_s=t1 - t0,
        validate_s=validate_s,
        ms_per_step=1e3 * step_s,
        includes_compilation=epoch == 1,
      )
