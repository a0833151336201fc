"""Evaluation of a trained workdir on its own eval split or on any dataset the loaders read
(the library side of `python -m daq_jax.evaluate`)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from daq_jax import data as data_lib
from daq_jax.data.loader import DatasetInfo
from daq_jax.training import checkpoint, parallel, steps, trainer
from daq_jax.training.config import from_dict


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
  dataset = data_lib.read_dir(
    path, "test", data_cfg, info.class_names, channels, classes_at_top=True
  )
  if tuple(dataset.class_names) != tuple(info.class_names):
    raise ValueError(
      f"--data_dir {path} has classes {dataset.class_names}, the model {info.class_names}"
    )
  return dataset


def evaluate_workdir(
  workdir: str, data_dir: str | None = None, batch_size: int = 0, step: int | None = None
) -> dict:
  """Restores the latest (or `step`) checkpoint of `workdir` and evaluates it."""
  cfg = from_dict(_read_json(os.path.join(workdir, "config.json")))
  info = DatasetInfo.from_json(_read_json(os.path.join(workdir, "dataset.json")))
  batch_size = batch_size or cfg.batch_size
  if data_dir:
    dataset, name = _dataset(data_dir, cfg, info), os.path.basename(os.path.normpath(data_dir))
  else:
    _, dataset, _ = data_lib.load(cfg.data)
    name = cfg.data.eval_split
  mesh = parallel.make_mesh(0, batch_size)
  model = steps.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = trainer.build_optimizer(cfg, 1, 1)  # the state's structure, not its values
  replicated = parallel.replicated(mesh)
  target = steps.init_state(model, tx, info, cfg.seed, replicated)
  ckpts = checkpoint.Checkpoints(workdir)
  state = ckpts.restore(target, step)
  ckpts.close()
  _, eval_fn = steps.compile_steps(model, tx, info, cfg, replicated, donate=False)
  batches = data_lib.Batches(
    dataset,
    info,
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    workers=cfg.data.workers,
  )
  result = trainer.evaluate(eval_fn, state, batches, mesh)
  batches.close()
  result = {"step": int(state.step), "data": data_dir or name, **result}
  if parallel.is_main_process():
    trainer.write_json(os.path.join(workdir, f"eval-{name}.json"), result)
  return result
