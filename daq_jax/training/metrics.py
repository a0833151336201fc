"""Where metrics go: JSON lines, TensorBoard event files and a progress line on a terminal.

Both files grow by whole records, written synchronously: a record that cannot be written (a
full disk) is cut off again and raises `files.WriteError` at the step that wrote it, so an
earlier record is never damaged and no write fails unseen in a background thread (as it
would in tensorboardX's `SummaryWriter`, whose queue then blocks the run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import time

import jax
import numpy as np
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

from daq_jax.nn.ops import OP_NAME
from daq_jax.quant import gradient
from daq_jax.training import files


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def quantizer_statistics(quant_stats: dict) -> dict[str, float]:
  """The quantizer's statistics of a step (the `quant_stats` collection: `gradient.STATISTICS`
  by name under each layer's op, `<layer path>/quant/inverted_t`), per quantized layer
  (`<layer path>/inverted_t`, `clip_ratio`, `dgrad_scale`) and averaged over the layers
  (`mean/...`)."""
  out, sums = {}, {}
  for path, value in jax.tree_util.tree_flatten_with_path(jax.device_get(quant_stats))[0]:
    *layer, op, stat = (str(getattr(k, "key", k)) for k in path)
    if op != OP_NAME or stat not in gradient.STATISTICS:
      raise ValueError(f"quantizer statistics: {'/'.join([*layer, op, stat])} is not one")
    out[f"{'/'.join(layer)}/{stat}"] = float(value)
    sums.setdefault(stat, []).append(float(value))
  out.update({f"mean/{stat}": sum(v) / len(v) for stat, v in sums.items()})
  return out


def truncate_records(path: str, step: int, redo_eval: str = "") -> None:
  """Keeps the records of metrics.jsonl up to `step` (a partial last line is dropped too);
  with `redo_eval`, not that prefix's records at `step`. Atomic."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
        at = int(record["step"])
      except (ValueError, KeyError, TypeError):
        continue
      redone = redo_eval and at == step and any(k.startswith(f"{redo_eval}/") for k in record)
      if at <= step and not redone:
        kept.append(line if line.endswith("\n") else line + "\n")
  with files.replace(path) as f:
    f.writelines(kept)


class _Records:
  """A file that grows by whole records: a failed append is truncated away and raises
  `files.WriteError` naming the file; after one, nothing more is written to it."""

  def __init__(self, path: str):
    self.path = path
    self.failed = False
    self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

  def append(self, data: bytes) -> None:
    if self.failed:
      return
    size = os.fstat(self._fd).st_size
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(self._fd, view) :]
    except OSError as e:
      self.failed = True
      try:
        os.ftruncate(self._fd, size)  # frees what was written of the record
        cut = ""
      except OSError:
        cut = " (its last record may be cut short)"
      raise files.write_failed(self.path, e, cut) from None

  def close(self) -> None:
    os.close(self._fd)


class _EventFile:
  """A TensorBoard events file (TFRecord framing of `Event` protos), written synchronously."""

  def __init__(self, directory: str, purge_step: int | None):
    os.makedirs(directory, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
    self._records = _Records(os.path.join(directory, name))
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if purge_step is not None:  # TensorBoard hides the earlier events at steps >= it
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self._write(event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=start))

  def _write(self, event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._records.append(
      header
      + struct.pack("<I", masked_crc32c(header))
      + data
      + struct.pack("<I", masked_crc32c(data))
    )

  def scalars(self, step: int, values: dict[str, float]) -> None:
    summary = summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
    )
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """Writes `metrics.jsonl` and TensorBoard events in the workdir (process 0 only) and shows
  progress: a redrawn bar with ETA on a terminal, one line per log otherwise."""

  def __init__(
    self,
    workdir: str,
    total_steps: int,
    *,
    enabled: bool = True,
    stream=None,
    resume_step: int | None = None,
    redo_eval: str = "",
  ):
    """Args:
    resume_step: the step a resumed run continues from: records after it (left by the run
      that was stopped) are dropped from metrics.jsonl, and TensorBoard is told to drop its
      events after it (a purge step). None starts the record afresh.
    redo_eval: also drop this prefix's records at `resume_step` (the final evaluation,
      which the resumed run does again).
    """
    self.enabled, self.total_steps = enabled, total_steps
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self._start = time.perf_counter()
    self._start_step: int | None = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path, tb_dir = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "tensorboard")
      if resume_step is None:
        shutil.rmtree(tb_dir, ignore_errors=True)  # the events of a start that saved nothing
      truncate_records(path, -1 if resume_step is None else resume_step, redo_eval)
      self._jsonl = _Records(path)
      self._tb = _EventFile(tb_dir, None if resume_step is None else resume_step + 1)

  def write(
    self, step: int, values: dict[str, float], *, prefix: str = "train", show: bool = True
  ) -> None:
    """Records `values` at `step` (the number of steps done); `show` prints them too.

    Raises `files.WriteError` if a file cannot take the record (nothing of it is kept)."""
    if not self.enabled:
      return
    record = {
      "step": step,
      "time": round(time.time(), 3),
      **{f"{prefix}/{k}": v for k, v in values.items()},
    }
    self._jsonl.append((json.dumps(record) + "\n").encode())
    self._tb.scalars(step, {f"{prefix}/{k}": v for k, v in values.items()})
    if not show:
      return
    if prefix == "train":
      self._progress(step, values)
    else:
      self.message(f"step {step}: " + "  ".join(f"{prefix}/{k} {v:.4g}" for k, v in values.items()))

  def _progress(self, step: int, values: dict[str, float]) -> None:
    if self._start_step is None:
      self._start_step, self._start = step, time.perf_counter()
      eta = "?"
    else:
      rate = (step - self._start_step) / max(time.perf_counter() - self._start, 1e-9)
      eta = _format_duration((self.total_steps - step) / rate) if rate > 0 else "?"
    done = step / max(self.total_steps, 1)
    bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
    line = (
      f"[{bar}] {step}/{self.total_steps} loss {values.get('loss', float('nan')):.4f} "
      + (f"acc {values['accuracy']:.3f} " if "accuracy" in values else "")
      + f"{values.get('images_per_s', 0):.0f} img/s ETA {eta}"
    )
    if self.tty:
      self.stream.write("\r" + line + "\x1b[K")
      if step >= self.total_steps:
        self.stream.write("\n")
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line of text, on its own line even while the bar is drawn."""
    if self.enabled:
      self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


class TrainLog:
  """The training steps' metrics between two logs: kept on the device as the steps return
  them, checked for a non-finite loss before any checkpoint, and written as their means.

  Args:
    writer: where the means go.
    learning_rate: the schedule, logged with them.
    batch_size, steps_per_epoch: for images/s and the epoch.
    start: the step the run starts from.
  """

  def __init__(
    self, writer: MetricWriter, learning_rate, batch_size: int, steps_per_epoch: int, start: int
  ):
    self.writer, self.learning_rate = writer, learning_rate
    self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
    self._pending: list[tuple[int, dict]] = []
    self._stats = None  # the quantizer's statistics of the last step, on the device
    self._last = (start, time.perf_counter())

  def add(self, step: int, metrics: dict) -> None:
    """The device metrics of the step that made `step` steps done; the quantizer's
    statistics among them (`quant`) are kept of the last step only."""
    metrics = dict(metrics)
    self._stats = metrics.pop("quant", None)
    self._pending.append((step, metrics))

  def check_finite(self, last_checkpoint: int | None, directory: str) -> list[dict]:
    """The pending metrics on the host; raises `NonFiniteLossError` at the first step whose
    loss (or parameters) are not finite, naming the checkpoint that is kept."""
    fetched = jax.device_get([m for _, m in self._pending])
    for (step, _), m in zip(self._pending, fetched):
      if not np.isfinite(m["loss"]) or not m["finite"]:
        what = (
          f"the loss is {float(m['loss'])}"
          if not np.isfinite(m["loss"])
          else "the parameters became non-finite"
        )
        kept = (
          f"The last good checkpoint (step {last_checkpoint}) is kept in {directory}"
          if last_checkpoint is not None
          else "No checkpoint was saved before it"
        )
        raise NonFiniteLossError(
          f"{what} at step {step}: stopping. {kept}; a lower learning rate may help"
        )
    return fetched

  def write(self, step: int, last_checkpoint: int | None, directory: str) -> None:
    """Writes the means of the pending metrics at `step` (after checking them), and the
    quantizer's statistics of the last step when it had quantized layers."""
    if not self._pending or step == self._last[0]:
      return
    fetched = self.check_finite(last_checkpoint, directory)
    values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
    steps_done = step - self._last[0]
    elapsed = time.perf_counter() - self._last[1]
    values["learning_rate"] = float(self.learning_rate(step - 1))
    values["step_time_s"] = elapsed / steps_done
    values["images_per_s"] = self.batch_size * steps_done / elapsed
    values["epoch"] = step / self.steps_per_epoch
    self.writer.write(step, values)
    if self._stats:
      self.writer.write(step, quantizer_statistics(self._stats), prefix="quant", show=False)
    self._pending, self._last = [], (step, time.perf_counter())
