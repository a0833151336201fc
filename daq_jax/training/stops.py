"""Graceful stops: SIGTERM (a scheduler) and SIGINT (Ctrl-C) end a run at a step boundary.

While a run is in progress, the first signal only sets a flag; the loop sees it after the step,
saves a checkpoint and raises `Stopped`, which `train.py` turns into one line and the
conventional exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT). Further signals
during the save are acknowledged and ignored, so the save always completes; `kill -9` still
ends the process at once, and then Orbax's atomic rename leaves the previous checkpoint intact.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The run stopped on a signal after saving; `exit_status` is 128 + the signal number."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum
    self.exit_status = 128 + signum


class StopSignals:
  """A context in which SIGTERM and SIGINT request a stop instead of killing the process.

  Only the main thread can own signal handlers; elsewhere (a run in a worker thread) the
  context does nothing and Ctrl-C raises KeyboardInterrupt as usual.
  """

  def __init__(self, stream=None):
    self.signum: int | None = None
    self._stream = stream or sys.stderr
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""

  def _handle(self, signum, frame) -> None:
    if self.signum is None:
      self.signum = signum
      note = "stopping after this step and saving a checkpoint"
    else:
      note = f"already stopping on {self.name}: waiting for the checkpoint to be written"
    self._stream.write(f"\n{signal.Signals(signum).name} received: {note}\n")
    self._stream.flush()

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
