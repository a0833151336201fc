"""The training step of the default detector (configs/detection_default.py: retinanet_small on
the embedded shapes, batch 32, the real loss with its anchor assignment) in float32 and in each
INT8 method, side by side in one run, in interleaved rounds.

    python -m benchmarks.detection_step               # about 4 minutes on 2 CPU cores
    python -m benchmarks.detection_step --methods daq --rounds 1 --repeats 2 --out /tmp/d.json
    python -m benchmarks.detection_step --methods daq_sr_rows --per-level   # canvas or not

Prints the median step time of each method and its ratio to float32; writes
benchmarks/results/detection_step_<backend>.json with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import jax

from benchmarks.common import environment, write_json
from daq_jax import data as data_lib
from daq_jax.training import modeling, optim, parallel, steps
from daq_jax.training.config import from_dict

METHODS = ("fp32", "per_tensor", "daq", "daq_sr_wgrad", "daq_sr")


def build_step(method: str, batch_size: int, head_canvas: bool = True):
  """(step, state, batch) of the default detection config with `method`: the jitted training
  step (not donating), a fresh state and the config's first training batch on the device;
  `head_canvas=False` runs the heads once per level (`detection.head_canvas`)."""
  values = importlib.import_module("configs.detection_default").get_config().to_dict()
  values["quant"]["method"] = method
  values["batch_size"] = batch_size
  values["detection"]["head_canvas"] = head_canvas
  cfg = from_dict(values)
  train_set, _, info = data_lib.load(cfg.data)
  mesh = parallel.make_mesh(1, batch_size)
  replicated = parallel.replicated(mesh)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 64, 384)
  state = steps.init_train_state(model, tx, info, 0, replicated)
  train_fn, _ = steps.compile_steps(model, tx, info, cfg, replicated, donate=False)
  batches = data_lib.Batches(train_set, info, batch_size)
  batch = parallel.put_batch(batches.train(0), mesh)
  return (lambda s, b: train_fn(s, b)[1]), state, batch


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--methods", default=",".join(METHODS), help="fp32 and any INT8 methods")
  parser.add_argument(
    "--per-level",
    action="store_true",
    help="each method also with the heads run once per level (detection.head_canvas=False)",
  )
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  methods = ["fp32", *(m for m in args.methods.split(",") if m and m != "fp32")]
  built = {m: build_step(m, args.batch) for m in methods}
  if args.per_level:
    built |= {f"{m} per level": build_step(m, args.batch, head_canvas=False) for m in methods}
    methods = list(built)
  for step, state, batch in built.values():  # compiled and warmed before any timing
    jax.block_until_ready(step(state, batch))
  times = {m: [] for m in methods}
  for _ in range(args.rounds):
    for method, (step, state, batch) in built.items():
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(state, batch))
        times[method].append((time.perf_counter() - start) * 1e3)
  rows = {m: {"ms": statistics.median(t), "samples": len(t)} for m, t in times.items()}
  for name, row in rows.items():
    row["vs_fp32"] = round(row["ms"] / rows["fp32"]["ms"], 3)
    if name.endswith(" per level"):  # against the same method on the canvas
      row["vs_canvas"] = round(row["ms"] / rows[name.removesuffix(" per level")]["ms"], 3)
  print(
    f"\nretinanet_small training step, batch {args.batch}, {jax.default_backend()}, medians of "
    f"{args.rounds} interleaved rounds of {args.repeats}:"
  )
  for name, row in rows.items():
    canvas = f"   x{row['vs_canvas']:.2f} its canvas" if "vs_canvas" in row else ""
    print(f"  {name:23s} {row['ms']:8.1f} ms   x{row['vs_fp32']:.2f} fp32{canvas}")
  out = args.out or f"benchmarks/results/detection_step_{jax.default_backend()}.json"
  payload = {
    **environment("benchmarks.detection_step"),
    "config": "configs/detection_default.py",
    "batch": args.batch,
    "rounds": args.rounds,
    "repeats": args.repeats,
    "rows": rows,
  }
  print("wrote", write_json(out, payload))


if __name__ == "__main__":
  main()
