"""What the quantizer statistics logged during training cost: the ResNet-20 DAQ training step
(batch 128) with the statistics (the `quant_stats` collection fed to the step) and without
them (no collection, so the ops compute none), timed alternately in one run, plus the host side
of logging them (fetch, summarise, write), paid once every `log_every_steps`.

    python -m benchmarks.quant_stats_cost            # about 4 minutes on 2 CPU cores

Writes benchmarks/results/quant_stats_cost_<backend>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from unittest import mock

import jax
import numpy as np

from benchmarks.common import environment, write_json
from benchmarks.train_step import time_step
from daq_jax.data.info import DatasetInfo
from daq_jax.training import modeling, optim, steps
from daq_jax.training.config import from_dict
from daq_jax.training.metrics import MetricWriter, quantizer_statistics


def host_logging_ms(model: str, repeats: int) -> float:
  """Fetching the statistics of every layer, summarising and writing them, once."""
  cfg = from_dict({"model": {"name": model}, "quant": {"method": "daq"}})
  info = DatasetInfo(tuple(map(str, range(10))), (32, 32, 3), (0.5,) * 3, (0.25,) * 3, "cifar")
  model_def = modeling.create_model(cfg, 10, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 390, 64_000)
  state = steps.init_train_state(model_def, tx, info, 0)
  zeros = steps.statistics_input(state.quant_state)
  with tempfile.TemporaryDirectory() as workdir:
    writer = MetricWriter(workdir, 100, stream=open("/dev/null", "w"))  # noqa: SIM115
    times = []
    for step in range(repeats):
      start = time.perf_counter()
      stats = quantizer_statistics(zeros)
      writer.write(step, stats, prefix="quant", show=False)
      times.append((time.perf_counter() - start) * 1e3)
    writer.close()
  return float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--log_every_steps", type=int, default=50)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  with_stats, without = [], []
  for _ in range(args.rounds):  # alternated, so that drifts in machine load hit both
    with_stats.append(time_step("daq", "float32", args.model, args.batch, args.repeats))
    with mock.patch.object(steps, "statistics_input", lambda quant_state: {}):
      without.append(time_step("daq", "float32", args.model, args.batch, args.repeats))
    print(f"with {with_stats[-1]:.1f} ms, without {without[-1]:.1f} ms", flush=True)
  step_with, step_without = float(np.median(with_stats)), float(np.median(without))
  host = host_logging_ms(args.model, 20)
  per_step = (step_with + host / args.log_every_steps) / step_without - 1
  print(
    f"\n{args.model} DAQ step, batch {args.batch}, {jax.default_backend()}: with statistics "
    f"{step_with:.1f} ms, without {step_without:.1f} ms (x{step_with / step_without:.4f}); "
    f"logging them {host:.2f} ms every {args.log_every_steps} steps; total cost "
    f"{100 * per_step:+.2f}% a step"
  )
  payload = {
    **environment("benchmarks.quant_stats_cost"),
    "model": args.model,
    "batch": args.batch,
    "step_ms_with_stats": with_stats,
    "step_ms_without_stats": without,
    "median_with": step_with,
    "median_without": step_without,
    "host_logging_ms": host,
    "log_every_steps": args.log_every_steps,
    "cost_per_step": per_step,
  }
  out = args.out or f"benchmarks/results/quant_stats_cost_{jax.default_backend()}.json"
  print("wrote", write_json(out, payload))


if __name__ == "__main__":
  main()
