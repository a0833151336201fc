"""Evaluation: the loop over an eval split (`evaluate_batches`, which training runs too), and
a trained workdir's evaluation on its own eval split or on any dataset the loaders read (the
library side of `python -m daq_jax.evaluate`)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from daq_jax import data as data_lib
from daq_jax.data import coco, sources, voc
from daq_jax.data.info import DatasetInfo
from daq_jax.detection import coco_metric
from daq_jax.training import checkpoint, files, modeling, optim, parallel, steps, stops
from daq_jax.training.config import TrainConfig, from_dict


def evaluate_batches(
  eval_fn, state, batches: data_lib.Batches, mesh, stop: stops.AgreedStop | None = None
) -> dict[str, float] | None:
  """Loss, top-1 and top-5 over every example of `batches.dataset`; None if `stop` was
  requested on the way (a signal asked the run to end). For videos the examples are clips,
  and `video_top1` is the top-1 of each video's mean clip logits over its `eval_clips` clips.
  For detection: COCO's box APs (`coco_metric.STATS`, pycocotools) and the loss."""
  stop = stop or stops.AgreedStop(stops.StopSignals())  # none: never requested
  sums, clips, found = None, [], []
  for batch in data_lib.prefetch(batches.evaluation(), 2, lambda b: parallel.put_batch(b, mesh)):
    if stop.requested:
      return None
    out = stop.observe(eval_fn(state, stop.attach(batch)))
    if "clips" in out:
      clips.append(out.pop("clips"))
    if "detections" in out:
      found.append(jax.device_get(out.pop("detections")))
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  sums = jax.device_get(sums)
  count = float(sums["count"])
  if batches.info.is_detection:
    records = coco_metric.results(batches.dataset, found)
    return {
      **coco_metric.coco_map(batches.dataset, records),
      "loss": float(sums["loss"]) / count,
      "detections": len(records),
      "examples": int(count),
    }
  result = {"loss": float(sums["loss"]) / count, "top1": float(sums["top1"]) / count}
  if batches.info.num_classes > 10:
    result["top5"] = float(sums["top5"]) / count
  result["examples"] = int(count)
  if clips:
    result.update(video_top1(jax.device_get(clips), len(batches.dataset)))
  return result


def describe_result(result: dict) -> str:
  """An evaluation result in words: "top-1 0.9861 on 360 examples, loss 0.0503", or for
  videos "clip top-1 0.52, video top-1 0.61 on 1080 clips of 360 videos, loss 1.2"."""
  if "mAP" in result:
    return (
      f"mAP {result['mAP']:.4f}, mAP@.5 {result['mAP50']:.4f} (COCO, pycocotools) on "
      f"{result['examples']} images, loss {result['loss']:.4f}"
    )
  top5 = f", top-5 {result['top5']:.4f}" if "top5" in result else ""
  if "video_top1" in result:
    return (
      f"clip top-1 {result['top1']:.4f}{top5}, video top-1 {result['video_top1']:.4f} on "
      f"{result['examples']} clips of {result['videos']} videos, loss {result['loss']:.4f}"
    )
  return (
    f"top-1 {result['top1']:.4f}{top5} on {result['examples']} examples, loss {result['loss']:.4f}"
  )


def video_top1(clips: list[dict], videos: int) -> dict[str, float]:
  """`video_top1`, the share of videos whose mean clip logits rank their label first, and
  `videos`, their count, from the eval step's `clips` of every batch."""
  logits = np.concatenate([c["logits"] for c in clips]).astype(np.float64)
  mask = np.concatenate([c["mask"] for c in clips])
  video = np.concatenate([c["video"] for c in clips])[mask]
  label = np.concatenate([c["label"] for c in clips])[mask]
  sums = np.zeros((videos, logits.shape[-1]))
  np.add.at(sums, video, logits[mask])
  labels = np.full(videos, -1)
  labels[video] = label
  return {"video_top1": float(np.mean(sums.argmax(-1) == labels)), "videos": videos}


def _read_json(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: is {os.path.dirname(path)} a training workdir?")
  with open(path) as f:
    return json.load(f)


def _dataset(path: str, cfg, info: DatasetInfo):
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--data_dir {path}: no such directory")
  data_cfg = dataclasses.replace(cfg.data, dir=path)
  channels = info.image_shape[-1]
  if info.is_detection and cfg.data.name == "voc":  # a VOC year folder: its evaluation split
    dataset = voc.read_voc(path, voc.splits(path)[1])
  elif info.is_detection:  # a COCO directory: its val2017 split
    dataset = coco.read_coco(path, "val")
  elif info.is_video:
    dataset = sources.read_video_dir(path, "test", data_cfg, info.class_names, classes_at_top=True)
  else:
    dataset = data_lib.read_dir(
      path, "test", data_cfg, info.class_names, channels, classes_at_top=True
    )
  if tuple(dataset.class_names) != tuple(info.class_names):
    raise ValueError(
      f"--data_dir {path} has classes {dataset.class_names}, the model {info.class_names}"
    )
  return dataset


def read_run_record(workdir: str) -> tuple[TrainConfig, DatasetInfo]:
  """The config and data record of a training workdir; clear errors if it is not one."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir}: no such directory")
  cfg = from_dict(_read_json(os.path.join(workdir, "config.json")))
  info = DatasetInfo.from_json(_read_json(os.path.join(workdir, "dataset.json")))
  return cfg, info


def restore_run(
  workdir: str,
  cfg: TrainConfig,
  info: DatasetInfo,
  step: int | None = None,
  sharding=None,
  report=print,
):
  """(model, tx, state) of a workdir's run at its newest intact (or the `step`) checkpoint.

  A damaged newest checkpoint is reported through `report` and skipped, left in place (the
  next training run moves it aside).
  """
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 1, 1)  # the state's structure, not its values
  target = steps.init_train_state(model, tx, info, cfg.seed, sharding)
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  try:
    return model, tx, ckpts.restore(target, step, report=report)
  finally:
    ckpts.close()


def with_method(cfg: TrainConfig, method: str) -> TrainConfig:
  """`cfg` with every layer's quantization replaced by the method spec `method` (per-layer
  rules dropped; which layers are quantized and the implementation kept)."""
  try:
    quant = dataclasses.replace(cfg.quant, method=method, rules="")
  except ValueError as e:
    raise ValueError(f"--quant_method {method!r}: {e}") from None
  return dataclasses.replace(cfg, quant=quant)


def _slug(spec: str) -> str:
  return "".join(c if c.isalnum() or c in "_." else "-" for c in spec).strip("-")


def evaluate_workdir(
  workdir: str,
  data_dir: str | None = None,
  batch_size: int = 0,
  step: int | None = None,
  report=print,
  quant_method: str | None = None,
) -> dict:
  """Restores the newest intact (or the `step`) checkpoint of `workdir` and evaluates it.

  `quant_method` (a method spec, e.g. "fp32" or "daq") evaluates the trained weights with
  another method's forward pass instead of the run's own: the float forward of an INT8-trained
  model, or the int8 forward of a float-trained one. The forward pass reads no quantization
  state, so the other method's starts fresh.

  The result is written to `<workdir>/eval-<name>.json` (`eval-<name>-<method>.json` with
  `quant_method`) where the workdir is writable; `result["written"]` says where, or why not.
  """
  cfg, info = read_run_record(workdir)
  eval_cfg = cfg if quant_method is None else with_method(cfg, quant_method)
  batch_size = batch_size or cfg.batch_size
  if data_dir:
    dataset, name = _dataset(data_dir, cfg, info), os.path.basename(os.path.normpath(data_dir))
  else:
    _, dataset, _ = data_lib.load(cfg.data)
    name = cfg.data.eval_split
  mesh = parallel.make_mesh(0, batch_size)
  replicated = parallel.replicated(mesh)
  model, tx, state = restore_run(workdir, cfg, info, step, replicated, report)
  if quant_method is not None:
    model = modeling.create_model(eval_cfg, info.num_classes, info.image_shape)
    state = state.replace(quant_state=steps.init_quant_state(model, info, cfg.seed, replicated))
    name = f"{name}-{_slug(quant_method)}"
  _, eval_fn = steps.compile_steps(model, tx, info, eval_cfg, replicated, donate=False)
  batches = data_lib.Batches(
    dataset,
    info,
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    workers=cfg.data.workers,
  )
  result = evaluate_batches(eval_fn, state, batches, mesh)
  batches.close()
  result = {"step": int(state.step), "data": data_dir or cfg.data.eval_split, **result}
  if quant_method is not None:
    result["quant_method"] = quant_method
  if parallel.is_main_process():
    path = os.path.join(workdir, f"eval-{name}.json")
    try:
      files.write_json(path, result)
      result["written"] = path
    except OSError as e:
      result["written"] = f"not written to {path}: {files.cause(e)}"
  return result
