"""Graceful stops: SIGTERM (a scheduler) and SIGINT (Ctrl-C) end a run at a step boundary.

While a run is in progress, the first signal only sets a flag; the loop sees it after the step,
saves a checkpoint and raises `Stopped`, which `train.py` turns into one line and the
conventional exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT). Further signals
during the save are acknowledged and ignored, so the save always completes; `kill -9` still
ends the process at once, and then Orbax's atomic rename leaves the previous checkpoint intact.

In a run of several processes a signal reaches each at its own moment (or only one of them),
but the checkpoint a stop saves is written by all of them together: `AgreedStop` makes them
stop after the same step, each with the status of the signal.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading

import jax
import numpy as np

from daq_jax.training import parallel

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


class AgreedStop:
  """Whether to stop now, the same answer on every process of the run.

  Each step carries this process's signal number, 0 for none, as a "stop" entry of its batch
  (`attach`: one value per local device), and returns the largest over all the processes
  among its outputs (`observe` takes it out). `requested` answers from the steps before the
  one in flight, so it never waits for the step that runs: a stop comes one or two steps
  after the signal. Every process asks after the same steps and reads the same maxima, so
  they all stop after the same step. With one process it is the signal itself.
  """

  def __init__(self, signals: StopSignals, mesh=None):
    self.signals = signals
    self.across = mesh is not None and jax.process_count() > 1
    self._mesh = mesh
    self._maxima: collections.deque = collections.deque()
    self._agreed: int | None = None

  @property
  def signum(self) -> int | None:
    return self._agreed if self.across else self.signals.signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""

  def attach(self, batch: dict) -> dict:
    """`batch` (global arrays) with this process's stop entry, across processes."""
    if not self.across:
      return batch
    local = len(self._mesh.local_devices)
    flags = np.full((local,), self.signals.signum or 0, np.int32)
    sharding = parallel.batch_sharded(self._mesh)
    return {**batch, "stop": jax.make_array_from_process_local_data(sharding, flags)}

  def observe(self, outputs: dict) -> dict:
    """A step's outputs without their "stop" entry, which is kept for `requested`."""
    if not self.across or "stop" not in outputs:
      return outputs
    outputs = dict(outputs)
    self._maxima.append(outputs.pop("stop"))
    return outputs

  @property
  def requested(self) -> bool:
    if not self.across:
      return self.signals.requested
    while self._agreed is None and len(self._maxima) > 1:  # the newest may still run
      self._agreed = int(self._maxima.popleft()) or None
    return self._agreed is not None
