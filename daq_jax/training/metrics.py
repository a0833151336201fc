"""Where metrics go: JSON lines, TensorBoard event files and a progress line on a terminal."""

from __future__ import annotations

import json
import os
import sys
import time

from tensorboardX import SummaryWriter


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class MetricWriter:
  """Writes `metrics.jsonl` and TensorBoard events in the workdir (process 0 only) and shows
  progress: a redrawn bar with ETA on a terminal, one line per log otherwise."""

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True, stream=None):
    self.enabled, self.total_steps = enabled, total_steps
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self._start = time.perf_counter()
    self._start_step: int | None = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: dict[str, float], *, prefix: str = "train") -> None:
    """Records `values` at `step` (the number of steps done)."""
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
