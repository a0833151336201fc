"""How train.py joins a multi-process run: flags first, then the DAQ_JAX_* variables, all three
or none, and every bad value a one-line error naming the flag or variable. (The processes
themselves run in test_multiprocess.py.)"""

import json
import socket

import numpy as np
import pytest

from daq_jax.training import launch, parallel, stops
from daq_jax.training.launch import Launch

ADDRESS = "127.0.0.1:29500"


def test_one_process_without_flags_or_variables():
  assert launch.from_args(environ={}) is None
  assert launch.from_args(environ={"DAQ_JAX_DISTRIBUTED": "0"}) is None


def test_the_flags_name_the_run():
  got = launch.from_args(ADDRESS, 2, 1, environ={})
  assert got == Launch(ADDRESS, 2, 1)
  assert got.describe() == f"the run at {ADDRESS} as process 1 of 2"


def test_the_variables_name_it_and_a_flag_wins_over_its_variable():
  environ = {
    "DAQ_JAX_COORDINATOR_ADDRESS": ADDRESS,
    "DAQ_JAX_NUM_PROCESSES": "4",
    "DAQ_JAX_PROCESS_ID": "3",
    "DAQ_JAX_INIT_TIMEOUT": "20",
    "DAQ_JAX_HEARTBEAT_TIMEOUT": "10",
  }
  assert launch.from_args(environ=environ) == Launch(ADDRESS, 4, 3, 20, 10)
  assert launch.from_args(process_id=0, environ=environ).process_id == 0


def test_jax_finds_the_run_under_a_scheduler():
  got = launch.from_args(environ={"DAQ_JAX_DISTRIBUTED": "1"})
  assert got == Launch() and got.coordinator_address is None


@pytest.mark.parametrize(
  "args, environ, message",
  [
    (
      (ADDRESS, None, None),
      {},
      r"--coordinator_address=127.0.0.1:29500 given without "
      r"--num_processes \(DAQ_JAX_NUM_PROCESSES\) and --process_id",
    ),
    ((None, 2, None), {"DAQ_JAX_PROCESS_ID": "0"}, r"given without --coordinator_address"),
    ((ADDRESS, 2, 2), {}, r"--process_id=2 is not below --num_processes=2"),
    ((ADDRESS, 0, 0), {}, r"--num_processes=0 must be at least 1"),
    (
      (ADDRESS, None, 0),
      {"DAQ_JAX_NUM_PROCESSES": "two"},
      r"DAQ_JAX_NUM_PROCESSES='two' is "
      "not an integer",
    ),
    (
      (None, None, None),
      {"DAQ_JAX_DISTRIBUTED": "1", "DAQ_JAX_HEARTBEAT_TIMEOUT": "0"},
      r"DAQ_JAX_HEARTBEAT_TIMEOUT=0 must be at least 1",
    ),
  ],
)
def test_bad_launches_are_one_line_errors(args, environ, message):
  with pytest.raises(ValueError, match=message):
    launch.from_args(*args, environ=environ)


def test_a_coordinator_that_accepts_connections_is_waited_for_and_one_that_does_not_named():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    launch.wait_for_coordinator(address, timeout=5)
  with pytest.raises(ValueError) as e:  # the socket is closed now: nothing listens there
    launch.wait_for_coordinator(address, timeout=0.2, poll=0.05)
  assert str(e.value).startswith(
    f"cannot reach the coordinator at {address} within 0.2 s (DAQ_JAX_INIT_TIMEOUT): "
  )
  with pytest.raises(ValueError, match="'nowhere' is not host:port"):
    launch.wait_for_coordinator("nowhere", timeout=1)


def test_processes_that_differ_are_named_with_their_keys(monkeypatch):
  configs = [{"seed": 0, "optim": {"lr": 0.1, "m": 0.9}}, {"seed": 0, "optim": {"lr": 0.2}}]
  texts = [json.dumps(c, sort_keys=True) for c in configs]
  monkeypatch.setattr(parallel, "process_texts", lambda text: texts)
  with pytest.raises(ValueError) as e:
    parallel.check_same("config", configs[0])
  assert str(e.value) == (
    "process 1 was started with another config than process 0 (optim.lr: 0.1 on process 0, "
    "0.2 on process 1; optim.m: 0.9 on process 0, None on process 1): start every process "
    "with the same command"
  )
  monkeypatch.setattr(parallel, "process_texts", lambda text: [texts[0]] * 3)
  parallel.check_same("config", configs[0])  # the same on every process: no error


def test_the_agreed_stop_is_read_from_the_step_before_the_one_in_flight():
  agreed = stops.AgreedStop(stops.StopSignals())
  agreed.across = True  # as with several processes; the steps' maxima are given here
  seen = []
  for maximum in (0, 0, 15, 0, 0):
    seen.append(agreed.requested)
    assert agreed.observe({"loss": 1.0, "stop": np.int32(maximum)}) == {"loss": 1.0}
  assert seen == [False, False, False, False, True]  # the 15 of step 3, read before step 5
  assert (agreed.signum, agreed.name) == (15, "SIGTERM")
