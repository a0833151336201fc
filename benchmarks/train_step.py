"""One whole training step of ResNet-20 on CIFAR-10-shaped data (batch 128), with the real
training code (daq_jax.training: model, SGD with momentum, BN, label handling): float32,
bfloat16 (float layers, bf16 compute), per-tensor INT8, DAQ INT8, and DAQ INT8 with the float
parts (BN, ReLU, pooling) in bf16, side by side in one run; the recommended method also with
memory="int8" (its forward pass recomputed in the backward pass: docs/memory.md), and without
`quant.exact` (the float products rounded as XLA fuses them, not one by one: what the
rounding that makes the memory modes bit-identical costs).

    python -m benchmarks.train_step                  # about 3 minutes on 2 CPU cores
    python -m benchmarks.train_step --batch 16 --repeats 2 --out /tmp/step.json   # quick
    python -m benchmarks.train_step --variants daq,daq_sr_wgrad_rows  # some, with fp32, bf16

Prints the median step time of each method and its ratio to float32 and bfloat16; writes
benchmarks/results/train_step_<backend>.json with the machine, versions and command.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.common import environment, median_ms, write_json
from daq_jax.data.info import DatasetInfo
from daq_jax.training import modeling, optim, parallel, steps
from daq_jax.training.config import from_dict

# name, quant.method, model.dtype[, memory[, exact arithmetic]]
VARIANTS = [
  ("fp32", "fp32", "float32"),
  ("bf16", "fp32", "bfloat16"),
  ("per_tensor", "per_tensor", "float32"),
  ("daq", "daq", "float32"),
  ("daq_sr", "daq_sr", "float32"),  # stochastic rounding of g on both paths
  ("daq_sr_wgrad", "daq_sr_wgrad", "float32"),  # ... on the wgrad path only
  ("daq_sr_wgrad_rows", "daq_sr_wgrad_rows", "float32"),  # ... and per-row dgrad scales
  ("daq_sr_rows", "daq_sr_rows", "float32"),  # stochastic on both paths, per-row dgrad scales
  ("daq_sr_rows_int8", "daq_sr_rows", "float32", "int8"),  # ... keeping only int8 residuals
  ("daq_sr_rows_fused", "daq_sr_rows", "float32", "keep", False),  # ... products as XLA fuses
  ("daq_bf16", "daq", "bfloat16"),  # int8 layers, bf16 BN and elementwise work
]


def build_step(
  method: str,
  dtype: str,
  model: str,
  batch: int,
  image_size: int = 32,
  num_classes: int = 10,
  devices: int = 1,
  memory: str = "keep",
  exact_arithmetic: bool = True,
):
  """(step, state, batch): the training step of `train.py` for the model, method and dtype
  (jitted, not donating its state, returning the metrics), a fresh state and a random batch
  of uint8 images on the device; over `devices` devices (0: all of the run's, every process
  holding its slice of the batch, as in training); `memory`: the step's memory mode;
  `exact_arithmetic`: steps.train_step's."""
  cfg = from_dict(
    {
      "model": {"name": model, "dtype": dtype},
      "quant": {"method": method},
      "batch_size": batch,
      "optim": {"base_batch_size": 128, "weight_decay": 1e-4},
      "memory": memory,
    }
  )
  shape = (image_size, image_size, 3)
  classes = tuple(map(str, range(num_classes)))
  info = DatasetInfo(classes, shape, (0.5,) * 3, (0.25,) * 3, "cifar")
  mesh = parallel.make_mesh(devices, batch)
  model_def = modeling.create_model(cfg, num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 390, 64_000)
  replicated = parallel.replicated(mesh)
  state = steps.init_train_state(model_def, tx, info, 0, replicated)
  train_fn, _ = steps.compile_steps(
    model_def, tx, info, cfg, replicated, donate=False, exact_arithmetic=exact_arithmetic
  )
  rng = np.random.default_rng(0)
  rows = slice(
    jax.process_index() * batch // jax.process_count(),
    (jax.process_index() + 1) * batch // jax.process_count(),
  )
  batch_data = parallel.put_batch(
    {
      "image": rng.integers(0, 256, (batch, *shape), dtype=np.uint8)[rows],
      "label": rng.integers(0, num_classes, batch).astype(np.int32)[rows],
    },
    mesh,
  )
  return (lambda s, b: train_fn(s, b)[1]), state, batch_data


def time_step(
  method: str,
  dtype: str,
  model: str,
  batch: int,
  repeats: int,
  memory: str = "keep",
  exact_arithmetic: bool = True,
) -> float:
  """The median time (ms) of the step of `build_step` on 32x32 images, 10 classes."""
  step, state, batch_data = build_step(
    method, dtype, model, batch, memory=memory, exact_arithmetic=exact_arithmetic
  )
  return median_ms(step, state, batch_data, repeats=repeats)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=None)
  parser.add_argument(
    "--variants",
    default=",".join(v[0] for v in VARIANTS),
    help="a comma-separated subset of the variants (fp32 and bf16 are always timed)",
  )
  args = parser.parse_args(argv)
  names = {"fp32", "bf16", *(v.strip() for v in args.variants.split(","))}
  unknown = sorted(names - {v[0] for v in VARIANTS})
  if unknown:
    parser.error(f"--variants: unknown {unknown}; known: {[v[0] for v in VARIANTS]}")
  rows = {}
  for name, method, dtype, *mode in [v for v in VARIANTS if v[0] in names]:
    try:
      ms = time_step(method, dtype, args.model, args.batch, args.repeats, *mode)
      rows[name] = {"ms": ms}
    except Exception as e:  # one failing variant must not hide the others
      rows[name] = {"error": f"{type(e).__name__}: {e}"}
    print(name, rows[name], flush=True)
  for row in rows.values():
    for ref in ("fp32", "bf16"):
      if "ms" in row and "ms" in rows.get(ref, {}):
        row[f"vs_{ref}"] = round(row["ms"] / rows[ref]["ms"], 3)
  print(
    f"\n{args.model} training step, batch {args.batch}, {jax.default_backend()}, medians of "
    f"{args.repeats}:"
  )
  for name, row in rows.items():
    if "ms" in row:
      print(
        f"  {name:17s} {row['ms']:9.1f} ms   x{row['vs_fp32']:.2f} fp32   "
        f"x{row['vs_bf16']:.2f} bf16"
      )
    else:
      print(f"  {name:17s} {row['error']}")
  out = args.out or f"benchmarks/results/train_step_{jax.default_backend()}.json"
  payload = {
    **environment("benchmarks.train_step"),
    "model": args.model,
    "batch": args.batch,
    "repeats": args.repeats,
    "rows": rows,
  }
  print("wrote", write_json(out, payload))


if __name__ == "__main__":
  main()
