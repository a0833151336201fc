"""train.py across processes: two real processes on this machine, each with 2 CPU devices and
a coordinator on a free loopback port (jax.distributed, gloo collectives), train the default
config as one 4-device run.

Strategy: the same few steps as one process on 4 devices, from the same seed; the final
parameters, BN statistics and quantizer state agree, per leaf in relative L2 norm, to what
float reductions in another order give (the int8 sums are exact, but the float sums across
processes may reorder, and a float that moves across a rounding boundary moves an int8
step; how far that goes depends on the CPU's kernels: see RTOL). Each part is compared by
what training changed, final minus initial: relative to the values themselves, a kernel's 4
small steps hide under its initial values, while a zero-initialised leaf (a BN bias) is
nothing but its steps. The evaluation is the same. Process 0 alone writes the run's record
and metrics; both exit 0.

Faults, on a longer run of two processes (the reference, uninterrupted): a second two-process
run started on its workdir while it trains (held still with SIGSTOP) is refused by the lock on
both processes; SIGTERM to both processes saves one checkpoint and exits 143 on both; kill -9 of
process 1 ends process 0 in one line (its collective fails, or the watchdog finds process 1
silent for the heartbeat timeout), kill -9 of process 0 (the coordinator) ends process 1 by
JAX's own abort; after either, the same command resumes and ends bit-identical to the
reference. A process started with another config is refused before
anything is written, and a coordinator that cannot be reached is one line.

The runs that train are in the slow set (`pytest -m slow`, which CI runs too); the two refusals
are not.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.training.test_trainer import _assert_trees_equal, _restore

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Relative L2 per leaf of what 4 steps changed (final - initial). Measured with daq (nearest
# rounding, whose boundaries amplify a reordered float sum): params 1.8e-3 and quantizer clips
# 1.3e-3 on the Xeon of CI, params 3.2e-4 on an AMD EPYC, BN statistics (the forward pass
# only) 5.9e-6 and 6e-8; with daq_sr_wgrad, the default then, on the Xeon: 2.8e-5, 3.3e-7 and
# 1.5e-7. daq_sr_rows, the default since, passes on the AMD EPYC. A process's gradients or
# statistics lost or counted twice would change them by tens of percent.
RTOL = {"params": 1e-2, "batch_stats": 1e-3, "quant_state": 1e-2}
STEPS = ["--config.num_steps=4", "--config.log_every_steps=2", "--config.checkpoint_every_steps=2"]


def _rel_l2(a, b, origin) -> float:
  """The largest per-leaf ||a - b|| / ||b - origin|| over three trees of one structure."""
  worst = 0.0
  for x, y, o in zip(*(jax.tree.leaves(t) for t in (a, b, origin)), strict=True):
    x, y, o = (np.asarray(v, np.float64) for v in (x, y, o))
    worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y - o), 1e-30)))
  return worst


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, heartbeat_timeout: int = 90) -> dict:
  return {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
    "DAQ_JAX_INIT_TIMEOUT": "120",
    # 90: long enough for a run held still by SIGSTOP while another one is refused.
    "DAQ_JAX_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
  }


def _start(workdir, *flags, devices: int, processes: int = 1, extra=None, heartbeat_timeout=90):
  """train.py on the default config as `processes` processes of `devices` devices each;
  `extra[i]`: more flags for process i."""
  port = _free_port()
  command = [sys.executable, "train.py", f"--workdir={workdir}", *flags]
  if processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
  return [
    subprocess.Popen(
      command + ([f"--process_id={i}"] if processes > 1 else []) + list((extra or {}).get(i, ())),
      cwd=ROOT,
      env=_env(devices, heartbeat_timeout),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]


def _wait(procs, timeout: float = 900) -> list[subprocess.CompletedProcess]:
  done = []
  for proc in procs:
    out, err = proc.communicate(timeout=timeout)
    done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  return done


def _train(workdir, *flags, devices: int, processes: int = 1) -> list[subprocess.CompletedProcess]:
  return _wait(_start(workdir, *STEPS, *flags, devices=devices, processes=processes))


def _when(condition, procs, timeout: float = 600):
  """Waits until `condition()` (a file the run writes) while the run's processes live."""
  deadline = time.monotonic() + timeout
  while not condition():
    ended = [proc for proc in procs if proc.poll() is not None]
    if ended:
      for proc in procs:
        proc.kill()
      out = _wait(procs)
      raise AssertionError(
        f"the run ended first: exit {[p.returncode for p in out]}: {out[0].stderr[-3000:]}"
        f" {out[-1].stderr[-3000:]}"
      )
    assert time.monotonic() < deadline, "the run did not get there"
    time.sleep(0.05)


def _errors(stderr: str) -> list[str]:
  """The lines of stderr that say "error"."""
  return [line for line in stderr.splitlines() if "error" in line.lower()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multiprocess")
  single = _train(base / "one", devices=4)
  multi = _train(base / "two", devices=2, processes=2)
  return base, single, multi


@pytest.mark.slow
def test_two_processes_train_as_one_run_on_four_devices(runs):
  base, (single,), multi = runs
  for proc in (single, *multi):
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert "on 4 cpu device(s)" in single.stderr and "on 4 cpu device(s)" in multi[0].stderr
  cfg = json.loads((base / "one" / "config.json").read_text())
  assert json.loads((base / "two" / "config.json").read_text()) == cfg
  one, two = _restore(str(base / "one"), cfg), _restore(str(base / "two"), cfg)
  assert int(one.step) == int(two.step) == 4
  initial = _restore(str(base / "one"), cfg, fresh=True)
  for part, rtol in RTOL.items():
    a, b, origin = (getattr(state, part) for state in (two, one, initial))
    assert _rel_l2(a, b, origin) <= rtol, part
  summaries = [json.loads((base / run / "summary.json").read_text()) for run in ("one", "two")]
  assert summaries[0]["eval_top1"] == pytest.approx(summaries[1]["eval_top1"], abs=1 / 360)


@pytest.mark.slow
def test_process_zero_alone_writes_the_record_and_the_metrics(runs):
  base, _, (first, second) = runs
  records = [json.loads(line) for line in (base / "two" / "metrics.jsonl").read_text().splitlines()]
  kinds = [(r["step"], tuple(sorted(r))) for r in records]
  assert len(kinds) == len(set(kinds)), kinds  # each record once: one writer
  assert {"train/loss", "quant/mean/inverted_t", "test/top1"} <= {k for r in records for k in r}
  assert "final:" in first.stderr + first.stdout
  assert "final:" not in second.stderr + second.stdout  # no second progress or summary


LONG = ["--config.num_steps=24", "--config.log_every_steps=2", "--config.checkpoint_every_steps=8"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted two-process run of 24 steps; while it trains (held still by SIGSTOP
  after its first checkpoint), a second two-process run is started on its workdir."""
  workdir = tmp_path_factory.mktemp("reference")
  procs = _start(workdir, *LONG, devices=2, processes=2)
  _when(lambda: (workdir / "checkpoints" / "8").is_dir(), procs)
  for proc in procs:
    proc.send_signal(signal.SIGSTOP)
  try:
    second = _wait(_start(workdir, *LONG, devices=2, processes=2), timeout=300)
  finally:
    for proc in procs:
      proc.send_signal(signal.SIGCONT)
  return workdir, procs[0].pid, _wait(procs), second


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_on_every_process(reference):
  workdir, pid, first, second = reference
  assert [p.returncode for p in first] == [0, 0], first[0].stderr[-3000:]
  for proc in second:
    assert proc.returncode == 1
    (line,) = _errors(proc.stderr)
    assert line.startswith(f"error: workdir {workdir} is in use by pid {pid} on "), line
    assert line.endswith("wait for that run to end, or use another --workdir"), line


def _final_state(workdir):
  cfg = json.loads((workdir / "config.json").read_text())
  return _restore(str(workdir), cfg)


@pytest.mark.slow
def test_sigterm_to_every_process_saves_one_checkpoint_then_resumes_bit_identically(
  reference, tmp_path
):
  workdir = tmp_path / "run"
  procs = _start(workdir, *LONG, devices=2, processes=2)
  _when(lambda: (workdir / "checkpoints" / "8").is_dir(), procs)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  stopped = _wait(procs)
  assert [p.returncode for p in stopped] == [143, 143], stopped[0].stderr[-3000:]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert len(saved) == 2 and saved[0] == 8 and 8 < saved[1] < 24, saved
  assert f"stopped by SIGTERM at step {saved[1]}: checkpoint" in stopped[0].stderr
  resumed = _wait(_start(workdir, *LONG, devices=2, processes=2))
  assert [p.returncode for p in resumed] == [0, 0], resumed[0].stderr[-3000:]
  assert f"resumed from {workdir}/checkpoints/{saved[1]}" in resumed[0].stderr
  _assert_trees_equal(_final_state(workdir), _final_state(reference[0]))


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_kill_9_of_one_process_ends_the_other_then_resumes_bit_identically(
  reference, tmp_path, victim
):
  workdir = tmp_path / "run"
  procs = _start(workdir, *LONG, devices=2, processes=2, heartbeat_timeout=20)
  metrics = workdir / "metrics.jsonl"
  _when(lambda: metrics.exists() and '"step": 10,' in metrics.read_text(), procs)
  procs[victim].kill()
  (survivor,) = _wait([procs[1 - victim]], timeout=600)  # the timeout only ends a hang
  _wait([procs[victim]])
  if victim == 1:
    # Its pending collective fails (measured: 0.3 s after the kill), or the watchdog finds
    # process 1 silent for the heartbeat timeout (20 s here): one line either way.
    assert survivor.returncode == 1, survivor.stderr[-3000:]
    (line,) = _errors(survivor.stderr)
    assert line.startswith("error: process 0 of 2 lost the run: "), line
    assert ("a collective with the other processes failed" in line) or (
      "process 1 sent no heartbeat for 20 s (DAQ_JAX_HEARTBEAT_TIMEOUT)" in line
    ), line
    assert line.endswith(f"resume from the newest checkpoint in {workdir}/checkpoints")
  else:
    # Process 0 hosts JAX's coordination service. Either the survivor's pending collective
    # fails first and it ends with our line (exit 1; seen in CI, sometimes after the start of
    # JAX's log), or its client loses the service first and JAX aborts it with its own log
    # (SIGABRT), which Python cannot intercept (measured: 0.5 s after the kill). Not always
    # one line, but never a hang.
    assert survivor.returncode in (1, -signal.SIGABRT), survivor.stderr[-3000:]
    if survivor.returncode == 1:
      ours = [line for line in survivor.stderr.splitlines() if line.startswith("error: ")]
      assert len(ours) == 1 and ours[0].startswith("error: process 1 of 2 lost the run: "), ours
    else:
      assert "Terminating process because the JAX distributed service" in survivor.stderr
  resumed = _wait(_start(workdir, *LONG, devices=2, processes=2))
  assert [p.returncode for p in resumed] == [0, 0], resumed[0].stderr[-3000:]
  assert "resumed from" in resumed[0].stderr
  _assert_trees_equal(_final_state(workdir), _final_state(reference[0]))


def test_a_process_with_another_config_is_refused_before_anything_is_written(tmp_path):
  extra = {1: ["--config.optim.base_learning_rate=0.2"]}
  procs = _wait(_start(tmp_path / "run", *STEPS, devices=2, processes=2, extra=extra))
  want = (
    "error: process 1 was started with another config than process 0 "
    "(optim.base_learning_rate: 0.1 on process 0, 0.2 on process 1): start every process "
    "with the same command"
  )
  for proc in procs:
    assert proc.returncode == 1 and _errors(proc.stderr) == [want], proc.stderr[-3000:]
  assert list((tmp_path / "run").iterdir()) == []


def test_a_coordinator_that_cannot_be_reached_is_one_line_within_the_timeout(tmp_path):
  port = _free_port()  # nothing listens there
  flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1"]
  env = {**_env(1), "DAQ_JAX_INIT_TIMEOUT": "2"}
  command = [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", *flags]
  proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert _errors(proc.stderr) == [
    f"error: cannot reach the coordinator at 127.0.0.1:{port} within 2 s "
    "(DAQ_JAX_INIT_TIMEOUT): Connection refused; is process 0 started, and is its port open "
    "to this host?"
  ]
  assert not (tmp_path / "run").exists()
