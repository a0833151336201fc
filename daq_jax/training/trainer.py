"""`train_and_evaluate`: the training loop behind `train.py`.

The workdir holds `config.json`, `dataset.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/` and `run.lock` (see `training.workdir`). Started again on the same workdir, a
run checks that it is the recorded one, restores the newest intact checkpoint and continues
exactly where it stopped: the state holds everything a step reads, and the batch of a step is a
function of (seed, step). Nothing in the workdir is written before those checks pass. SIGTERM
and SIGINT stop a run at a step boundary after saving (`training.stops`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from daq_jax import data as data_lib
from daq_jax.data import image_folder
from daq_jax.data.image_folder import FileDataset
from daq_jax.quant import backends
from daq_jax.training import checkpoint, files, optim, parallel, steps, stops
from daq_jax.training import workdir as workdir_lib
from daq_jax.training.config import TrainConfig, from_dict, to_dict
from daq_jax.training.files import write_json
from daq_jax.training.metrics import MetricWriter, quantizer_statistics
from daq_jax.training.workdir import read_json

__all__ = ["NonFiniteLossError", "Trainer", "evaluate", "train_and_evaluate"]


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
  return cfg.num_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))


def build_optimizer(cfg: TrainConfig, steps_per_epoch: int, num_steps: int):
  """(optax transformation, learning-rate schedule) of a config; UI8 gets its LR scaling."""
  ui8 = None
  if any(layer_cfg.wgrad_clip == "dsgc" for layer_cfg in cfg.quant.configs()):
    ui8 = (cfg.optim.lr_scale_alpha, cfg.optim.lr_scale_beta)
  learning_rate = optim.schedule(cfg.optim, cfg.batch_size, steps_per_epoch, num_steps)
  return optim.make_optimizer(cfg.optim, learning_rate, ui8_scaling=ui8), learning_rate


def evaluate(
  eval_fn, state, batches: data_lib.Batches, mesh, stop: Callable[[], bool] = lambda: False
) -> dict[str, float] | None:
  """Loss, top-1 and top-5 over every example of `batches.dataset`; None if `stop()` became
  true on the way (a signal asked the run to end)."""
  sums = None
  for batch in data_lib.prefetch(batches.evaluation(), 2, lambda b: parallel.put_batch(b, mesh)):
    if stop():
      return None
    out = eval_fn(state, batch)
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  sums = jax.device_get(sums)
  count = float(sums["count"])
  result = {"loss": float(sums["loss"]) / count, "top1": float(sums["top1"]) / count}
  if batches.info.num_classes > 10:
    result["top5"] = float(sums["top5"]) / count
  result["examples"] = int(count)
  return result


def train_and_evaluate(
  config: TrainConfig | dict, workdir: str, restore_step: int | None = None
) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns the final summary.

  Args:
    restore_step: resume from this checkpoint step instead of the newest; the steps after it
      are moved aside (`<workdir>/checkpoints_aside/`), their metrics dropped.

  Raises:
    stops.Stopped: SIGTERM or SIGINT stopped the run (after saving a checkpoint).
    ValueError: the workdir, its checkpoints or the config cannot make this run (one line).
    files.WriteError: a file of the run could not be written (a full disk): one line with the
      file, the cause, the last intact checkpoint and what to do. Nothing written before is
      damaged, and the same command resumes.
  """
  cfg = config if isinstance(config, TrainConfig) else from_dict(config)
  with stops.StopSignals() as stop:
    trainer = Trainer(cfg, workdir, stop=stop, restore_step=restore_step)
    try:
      summary = trainer.run()
    except files.WriteError as e:
      trainer.close(quiet=True)
      if isinstance(e, checkpoint.SaveError):  # its message says what to do already
        raise
      raise files.WriteError(f"{e}. {trainer.ckpts.resume_hint()}", e.errno) from None
    except BaseException:
      trainer.close(quiet=True)
      raise
    trainer.close()
    return summary


class Trainer:
  """One run: data, model, optimizer, checkpoints and metrics of a config in a workdir."""

  def __init__(
    self,
    cfg: TrainConfig,
    workdir: str,
    *,
    stop: stops.StopSignals | None = None,
    restore_step: int | None = None,
  ):
    self.cfg, self.restore_step = cfg, restore_step
    self.stop = stop or stops.StopSignals()
    self.workdir = workdir_lib.prepare(workdir)
    self.main = parallel.is_main_process()
    self.lock = workdir_lib.RunLock(self.workdir) if self.main else None
    self.decoder = self.ckpts = self.writer = None
    self.train_batches = self.eval_batches = None
    try:
      self._setup()
    except BaseException:
      self.close(quiet=True)
      raise

  def _setup(self) -> None:
    cfg = self.cfg
    self.mesh = parallel.make_mesh(cfg.num_devices, cfg.batch_size)
    train_set, eval_set, self.info = data_lib.load(cfg.data)
    self.ckpts = checkpoint.Checkpoints(self.workdir, cfg.keep_checkpoints)
    if self.ckpts.all_steps():  # a run to resume: it must be this one
      workdir_lib.check_record(self.workdir, to_dict(cfg), self.info)
    elif self.restore_step is not None:
      raise FileNotFoundError(
        f"--restore_step {self.restore_step}: no checkpoint in {self.workdir}"
      )
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
    self.model = steps.create_model(cfg, self.info.num_classes, self.info.image_shape)
    self.tx, self.learning_rate = build_optimizer(cfg, self.steps_per_epoch, self.num_steps)
    self._pending: list[tuple[int, dict]] = []
    self._last_log = (0, time.perf_counter())

  def close(self, quiet: bool = False) -> None:
    """Closes every part, even when one fails; `quiet`: after the run failed, a part's failure
    to close (the same full disk) does not replace the error that ended it."""
    failure = None
    for part in (self.writer, self.ckpts, self.train_batches, self.eval_batches, self.decoder):
      if part is not None:
        try:
          part.close()
        except Exception as e:  # the rest are closed all the same
          failure = failure or e
    if self.lock is not None:
      self.lock.release()
    if failure is not None and not quiet:
      raise files.WriteError(f"closing the run in {self.workdir} failed: {files.cause(failure)}")

  def _initial_state(self) -> steps.TrainState:
    """The restored (or fresh) state; then the run's record and metrics writer, which are
    written only now that the workdir is known to hold this run."""
    state = steps.init_state(
      self.model, self.tx, self.info, self.cfg.seed, parallel.replicated(self.mesh)
    )
    notes, resumed = [], bool(self.ckpts.all_steps())
    if resumed:
      state = self.ckpts.restore(state, self.restore_step, report=notes.append)
      restored = int(state.step)
      for later in [s for s in self.ckpts.all_steps() if s > restored]:
        notes.append(f"step {later} moved to {self.ckpts.set_aside(later, 'superseded')}")
      notes.append(f"resumed from {self.ckpts.step_dir(restored)}")
    if self.main:
      write_json(os.path.join(self.workdir, "config.json"), to_dict(self.cfg))
      write_json(os.path.join(self.workdir, "dataset.json"), self.info.to_json())
    # The end of this run, restored: done if its summary was written, else the final
    # evaluation is to be done again (and its record replaced).
    final = resumed and int(state.step) >= self.num_steps
    summary = read_json(os.path.join(self.workdir, "summary.json")) if final else None
    self.complete = summary if summary and summary.get("step") == self.num_steps else None
    self.writer = MetricWriter(
      self.workdir,
      self.num_steps,
      enabled=self.main,
      resume_step=int(state.step) if resumed else None,
      redo_eval=self.cfg.data.eval_split if final and not self.complete else "",
    )
    if self.lock is not None and self.lock.stale:
      self.writer.message(f"took over the workdir lock left by {self.lock.stale}, which ended")
    for note in notes:
      self.writer.message(note)
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

  def _log(self, step: int, state=None) -> None:
    """Writes the mean of the pending metrics (after checking them), and the quantizer's
    statistics of the last step when `state` is given."""
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
    if state is not None and state.quant_state:
      stats = quantizer_statistics(state.quant_state)
      self.writer.write(step, stats, prefix="quant", show=False)
    self._pending, self._last_log = [], (step, time.perf_counter())

  def _evaluate(self, eval_fn, state) -> dict[str, float] | None:
    return evaluate(eval_fn, state, self.eval_batches, self.mesh, stop=lambda: self.stop.requested)

  def _stop(self, state, during: str = "") -> None:
    """Saves the state (after its pending metrics) and raises `stops.Stopped`."""
    done = int(state.step)
    self._log(done, state)  # checks the pending metrics: no checkpoint past a non-finite loss
    if done > 0:
      self.ckpts.save(done, state)
      saved = f"checkpoint {self.ckpts.step_dir(done)} is saved"
    else:
      saved = "nothing to save yet"
    message = (
      f"stopped by {self.stop.name}{during} at step {done}: {saved}; run the same command to resume"
    )
    self.writer.message(message)
    raise stops.Stopped(self.stop.signum, message)

  def run(self) -> dict:
    cfg, spe = self.cfg, self.steps_per_epoch
    state = self._initial_state()
    start = int(state.step)
    if self.complete:
      self.writer.message(
        f"the run in {self.workdir} is complete at step {self.num_steps} "
        f"({cfg.data.eval_split} top-1 {self.complete['eval_top1']:.4f}); nothing to do. Raise "
        "num_epochs or num_steps to train further"
      )
      return self.complete
    self.writer.message(f"data: {self.info.source}")
    train_fn, eval_fn = steps.compile_steps(
      self.model, self.tx, self.info, cfg, parallel.replicated(self.mesh)
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    self.writer.message(
      f"{cfg.model.name} ({n_params:,} parameters), method {cfg.quant.method} "
      f"({backends.describe(cfg.quant.impl)}), {len(self.train_batches.dataset)} train / "
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
        if self.stop.requested:
          self._stop(state)
        state, metrics = train_fn(state, next(batches))
        self._pending.append((step - 1, metrics))
        if step % cfg.log_every_steps == 0 or step == self.num_steps:
          self._log(step, state)
        if step % checkpoint_every == 0 or step == self.num_steps:
          self._check_finite()  # never checkpoint a state past a non-finite loss
          self.ckpts.save(step, state)
        if eval_every and step % eval_every == 0 and step != self.num_steps:
          result = self._evaluate(eval_fn, state)
          if result is None:
            self._stop(state, " during an evaluation")
          self.writer.write(step, result, prefix=cfg.data.eval_split)
    except KeyboardInterrupt:  # no signal handlers (a run outside the main thread)
      done = int(state.step)
      self._log(done, state)
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
    if result is None:
      self._stop(state, " during the final evaluation")
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
    if self.main:
      write_json(os.path.join(self.workdir, "summary.json"), summary)
    return summary
