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


class _Store:
  """The coordination service's key-value store as the watchdog uses it."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service\nmore")
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watchdogs(store, processes=3, timeout=10.0):
  return [launch.Watchdog(store, i, processes, timeout, lost=None) for i in range(processes)]


def test_the_watchdog_names_a_process_whose_heartbeat_stopped_after_the_timeout():
  store = _Store()
  zero, one, two = _watchdogs(store)
  for now in (0.0, 1.0, 2.0):
    assert [w.beat(now) for w in (zero, one, two)] == [None, None, None]
  # Process 2 beats no more. Its last beat (at 2.0, after zero's) is seen by zero at 3.0.
  for now in (3.0, 7.0, 13.0):
    assert zero.beat(now) is None and one.beat(now) is None
  assert zero.beat(13.5) == (
    "process 2 sent no heartbeat for 10 s (DAQ_JAX_HEARTBEAT_TIMEOUT): it ended, or its host "
    "was lost"
  )


def test_the_watchdog_leaves_alone_a_process_that_is_done_and_counts_a_late_one_from_its_start():
  store = _Store()
  zero, one, two = _watchdogs(store)
  zero.beat(100.0), one.beat(100.0)  # process 2 has not come yet: counted from 100
  assert zero.beat(109.0) is None and zero.beat(110.5).startswith("process 2 sent no heartbeat")
  two.beat(110.6)
  two._stop.set()  # as done() does, without a thread
  store.values[f"{launch.Watchdog.PREFIX}2"] = "done"
  assert zero.beat(111.0) is None and one.beat(111.0) is None
  assert zero.beat(500.0) is None  # one still beats; two is done


def test_the_watchdog_names_a_coordinator_that_does_not_answer():
  store = _Store()
  (one,) = [w for w in _watchdogs(store, processes=2) if w._process == 1]
  assert one.beat(0.0) is None
  store.down = True
  assert one.beat(1.0) == (
    "the coordinator (process 0) does not answer (UNAVAILABLE: Failed to send RPC to "
    "coordination service)"
  )


def test_the_watchdog_thread_calls_lost_once_and_done_stops_it():
  store, reasons = _Store(), []
  lost = launch.Watchdog(store, 0, 2, timeout=0.0, lost=reasons.append, interval=0.01)
  store.values[f"{launch.Watchdog.PREFIX}1"] = "7"  # process 1 beat once, then never again
  lost.start()._thread.join(timeout=60)
  assert reasons == [
    "process 1 sent no heartbeat for 0 s (DAQ_JAX_HEARTBEAT_TIMEOUT): it "
    "ended, or its host was lost"
  ]
  calm = launch.Watchdog(store, 1, 2, timeout=1e9, lost=reasons.append, interval=0.01).start()
  calm.done()
  assert store.values[f"{launch.Watchdog.PREFIX}1"] == "done" and len(reasons) == 1
