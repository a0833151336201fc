"""`train_and_evaluate`: the training loop behind `train.py`.

The workdir holds `config.json`, `dataset.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/` and `run.lock` (see `training.workdir`). Started again on the same workdir, a
run checks that it is the recorded one, restores the newest intact checkpoint and continues
exactly where it stopped: the state holds everything a step reads, and the batch of a step is a
function of (seed, step). Nothing in the workdir is written before those checks pass. SIGTERM
and SIGINT stop a run at a step boundary after saving (`training.stops`).

The parts live in modules of their own: the optimizer (`optim.build_optimizer`), where the
run starts (`resume.start`), the logged metrics and the non-finite guard
(`metrics.TrainLog`), the evaluation loop (`evaluation.evaluate_batches`) and the files
(`files`, `checkpoint`). This module puts them in order.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from daq_jax import data as data_lib
from daq_jax.data import image_folder
from daq_jax.quant import backends
from daq_jax.training import checkpoint, files, modeling, optim, parallel, resume, steps, stops
from daq_jax.training import workdir as workdir_lib
from daq_jax.training.config import TrainConfig, from_dict, to_dict
from daq_jax.training.evaluation import describe_result, evaluate_batches
from daq_jax.training.metrics import MetricWriter, TrainLog

__all__ = ["Trainer", "train_and_evaluate"]


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
    metrics.NonFiniteLossError: the loss became NaN or infinite (the checkpoint before it is
      kept).
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
  """One run: data, model, optimizer, checkpoints and metrics of a config in a workdir.

  The constructor checks everything a run needs and writes nothing but the lock; `run()`
  restores or starts the state, writes the run's record and trains.
  """

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
    self.lock = self.decoder = self.ckpts = self.writer = None
    self.train_batches = self.eval_batches = None
    try:
      # Several processes: the same run on each (checked before anything is written), and
      # process 0 holds the lock for all of them; a refusal ends every one alike.
      parallel.check_same("config", to_dict(cfg))
      self.lock = self._lock()
      self._setup()
    except BaseException:
      self.close(quiet=True)
      raise

  def _lock(self) -> workdir_lib.RunLock | None:
    """The workdir's lock, taken by process 0 for the run; its refusal reaches every process."""
    lock, refused = None, ""
    if self.main:
      try:
        lock = workdir_lib.RunLock(self.workdir)
      except (workdir_lib.WorkdirError, files.WriteError) as e:
        if jax.process_count() == 1:
          raise
        refused = str(e)
    refused = parallel.from_process_zero(refused)
    if refused:
      raise workdir_lib.WorkdirError(refused)
    return lock

  def _setup(self) -> None:
    cfg = self.cfg
    self.mesh = parallel.make_mesh(cfg.num_devices, cfg.batch_size)
    self.agreed = stops.AgreedStop(self.stop, self.mesh)
    train_set, eval_set, self.info = data_lib.load(cfg.data)
    parallel.check_same("dataset", self.info.to_json())
    self.ckpts = checkpoint.Checkpoints(self.workdir, cfg.keep_checkpoints)
    if self.ckpts.all_steps():  # a run to resume: it must be this one
      workdir_lib.check_record(self.workdir, to_dict(cfg), self.info)
    elif self.restore_step is not None:
      raise FileNotFoundError(
        f"--restore_step {self.restore_step}: no checkpoint in {self.workdir}"
      )
    process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    # One pool of decoding processes serves training and evaluation (images or videos on disk).
    on_disk = getattr(train_set, "paths", None) is not None  # a FileDataset, or VideoDataset
    self.decoder = image_folder.Decoder(cfg.data.workers) if on_disk else None
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
    self.num_steps = optim.total_steps(cfg, self.steps_per_epoch)
    self.model = modeling.create_model(cfg, self.info.num_classes, self.info.image_shape)
    self.tx, self.learning_rate = optim.build_optimizer(cfg, self.steps_per_epoch, self.num_steps)

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

  def _write_record(self, start: resume.Start) -> None:
    """The run's record (`config.json`, `dataset.json`) and its metrics writer, opened at the
    step it starts from; written only now that the workdir is known to hold this run."""
    if self.main:
      files.write_json(os.path.join(self.workdir, "config.json"), to_dict(self.cfg))
      files.write_json(os.path.join(self.workdir, "dataset.json"), self.info.to_json())
    self.writer = MetricWriter(
      self.workdir,
      self.num_steps,
      enabled=self.main,
      resume_step=int(start.state.step) if start.resumed else None,
      redo_eval=self.cfg.data.eval_split if start.redo_final_eval else "",
    )
    if self.lock is not None and self.lock.stale:
      self.writer.message(f"took over the workdir lock left by {self.lock.stale}, which ended")
    for note in start.notes:
      self.writer.message(note)

  def _evaluate(self, eval_fn, state) -> dict[str, float] | None:
    batches, mesh = self.eval_batches, self.mesh
    return evaluate_batches(eval_fn, state, batches, mesh, stop=self.agreed)

  def _log(self, step: int) -> None:
    """Writes the metrics since the last log (checked: a non-finite loss stops the run)."""
    self.log.write(step, self.ckpts.latest_step(), self.ckpts.directory)

  def _save(self, step: int, state) -> None:
    """Checkpoints `state`, never past a non-finite loss."""
    self.log.check_finite(self.ckpts.latest_step(), self.ckpts.directory)
    self.ckpts.save(step, state)

  def _stop(self, state, during: str = "") -> None:
    """Saves the state (after its pending metrics) and raises `stops.Stopped`."""
    done = int(state.step)
    self._log(done)
    if done > 0:
      self._save(done, state)
      saved = f"checkpoint {self.ckpts.step_dir(done)} is saved"
    else:
      saved = "nothing to save yet"
    here = self.stop.name or f"{self.agreed.name} to another process"
    message = f"stopped by {here}{during} at step {done}: {saved}; run the same command to resume"
    self.writer.message(message)
    raise stops.Stopped(self.agreed.signum, message)

  def run(self) -> dict:
    cfg, spe = self.cfg, self.steps_per_epoch
    replicated = parallel.replicated(self.mesh)
    fresh = steps.init_train_state(self.model, self.tx, self.info, cfg.seed, replicated)
    start = resume.start(self.ckpts, fresh, self.num_steps, self.restore_step)
    self._write_record(start)
    if start.complete:
      self.writer.message(
        f"the run in {self.workdir} is complete at step {self.num_steps} "
        f"({cfg.data.eval_split} {_headline(start.complete)}); nothing to do. "
        "Raise num_epochs or num_steps to train further"
      )
      return start.complete
    state, first = start.state, int(start.state.step)
    self.writer.message(f"data: {self.info.source}")
    train_fn, eval_fn = steps.compile_steps(self.model, self.tx, self.info, cfg, replicated)
    train_fn = parallel.compiled_together(train_fn, "train step")
    eval_fn = parallel.compiled_together(eval_fn, "eval step")
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    self.writer.message(
      f"{cfg.model.name} ({n_params:,} parameters), method {cfg.quant.method} "
      f"({_describe_impl(cfg.quant, len(self.info.image_shape) - 1)}), "
      f"{len(self.train_batches.dataset)} train / "
      f"{len(self.eval_batches.dataset)} {cfg.data.eval_split} "
      f"{'videos' if self.info.is_video else 'images' if self.info.is_detection else 'examples'}, "
      f"{self.num_steps} steps "
      f"of {cfg.batch_size} on {self.mesh.size} {self.mesh.devices.flat[0].platform} "
      f"device(s), workdir {self.workdir}"
    )
    self.log = TrainLog(self.writer, self.learning_rate, cfg.batch_size, spe, first)
    checkpoint_every = cfg.checkpoint_every_steps or spe
    eval_every = round(cfg.eval_every_epochs * spe) if cfg.eval_every_epochs > 0 else 0
    batches = data_lib.prefetch(
      (self.train_batches.train(s) for s in range(first, self.num_steps)),
      cfg.data.prefetch,
      lambda b: parallel.put_batch(b, self.mesh),
    )
    try:
      for step in range(first + 1, self.num_steps + 1):
        if self.agreed.requested:
          self._stop(state)
        state, metrics = train_fn(state, self.agreed.attach(next(batches)))
        self.log.add(step, self.agreed.observe(metrics))
        if step % cfg.log_every_steps == 0 or step == self.num_steps:
          self._log(step)
        if step % checkpoint_every == 0 or step == self.num_steps:
          self._save(step, state)
        if eval_every and step % eval_every == 0 and step != self.num_steps:
          result = self._evaluate(eval_fn, state)
          if result is None:
            self._stop(state, " during an evaluation")
          self.writer.write(step, result, prefix=cfg.data.eval_split)
    except KeyboardInterrupt:  # no signal handlers (a run outside the main thread)
      done = int(state.step)
      self._log(done)
      self._save(done, state)
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
    self.writer.message(
      f"final: {cfg.model.name} {cfg.quant.method} step {summary['step']}: "
      f"{cfg.data.eval_split} {describe_result(result)}"
    )
    if self.main:
      files.write_json(os.path.join(self.workdir, "summary.json"), summary)
    return summary


def _describe_impl(quant, spatial_dims: int) -> str:
  """The run's `impl` and what auto resolves to for its method's layers (for the headline)."""
  rows = any(c.dgrad_granularity == "per_row" for c in quant.configs())
  return backends.describe(quant.impl, spatial_dims=spatial_dims, dgrad_rows=rows)


def _headline(summary: dict) -> str:
  """A finished run's main number: its mAP (detection) or top-1."""
  if "eval_mAP" in summary:
    return f"mAP {summary['eval_mAP']:.4f}"
  return f"top-1 {summary['eval_top1']:.4f}"
