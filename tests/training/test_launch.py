"""How train.py joins a multi-process run: flags first, then the DAQ_JAX_* variables, all three
or none, and every bad value a one-line error naming the flag or variable. (The processes
themselves run in test_multiprocess.py.)"""

import pytest

from daq_jax.training import launch
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
