"""Joining a multi-process run: `jax.distributed.initialize` with the coordinator, the process
count and the process id given to `train.py` (`--coordinator_address`, `--num_processes`,
`--process_id`, or the variables `DAQ_JAX_COORDINATOR_ADDRESS`, `DAQ_JAX_NUM_PROCESSES`,
`DAQ_JAX_PROCESS_ID`), or found by JAX itself (`DAQ_JAX_DISTRIBUTED=1`: SLURM, Open MPI, or
JAX_COORDINATOR_ADDRESS with the cluster's own variables).

On the CPU the collectives between processes are gloo's, set here, so that the same command
runs two processes on a laptop and many on a cluster. Two timeouts are set deliberately:
`DAQ_JAX_INIT_TIMEOUT` (seconds, default 300) bounds the wait for the coordinator and the
other processes at start, and `DAQ_JAX_HEARTBEAT_TIMEOUT` (seconds, default 100) is how long
a process waits for another that stopped answering (killed, or its host lost) before it ends
itself in one line.

That wait is ours, a `Watchdog` thread per process: each writes a heartbeat counter into the
coordination service's key-value store every second and reads the others'. JAX's own
heartbeat is set to twice the timeout, as the backstop: when it fires, its client aborts the
process with pages of log (exit 134), and jaxlib 0.10 cannot hand that to Python (its
`missed_heartbeat_callback` ends in std::bad_cast, measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

import jax

ENV = {
  "coordinator_address": "DAQ_JAX_COORDINATOR_ADDRESS",
  "num_processes": "DAQ_JAX_NUM_PROCESSES",
  "process_id": "DAQ_JAX_PROCESS_ID",
}
INIT_TIMEOUT_ENV = "DAQ_JAX_INIT_TIMEOUT"
HEARTBEAT_TIMEOUT_ENV = "DAQ_JAX_HEARTBEAT_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins the run; all three of the first fields, or none (JAX finds them).

  Attributes:
    coordinator_address: "host:port" of process 0's coordination service.
    num_processes: how many processes the run has.
    process_id: this process's index, 0 to num_processes - 1.
    initialization_timeout: seconds to wait for the coordinator and every process at start.
    heartbeat_timeout: seconds after which a silent process is taken for dead.
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  initialization_timeout: int = 300
  heartbeat_timeout: int = 100

  def describe(self) -> str:
    if self.coordinator_address is None:
      return "the run JAX detects (SLURM, Open MPI or JAX_COORDINATOR_ADDRESS)"
    return (
      f"the run at {self.coordinator_address} as process {self.process_id} of {self.num_processes}"
    )


def _int(name: str, text: str, low: int) -> int:
  try:
    value = int(text)
  except ValueError:
    raise ValueError(f"{name}={text!r} is not an integer") from None
  if value < low:
    raise ValueError(f"{name}={value} must be at least {low}")
  return value


def from_args(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  environ: Mapping[str, str] = os.environ,
) -> Launch | None:
  """The launch the flags (else the DAQ_JAX_* variables) ask for; None for a single process.

  Raises:
    ValueError: one line naming the flag or variable: a value that is not an integer, a
      process id out of range, or some of the three given without the others.
  """
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  values = {}
  for key, value in given.items():
    if value is None and environ.get(ENV[key], "") != "":
      values[key] = (environ[ENV[key]], ENV[key])
    elif value is not None:
      values[key] = (str(value), f"--{key}")
  timeouts = {
    "initialization_timeout": _int(INIT_TIMEOUT_ENV, environ.get(INIT_TIMEOUT_ENV, "300"), 1),
    "heartbeat_timeout": _int(HEARTBEAT_TIMEOUT_ENV, environ.get(HEARTBEAT_TIMEOUT_ENV, "100"), 1),
  }
  if not values:
    if environ.get("DAQ_JAX_DISTRIBUTED", "") not in ("", "0"):
      return Launch(**timeouts)
    return None
  missing = [f"--{key} ({ENV[key]})" for key in ENV if key not in values]
  if missing:
    named = ", ".join(f"{source}={text}" for text, source in values.values())
    raise ValueError(f"{named} given without {' and '.join(missing)}")
  count = _int(values["num_processes"][1], values["num_processes"][0], 1)
  index = _int(values["process_id"][1], values["process_id"][0], 0)
  if index >= count:
    raise ValueError(
      f"{values['process_id'][1]}={index} is not below {values['num_processes'][1]}={count}"
    )
  return Launch(values["coordinator_address"][0], count, index, **timeouts)


def lost_the_run(reason: str) -> None:
  """The default for `join`'s `lost`: one line naming the process and the reason, exit 1."""
  sys.stderr.write(
    f"error: process {jax.process_index()} of {jax.process_count()} lost the run: {reason}\n"
  )
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(1)


class Watchdog:
  """Each process's heartbeat, and its watch on the others', through the coordination
  service's key-value store (no collective: it runs beside the training's).

  Every `interval` seconds the thread writes this process's counter and reads every
  process's; a process whose counter has not moved for `timeout` seconds, or a coordinator
  that does not answer, makes it call `lost(reason)`, which must not return. A process that
  leaves on purpose (its run ended, or it was refused) first calls `done()`, so that the
  others do not take it for lost while they finish their own last writes.
  """

  PREFIX = "daq_jax/heartbeat/"

  def __init__(
    self,
    client,
    process: int,
    processes: int,
    timeout: float,
    lost: Callable[[str], None],
    interval: float = 1.0,
  ):
    self._client = client
    self._process = process
    self._processes = processes
    self._timeout = timeout
    self._lost = lost
    self._interval = interval
    self._beats = 0
    self._started: float | None = None
    self._seen: dict[int, tuple[str | None, float]] = {}  # process -> (counter, when it moved)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="daq_jax-heartbeat", daemon=True)

  def start(self) -> Watchdog:
    self._thread.start()
    return self

  def done(self) -> None:
    """This process leaves on purpose: the others stop watching it."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    with contextlib.suppress(Exception):  # the coordinator gone: nobody is left to watch
      self._client.key_value_set(f"{self.PREFIX}{self._process}", "done", allow_overwrite=True)

  def _run(self) -> None:
    while not self._stop.wait(self._interval if self._beats else 0):
      reason = self.beat(time.monotonic())
      if reason is not None and not self._stop.is_set():
        self._lost(reason)
        return

  def beat(self, now: float) -> str | None:
    """One round at time `now` (seconds, monotonic): writes this process's counter, reads the
    others'; the reason the run is lost, or None."""
    self._beats += 1
    try:
      self._client.key_value_set(
        f"{self.PREFIX}{self._process}", str(self._beats), allow_overwrite=True
      )
      values = dict(self._client.key_value_dir_get(self.PREFIX))
    except Exception as e:  # JAX's errors are of several types
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      return f"the coordinator (process 0) does not answer ({first})"
    if self._started is None:
      self._started = now
    for other in range(self._processes):
      value = values.get(f"{self.PREFIX}{other}")
      if other == self._process or value == "done":
        continue
      last = self._seen.get(other)
      if last is None or last[0] != value:  # moved (or not yet there: counted from the start)
        self._seen[other] = (value, now if value is not None else self._started)
      elif now - last[1] > self._timeout:
        return (
          f"process {other} sent no heartbeat for {self._timeout:g} s "
          f"({HEARTBEAT_TIMEOUT_ENV}): it ended, or its host was lost"
        )
    return None


def join(launch: Launch, lost: Callable[[str], None] = lost_the_run) -> Watchdog:
  """Joins the run (before anything else of JAX runs) and starts this process's `Watchdog`,
  which it returns: call its `done()` before leaving on purpose.

  A process other than 0 first waits (up to the initialization timeout) for the coordinator
  to accept connections, so that one that cannot be reached is a one-line error. Once the run
  is formed, a process that stops answering for the heartbeat timeout makes the others call
  `lost(reason)` (the default: one line, exit 1). Processes that do not all come within the
  initialization timeout still end from inside JAX, with its own log (exit status 134).

  Raises:
    ValueError: one line: a coordinator that cannot be reached, or an error that
      jax.distributed.initialize raises in Python (a bad address, a second initialization).
  """
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if launch.coordinator_address is not None and launch.process_id != 0:
    wait_for_coordinator(launch.coordinator_address, launch.initialization_timeout)
  try:
    jax.distributed.initialize(
      coordinator_address=launch.coordinator_address,
      num_processes=launch.num_processes,
      process_id=launch.process_id,
      initialization_timeout=launch.initialization_timeout,
      # The backstop behind the watchdog (a watchdog blocked in a call that never returns).
      heartbeat_timeout_seconds=2 * launch.heartbeat_timeout,
    )
  except Exception as e:  # JAX's errors here are long and of several types
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
      f"cannot join {launch.describe()} within {launch.initialization_timeout} s "
      f"({INIT_TIMEOUT_ENV}): {first[:300]}"
    ) from None
  from jax._src import distributed  # the client jax.distributed.initialize made

  return Watchdog(
    distributed.global_state.client,
    jax.process_index(),
    jax.process_count(),
    launch.heartbeat_timeout,
    lost,
  ).start()


def wait_for_coordinator(address: str, timeout: float, poll: float = 0.5) -> None:
  """Returns once `address` ("host:port") accepts a TCP connection; a one-line ValueError
  if it does not within `timeout` seconds."""
  host, _, port = address.rpartition(":")
  try:
    target = (host.strip("[]"), int(port))
  except ValueError:
    raise ValueError(f"coordinator address {address!r} is not host:port") from None
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection(target, timeout=min(poll * 4, timeout)).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ValueError(
          f"cannot reach the coordinator at {address} within {timeout:g} s ({INIT_TIMEOUT_ENV}): "
          f"{e.strerror or e}; is process 0 started, and is its port open to this host?"
        ) from None
    time.sleep(poll)
