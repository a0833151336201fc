"""Joining a multi-process run: `jax.distributed.initialize` with the coordinator, the process
count and the process id given to `train.py` (`--coordinator_address`, `--num_processes`,
`--process_id`, or the variables `DAQ_JAX_COORDINATOR_ADDRESS`, `DAQ_JAX_NUM_PROCESSES`,
`DAQ_JAX_PROCESS_ID`), or found by JAX itself (`DAQ_JAX_DISTRIBUTED=1`: SLURM, Open MPI, or
JAX_COORDINATOR_ADDRESS with the cluster's own variables).

On the CPU the collectives between processes are gloo's, set here, so that the same command
runs two processes on a laptop and many on a cluster. Two timeouts are set deliberately:
`DAQ_JAX_INIT_TIMEOUT` (seconds, default 300) bounds the wait for the coordinator and the
other processes at start, and `DAQ_JAX_HEARTBEAT_TIMEOUT` (seconds, default 100) is how long
the coordination service waits for a process that stopped answering (killed, or its host
lost) before it ends the others.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Mapping

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


def join(launch: Launch) -> None:
  """Joins the run (before anything else of JAX runs).

  A process other than 0 first waits (up to the initialization timeout) for the coordinator
  to accept connections, so that one that cannot be reached is a one-line error. Processes
  that do not all come within the timeout still end the run from inside JAX: its coordination
  client aborts the process with its own log (exit status 134).

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
      heartbeat_timeout_seconds=launch.heartbeat_timeout,
    )
  except Exception as e:  # JAX's errors here are long and of several types
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
      f"cannot join {launch.describe()} within {launch.initialization_timeout} s "
      f"({INIT_TIMEOUT_ENV}): {first[:300]}"
    ) from None


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
