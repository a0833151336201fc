"""`train_and_evaluate`: the training loop behind `train.py`.

The workdir holds `config.json`, `dataset.json`, `metrics.jsonl`, `tensorboard/` and
`checkpoints/`. Started again on the same workdir, a run restores the latest checkpoint and
continues exactly where it stopped: the state holds everything a step reads, and the batch of
a step is a function of (seed, step).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from daq_jax import data as data_lib
from daq_jax.data import image_folder
from daq_jax.data.image_folder import FileDataset
from daq_jax.training import checkpoint, optim, parallel, steps
from daq_jax.training.config import TrainConfig, from_dict, to_dict
from daq_jax.training.metrics import MetricWriter

# Keys that define what a checkpoint holds and which batches a step sees: a resumed run must
# agree on them with the run that wrote the checkpoints.
RESUME_KEYS = (
  "seed",
  "model",
  "quant",
  "batch_size",
  "data.name",
  "data.image_size",
  "data.val_fraction",
)


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


def _lookup(d: dict, dotted: str):
  for part in dotted.split("."):
    d = d[part]
  return d


def write_json(path: str, value) -> None:
  """Writes `value` as JSON atomically (a temporary file renamed over `path`)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _check_resumable(workdir: str, cfg: TrainConfig) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(json.dumps(to_dict(cfg)))
  for key in RESUME_KEYS:
    if _lookup(saved, key) != _lookup(now, key):
      raise ValueError(
        f"workdir {workdir} holds a run with {key}={_lookup(saved, key)!r}, not "
        f"{_lookup(now, key)!r}: use another --workdir, or the same config to resume"
      )


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
  return cfg.num_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))


def build_optimizer(cfg: TrainConfig, steps_per_epoch: int, num_steps: int):
  """(optax transformation, learning-rate schedule) of a config; UI8 gets its LR scaling."""
  ui8 = None
  if any(layer_cfg.wgrad_clip == "dsgc" for layer_cfg in cfg.quant.configs()):
    ui8 = (cfg.optim.lr_scale_alpha, cfg.optim.lr_scale_beta)
  learning_rate = optim.schedule(cfg.optim, cfg.batch_size, steps_per_epoch, num_steps)
  return optim.make_optimizer(cfg.optim, learning_rate, ui8_scaling=ui8), learning_rate


def evaluate(eval_fn, state, batches: data_lib.Batches, mesh) -> dict[str, float]:
  """Loss, top-1 and top-5 over every example of `batches.dataset`."""
  sums = None
  for batch in data_lib.prefetch(batches.evaluation(), 2, lambda b: parallel.put_batch(b, mesh)):
    out = eval_fn(state, batch)
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  sums = jax.device_get(sums)
  count = float(sums["count"])
  result = {"loss": float(sums["loss"]) / count, "top1": float(sums["top1"]) / count}
  if batches.info.num_classes > 10:
    result["top5"] = float(sums["top5"]) / count
  result["examples"] = int(count)
  return result


def train_and_evaluate(config: TrainConfig | dict, workdir: str) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns the final summary."""
  cfg = config if isinstance(config, TrainConfig) else from_dict(config)
  trainer = Trainer(cfg, workdir)
  try:
    return trainer.run()
  finally:
    trainer.close()


class Trainer:
  """One run: data, model, optimizer, checkpoints and metrics of a config in a workdir."""

  def __init__(self, cfg: TrainConfig, workdir: str):
    self.cfg = cfg
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(self.workdir, exist_ok=True)
    _check_resumable(self.workdir, cfg)
    self.mesh = parallel.make_mesh(cfg.num_devices, cfg.batch_size)
    train_set, eval_set, self.info = data_lib.load(cfg.data)
    process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    # One pool of decoding processes serves training and evaluation.
    self.decoder = (
      image_folder.Decoder(cfg.data.workers) if isinstance(train_set, FileDataset) else None
    )
    self.train_batches, self.eval_batches = (
      data_lib.Batches(
        d,
        self.info,
        cfg.batch_size,
        seed=cfg.seed,
        workers=cfg.data.workers,
        decoder=self.decoder,
        **process,
      )
      for d in (train_set, eval_set)
    )
    self.steps_per_epoch = self.train_batches.steps_per_epoch
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"config batch_size={cfg.batch_size} is larger than the {len(train_set)} training examples"
      )
    self.num_steps = total_steps(cfg, self.steps_per_epoch)
    if parallel.is_main_process():
      write_json(os.path.join(self.workdir, "config.json"), to_dict(cfg))
      write_json(os.path.join(self.workdir, "dataset.json"), self.info.to_json())
    self.model = steps.create_model(cfg, self.info.num_classes, self.info.image_shape)
    self.tx, self.learning_rate = build_optimizer(cfg, self.steps_per_epoch, self.num_steps)
    self.ckpts = checkpoint.Checkpoints(self.workdir, cfg.keep_checkpoints)
    self.writer = MetricWriter(self.workdir, self.num_steps, enabled=parallel.is_main_process())
    self._pending: list[tuple[int, dict]] = []
    self._last_log = (0, time.perf_counter())

  def close(self) -> None:
    self.writer.close()
    self.ckpts.close()
    self.train_batches.close()
    self.eval_batches.close()
    if self.decoder is not None:
      self.decoder.close()

  def _initial_state(self) -> steps.TrainState:
    state = steps.init_state(
      self.model, self.tx, self.info, self.cfg.seed, parallel.replicated(self.mesh)
    )
    if self.ckpts.latest_step() is not None:
      state = self.ckpts.restore(state)
      self.writer.message(f"resumed from {self.ckpts.directory}/{self.ckpts.latest_step()}")
    return state

  def _check_finite(self) -> list[dict]:
    """The pending metrics on the host; stops the run at the first non-finite loss."""
    fetched = jax.device_get([m for _, m in self._pending])
    for (step, _), m in zip(self._pending, fetched):
      if not np.isfinite(m["loss"]) or not m["finite"]:
        what = (
          f"the loss is {float(m['loss'])}"
          if not np.isfinite(m["loss"])
          else "the parameters became non-finite"
        )
        raise NonFiniteLossError(
          f"{what} at step {step + 1}: stopping. The last good checkpoint "
          f"(step {self.ckpts.latest_step()}) is kept in {self.ckpts.directory}"
        )
    return fetched

  def _log(self, step: int) -> None:
    """Writes the mean of the pending metrics (after checking them)."""
    if not self._pending or step == self._last_log[0]:
      return
    fetched = self._check_finite()
    values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
    steps_done = step - self._last_log[0]
    elapsed = time.perf_counter() - self._last_log[1]
    values["learning_rate"] = float(self.learning_rate(step - 1))
    values["step_time_s"] = elapsed / steps_done
    values["images_per_s"] = self.cfg.batch_size * steps_done / elapsed
    values["epoch"] = step / self.steps_per_epoch
    self.writer.write(step, values)
    self._pending, self._last_log = [], (step, time.perf_counter())

  def _evaluate(self, eval_fn, state) -> dict[str, float]:
    return evaluate(eval_fn, state, self.eval_batches, self.mesh)

  def run(self) -> dict:
    cfg, spe = self.cfg, self.steps_per_epoch
    state = self._initial_state()
    start = int(state.step)
    train_fn, eval_fn = steps.compile_steps(
      self.model, self.tx, self.info, cfg, parallel.replicated(self.mesh)
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    self.writer.message(
      f"{cfg.model.name} ({n_params:,} parameters), method {cfg.quant.method} "
      f"({cfg.quant.impl}), {len(self.train_batches.dataset)} train / "
      f"{len(self.eval_batches.dataset)} {cfg.data.eval_split} examples, {self.num_steps} steps "
      f"of {cfg.batch_size} on {self.mesh.size} {self.mesh.devices.flat[0].platform} "
      f"device(s), workdir {self.workdir}"
    )
    checkpoint_every = cfg.checkpoint_every_steps or spe
    eval_every = round(cfg.eval_every_epochs * spe) if cfg.eval_every_epochs > 0 else 0
    self._last_log = (start, time.perf_counter())
    batches = data_lib.prefetch(
      (self.train_batches.train(s) for s in range(start, self.num_steps)),
      cfg.data.prefetch,
      lambda b: parallel.put_batch(b, self.mesh),
    )
    try:
      for step in range(start + 1, self.num_steps + 1):
        state, metrics = train_fn(state, next(batches))
        self._pending.append((step - 1, metrics))
        if step % cfg.log_every_steps == 0 or step == self.num_steps:
          self._log(step)
        if step % checkpoint_every == 0 or step == self.num_steps:
          self._check_finite()  # never checkpoint a state past a non-finite loss
          self.ckpts.save(step, state)
        if eval_every and step % eval_every == 0 and step != self.num_steps:
          self.writer.write(step, self._evaluate(eval_fn, state), prefix=cfg.data.eval_split)
    except KeyboardInterrupt:
      done = int(state.step)
      self._log(done)
      self.ckpts.save(done, state)
      self.writer.message(
        f"interrupted: saved step {done} in {self.ckpts.directory}; run again to resume"
      )
      raise
    finally:
      batches.close()
    return self._finish(eval_fn, state)

  def _finish(self, eval_fn, state) -> dict:
    cfg = self.cfg
    result = self._evaluate(eval_fn, state)
    self.writer.write(self.num_steps, result, prefix=cfg.data.eval_split)
    summary = {
      "step": int(state.step),
      "method": cfg.quant.method,
      "model": cfg.model.name,
      "eval_split": cfg.data.eval_split,
      **{f"eval_{k}": v for k, v in result.items()},
    }
    top5 = f", top-5 {result['top5']:.4f}" if "top5" in result else ""
    self.writer.message(
      f"final: {cfg.model.name} {cfg.quant.method} step {summary['step']}: "
      f"{cfg.data.eval_split} top-1 {result['top1']:.4f}{top5} on {result['examples']} "
      f"examples, loss {result['loss']:.4f}"
    )
    if parallel.is_main_process():
      write_json(os.path.join(self.workdir, "summary.json"), summary)
    return summary
