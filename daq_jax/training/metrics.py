"""Where metrics go: JSON lines, TensorBoard event files and a progress line on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import jax
from tensorboardX import SummaryWriter


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def quantizer_statistics(quant_state: dict) -> dict[str, float]:
  """The quantizer's statistics of the last step (`gradient.STAT_KEYS`), per quantized layer
  (`<layer path>/inverted_t`, `clip_ratio`, `dgrad_scale`) and averaged over the layers
  (`mean/...`). Only these scalars leave the device, not the per-channel state."""
  out, sums = {}, {}
  stats = {}
  for path, value in jax.tree_util.tree_flatten_with_path(quant_state)[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1].startswith("stat_"):
      stats[tuple(names)] = value
  for names, value in jax.device_get(stats).items():
    stat = names[-1].removeprefix("stat_")
    layer = "/".join(names[:-2])  # without the op's name and the statistic
    out[f"{layer}/{stat}"] = float(value)
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
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


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
      self._jsonl = open(path, "a")  # noqa: SIM115
      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(tb_dir, purge_step=purge)

  def write(
    self, step: int, values: dict[str, float], *, prefix: str = "train", show: bool = True
  ) -> None:
    """Records `values` at `step` (the number of steps done); `show` prints them too."""
    if not self.enabled:
      return
    record = {
      "step": step,
      "time": round(time.time(), 3),
      **{f"{prefix}/{k}": v for k, v in values.items()},
    }
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, step)
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
      f"acc {values.get('accuracy', float('nan')):.3f} "
      f"{values.get('images_per_s', 0):.0f} img/s ETA {eta}"
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
      self._tb.close()  # flushes the events file
