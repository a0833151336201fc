"""train.py across processes: two real processes on this machine, each with 2 CPU devices and
a coordinator on a free loopback port (jax.distributed, gloo collectives), train the default
config as one 4-device run.

Strategy: the same few steps as one process on 4 devices, from the same seed; the final
parameters, BN statistics and quantizer state agree to float32 rounding, per leaf in relative
L2 norm (the int8 sums are exact, float reductions across processes may reorder; measured:
params 3.2e-4, the largest absolute difference 4.8e-7, BN statistics 6e-8, quantizer state
1e-6), and the evaluation is the same. Process 0 alone writes the run's record and metrics;
both exit 0.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.training.test_trainer import _restore

ROOT = pathlib.Path(__file__).resolve().parents[2]
RTOL = {"params": 1e-3, "batch_stats": 1e-5, "quant_state": 1e-5}  # relative L2, per leaf
STEPS = ["--config.num_steps=4", "--config.log_every_steps=2", "--config.checkpoint_every_steps=2"]


def _rel_l2(a, b) -> float:
  """The largest per-leaf ||a - b|| / ||b|| over two trees."""
  return max(
    float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / max(np.linalg.norm(np.asarray(y)), 1e-30))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
    "DAQ_JAX_INIT_TIMEOUT": "120",
  }


def _train(workdir, *flags, devices: int, processes: int = 1) -> list[subprocess.CompletedProcess]:
  """train.py on the default config, as `processes` processes of `devices` devices each."""
  port = _free_port()
  command = [sys.executable, "train.py", f"--workdir={workdir}", *STEPS, *flags]
  if processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
  procs = [
    subprocess.Popen(
      command + ([f"--process_id={i}"] if processes > 1 else []),
      cwd=ROOT,
      env=_env(devices),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]
  done = []
  for proc in procs:
    out, err = proc.communicate(timeout=900)
    done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multiprocess")
  single = _train(base / "one", devices=4)
  multi = _train(base / "two", devices=2, processes=2)
  return base, single, multi


def test_two_processes_train_as_one_run_on_four_devices(runs):
  base, (single,), multi = runs
  for proc in (single, *multi):
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert "on 4 cpu device(s)" in single.stderr and "on 4 cpu device(s)" in multi[0].stderr
  cfg = json.loads((base / "one" / "config.json").read_text())
  assert json.loads((base / "two" / "config.json").read_text()) == cfg
  one, two = _restore(str(base / "one"), cfg), _restore(str(base / "two"), cfg)
  assert int(one.step) == int(two.step) == 4
  for part, rtol in RTOL.items():
    assert _rel_l2(getattr(two, part), getattr(one, part)) <= rtol, part
  summaries = [json.loads((base / run / "summary.json").read_text()) for run in ("one", "two")]
  assert summaries[0]["eval_top1"] == pytest.approx(summaries[1]["eval_top1"], abs=1 / 360)


def test_process_zero_alone_writes_the_record_and_the_metrics(runs):
  base, _, (first, second) = runs
  records = [json.loads(line) for line in (base / "two" / "metrics.jsonl").read_text().splitlines()]
  kinds = [(r["step"], tuple(sorted(r))) for r in records]
  assert len(kinds) == len(set(kinds)), kinds  # each record once: one writer
  assert {"train/loss", "quant/mean/inverted_t", "test/top1"} <= {k for r in records for k in r}
  assert "final:" in first.stderr + first.stdout
  assert "final:" not in second.stderr + second.stdout  # no second progress or summary
