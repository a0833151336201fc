"""Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=4 (test_cli.py does):
the tiny DAQ run on 1 device and with the batch sharded over 4 (in memory="int8" mode: the
mode changes no number), from the same seed; prints
the largest relative differences of parameters, BN statistics and quantization state, the
two eval scores and the error for a batch that does not split over the devices, as JSON."""

import json
import sys
import tempfile

import jax
import numpy as np

from daq_jax.training import train_and_evaluate
from tests.training.common import tiny
from tests.training.test_trainer import _restore


def _max_rel_diff(a, b) -> float:
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    worst = max(worst, float(np.max(np.abs(x - y) / (np.abs(y) + 1e-6), initial=0.0)))
  return worst


def main():
  assert jax.device_count() == 4, jax.devices()
  states, summaries = [], []
  for devices in (1, 4):
    workdir = tempfile.mkdtemp()
    cfg = tiny(num_devices=devices, num_steps=4, **({"memory": "int8"} if devices == 4 else {}))
    summaries.append(train_and_evaluate(cfg, workdir))
    states.append(_restore(workdir, cfg))
  try:
    train_and_evaluate(tiny(num_devices=4, batch_size=6), tempfile.mkdtemp())
    error = ""
  except ValueError as e:
    error = str(e)
  one, four = states
  result = {
    "params": _max_rel_diff(four.params, one.params),
    "batch_stats": _max_rel_diff(four.batch_stats, one.batch_stats),
    "quant_state": _max_rel_diff(four.quant_state, one.quant_state),
    "top1": [s["eval_top1"] for s in summaries],
    "error": error,
  }
  print(json.dumps(result))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
