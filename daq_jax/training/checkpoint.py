"""Checkpoints with Orbax: atomic, verified, periodic and final, keeping the last N.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-
write leaves the previous checkpoints intact and no half-written step is ever restored; the
temporary directories such a crash leaves are removed when the workdir is opened again. After
a step is written, `MANIFEST` (in the step's directory) records the size and SHA-256 of each of
its files, so that a checkpoint damaged later (a truncated or replaced file, a deleted one) is
found before it is restored, and reported naming the file.

A damaged step is never deleted: `restore` moves it to `<workdir>/checkpoints_aside/` and goes
back to the newest intact step. A checkpoint holds the whole `TrainState` (parameters,
optimizer state, BN statistics, quantization state, step, PRNG key); the data position is the
step itself, because the batch order is a function of (seed, step) (daq_jax.data.batches).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from daq_jax.training import files, parallel

MANIFEST = "MANIFEST"
ASIDE = "checkpoints_aside"


class SaveError(files.WriteError):
  """A step could not be saved; the message says why, the last intact step and what to do."""


def _is_closed_loop_callback(unraisable) -> bool:
  return unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"


class _AboutFailedSaves(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" about a save already reported."""

  def filter(self, record: logging.LogRecord) -> bool:
    return ".orbax-checkpoint-tmp" not in record.getMessage()


_ABOUT_FAILED_SAVES = _AboutFailedSaves()  # one instance: adding it again changes nothing


@contextlib.contextmanager
def _orbax_quiet():
  """A failed save is reported in one line by `save`, not in Orbax's words, which are many:
  its logger reports each failed write with tracebacks from its threads, TensorStore's writes
  still in flight call back into the event loop Orbax has closed (an unraisable
  `RuntimeError('Event loop is closed')` each, until the process ends), and asyncio logs the
  failed tasks when they are collected. While a save runs, Orbax's logger is silenced and
  those callbacks are dropped; after a failed one, the callbacks and asyncio's records that
  name its temporary folder stay dropped. Nothing else is hidden."""
  logger = absl_logging.get_absl_logger()
  level, unraisablehook = logger.level, sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      unraisablehook(unraisable)

  logger.setLevel(logging.CRITICAL)
  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    logging.getLogger("asyncio").addFilter(_ABOUT_FAILED_SAVES)
    raise
  else:
    sys.unraisablehook = unraisablehook
  finally:
    logger.setLevel(level)


class CheckpointError(ValueError):
  """A checkpoint cannot be used; the message is one line naming the step and the cause."""


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != MANIFEST]
  return sorted(out)


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str) -> None:
  """Records every file of a written step (size, SHA-256); atomic."""
  manifest = {
    rel: [os.path.getsize(os.path.join(step_dir, rel)), _digest(os.path.join(step_dir, rel))]
    for rel in _files(step_dir)
  }
  with files.replace(os.path.join(step_dir, MANIFEST)) as f:
    json.dump(manifest, f)


# Without a manifest (a step from an older version, or a crash between Orbax's rename and the
# manifest), at least these must be there.
_REQUIRED = ("_CHECKPOINT_METADATA", "default/_METADATA", "default/manifest.ocdbt")


def damage(step_dir: str) -> str | None:
  """What is wrong with a step's files, naming the first bad one; None if they are intact."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    missing = [rel for rel in _REQUIRED if not os.path.isfile(os.path.join(step_dir, rel))]
    return f"file {missing[0]} is missing" if missing else None
  except (OSError, ValueError) as e:
    return f"file {MANIFEST} is unreadable ({e})"
  for rel, (size, digest) in sorted(manifest.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      return f"file {rel} is missing"
    if os.path.getsize(path) != size:
      return f"file {rel} has {os.path.getsize(path)} bytes, not the {size} written"
    if _digest(path) != digest:
      return f"file {rel} is not the file written (its SHA-256 differs)"
  return None


def _key_name(key) -> str:  # a GetAttrKey, DictKey or SequenceKey
  for attr in ("name", "key", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _tree_paths(tree) -> set[str]:
  """The leaf paths of a state, spelt as Orbax's `_METADATA` spells them."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {str(tuple(_key_name(k) for k in path)) for path, _ in flat}


def _saved_paths(step_dir: str) -> set[str]:
  path = os.path.join(step_dir, "default", "_METADATA")
  try:
    with open(path) as f:
      tree = json.load(f)["tree_metadata"]
    # Empty nodes (an optimizer's None state) are recorded too, but they are not leaves.
    return {k for k, v in tree.items() if not v["value_metadata"].get("skip_deserialize")}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f"file default/_METADATA is unreadable ({e})") from None


class Checkpoints:
  """The checkpoints of one workdir (`<workdir>/checkpoints/<step>`).

  Args:
    workdir: the run's directory.
    keep: how many of the latest steps stay on disk.
    read_only: neither create, clean nor move anything (evaluation).
  """

  def __init__(self, workdir: str, keep: int = 3, *, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.read_only = read_only
    if not read_only and jax.process_index() == 0:  # one cleaner of a shared workdir
      self._remove_partial_steps()
    # Not Orbax's read_only option, which logs warnings on every use; this one never saves.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, enable_async_checkpointing=False
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _remove_partial_steps(self) -> None:
    """Removes the temporary folders of saves that never completed (a killed process).

    Orbax can do this too (`cleanup_tmp_directories`), but in a background thread that a
    short-lived process (one whose config is refused) can exit under.
    """
    if not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state) -> None:
    """Saves `step`, or raises `SaveError` with nothing of it left behind: one line with the
    step, the cause (no space left, a read-only disk, a quota), the newest intact step and
    what to do."""
    if step in self._manager.all_steps():
      return
    try:
      with _orbax_quiet():
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
      if jax.process_index() == 0:
        write_manifest(self.step_dir(step))
    except Exception as e:  # Orbax and TensorStore raise ValueErrors; the manifest OSErrors
      self._discard(step)
      raise SaveError(
        f"checkpoint step {step} could not be saved in {self.directory}: {files.cause(e)}. "
        f"{self.resume_hint()}",
        files.error_code(e),
      ) from None

  def _discard(self, step: int) -> None:
    """Removes what a failed save of `step` left: Orbax's temporary folder, or the step
    itself when only its manifest failed (it could not be verified on restore)."""
    self._remove_partial_steps()
    shutil.rmtree(self.step_dir(step), ignore_errors=True)
    with contextlib.suppress(Exception):
      self._manager.reload()

  def last_intact_step(self) -> int | None:
    """The newest step whose files are intact, or None."""
    return next((s for s in reversed(self.all_steps()) if damage(self.step_dir(s)) is None), None)

  def resume_hint(self) -> str:
    """What a run stopped by a full disk (or another write failure) should do next."""
    last = self.last_intact_step()
    if last is None:
      return "No checkpoint is saved yet: free space and run the same command to start again"
    return (
      f"The last intact checkpoint is step {last}: free space and run the same command to "
      "resume from it"
    )

  def set_aside(self, step: int, why: str) -> str:
    """Moves a step out of the checkpoints (never deletes it); returns where it went.

    Several processes: every one calls it (they find the same steps), process 0 moves the
    step, and the others wait for it (the workdir is shared)."""
    aside = os.path.join(self.workdir, ASIDE)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(aside, f"{step}-{why}-{parallel.from_process_zero(stamp)}")
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      shutil.move(self.step_dir(step), target)
    parallel.barrier(f"set aside {step} {why}")
    self._manager.reload()
    return target

  def _restore_step(self, target, step: int):
    problem = damage(self.step_dir(step))
    if problem:
      raise CheckpointError(f"checkpoint step {step} is damaged: {problem}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      saved = _saved_paths(self.step_dir(step))
    except CheckpointError as e:
      raise CheckpointError(f"checkpoint step {step} is damaged: {e}") from None
    ours = _tree_paths(abstract)
    if saved != ours:
      raise ValueError(
        f"checkpoint {self.step_dir(step)} does not match this model and config (first "
        f"difference at {sorted(saved ^ ours)[0]}): use another --workdir"
      )
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax and TensorStore raise bare Exceptions
      # The files are intact (or, without a manifest, at least present): not damage, so no
      # step is moved aside; most likely another shape of the same layers.
      raise ValueError(
        f"checkpoint {self.step_dir(step)} cannot be restored into this model and config "
        f"({str(e).splitlines()[0][:300]}): use another --workdir, or --restore_step"
      ) from None

  def restore(self, target, step: int | None = None, report: Callable[[str], None] = print):
    """The checkpoint at `step`, or the newest intact one, shaped and sharded like `target`.

    Without `step`, a damaged newest step is reported, moved aside (or, read-only, skipped)
    and the next older one is tried. A chosen `step` that is damaged is an error. A checkpoint
    of another model is an error whatever the step.
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; there are {steps}"
        )
      return self._restore_step(target, step)
    for candidate in reversed(steps):
      try:
        return self._restore_step(target, candidate)
      except CheckpointError as e:
        if self.read_only:
          report(f"{e}; it is left in place, trying the step before it")
        else:
          report(f"{e}; moved to {self.set_aside(candidate, 'damaged')}")
    raise CheckpointError(
      f"no intact checkpoint in {self.directory} (steps {steps} are damaged"
      + (
        ")"
        if self.read_only
        else f", moved to {os.path.join(self.workdir, ASIDE)}); run again to start afresh"
      )
    )

  def close(self) -> None:
    self._manager.close()
