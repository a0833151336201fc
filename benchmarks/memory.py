"""What a training step keeps between its forward and backward passes, per model, method and
memory mode (`daq_jax.quant.memory`), at each model's config sizes.

    python -m benchmarks.memory               # every model: 90 min or more on a 2-core Xeon
    python -m benchmarks.memory --models resnet20 --no-compile   # residuals only: seconds
    python -m benchmarks.memory --budget-gib 16
    python -m benchmarks.memory --resume     # after an interruption: measures what is missing

Per (model, variant) it reports:
- the residuals `train.py`'s step saves for its backward pass (JAX's saved residuals of the
  step's loss with respect to the parameters and the quantizer's variables, the arguments not
  counted), by dtype: independent of the platform;
- XLA's compiled memory of the whole step on this machine (temp, and the arguments and
  outputs: parameters, optimizer state, batch);
- the largest batch whose residuals fit `--budget-gib` beside the training state (the
  compiled arguments and outputs, which do not grow with the batch) and one example's share
  of the rest of XLA's temp memory: a PREDICTION from the per-example residuals, which every
  mode's step keeps alive at once across the passes; the backward pass's own temporaries,
  one layer at a time, are the share of the temp memory that is not residuals.
Measured on the CPU, XLA's compiled temp memory does not shrink in memory="int8", and not
because of this library: in the control (`remat_control`, an MLP's gradient that keeps each
layer's bfloat16 input and recomputes its float32 activation from it) XLA:CPU compiles the
same temp memory as without `jax.checkpoint`, having merged every recomputed product back
into the forward pass (its common-subexpression pass sees through the barrier JAX puts on
the saved values): the dots lowered and compiled are counted, and the convolutions of the
steps. So the compiled rows are the CPU's, and what the mode saves on an accelerator is the
prediction, until `benchmarks/gpu_check.sh` measures it.
Results: JSON under benchmarks/results/, the table in docs/memory.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import time

import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # JAX's own listing (print_saved_residuals)
from jax.ad_checkpoint import checkpoint_name

from benchmarks.common import environment, write_json
from daq_jax.data.info import DatasetInfo
from daq_jax.detection import Detection
from daq_jax.quant.config import RECOMMENDED
from daq_jax.training import modeling, optim, steps
from daq_jax.training.config import from_dict

# model: (config module, classes, detection)
MODELS = {
  "resnet20": ("configs.cifar10_resnet20", 10),
  "resnet50": ("configs.imagenet_resnet50", 1000),
  "r3d_18": ("configs.video_ucf101_r3d18", 101),
  "retinanet_small": ("configs.detection_default", 3),
  "retinanet_r50": ("configs.detection_coco_retinanet_r50", 80),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  method: str
  dtype: str
  memory: str = "keep"


VARIANTS = (
  Variant("fp32", "fp32", "float32"),
  Variant("bf16", "fp32", "bfloat16"),
  Variant("daq", "daq", "float32"),
  Variant(RECOMMENDED, RECOMMENDED, "float32"),
  Variant(f"{RECOMMENDED} int8", RECOMMENDED, "float32", "int8"),
  Variant(f"{RECOMMENDED} bf16", RECOMMENDED, "bfloat16"),
  Variant(f"{RECOMMENDED} bf16 int8", RECOMMENDED, "bfloat16", "int8"),
)


def config(model: str, variant: Variant, batch: int | None = None):
  module, _ = MODELS[model]
  values = importlib.import_module(module).get_config().to_dict()
  values["quant"]["method"] = variant.method
  values["model"]["dtype"] = variant.dtype
  values["memory"] = variant.memory
  if batch:
    values["batch_size"] = batch
  return from_dict(values)


def _input_shape(cfg) -> tuple[int, ...]:
  size = cfg.data.image_size or {"shapes": 96}.get(cfg.data.name, 32)
  if cfg.data.is_video:
    return (cfg.data.clip_frames, size, size, 3)
  return (size, size, 3)


@dataclasses.dataclass(frozen=True)
class Built:
  """train.py's step of one model and variant: the step function (optimizer bound), its
  optimizer, its state and batch as shapes, and the keyword arguments of `steps.step_loss`."""

  cfg: object
  step: object
  tx: object
  state: object
  batch: dict
  common: dict


def abstract_step(model_name: str, variant: Variant, batch: int | None = None) -> Built:
  """train.py's step of `model_name` at its config's sizes (or `batch`), under `variant`."""
  cfg = config(model_name, variant, batch)
  _, classes = MODELS[model_name]
  shape = _input_shape(cfg)
  info = DatasetInfo(tuple(map(str, range(classes))), shape, (0.5,) * 3, (0.25,) * 3, "")
  if cfg.data.is_detection:
    info = dataclasses.replace(info, max_boxes=cfg.data.max_boxes)
  model = modeling.create_model(cfg, classes, shape)
  tx, _ = optim.build_optimizer(cfg, 100, 1000)
  state = jax.eval_shape(lambda: steps._fresh_state(model, tx, info, 0))
  b = cfg.batch_size
  batch_spec = {"image": jax.ShapeDtypeStruct((b, *shape), jnp.uint8)}
  detection = None
  if cfg.data.is_detection:
    detection = Detection(cfg.detection, shape[0])
    n = cfg.data.max_boxes
    batch_spec |= {
      "boxes": jax.ShapeDtypeStruct((b, n, 4), jnp.float32),
      "classes": jax.ShapeDtypeStruct((b, n), jnp.int32),
      "box_valid": jax.ShapeDtypeStruct((b, n), jnp.bool_),
      "crowd": jax.ShapeDtypeStruct((b, n), jnp.bool_),
    }
  else:
    batch_spec["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  common = dict(
    model=model,
    info=info,
    label_smoothing=0.0,
    input_dtype=jnp.dtype(variant.dtype),
    detection=detection,
    memory=variant.memory,
  )
  step = functools.partial(steps.train_step, tx=tx, **common)
  return Built(cfg, step, tx, state, batch_spec, common)


def step_loss(built: Built):
  """(loss, args): the step's loss as a function of the parameters and the quantizer's
  variables (its gradient's arguments first), and the arguments to call it with."""

  def loss(params, quant_variables, state, batch):
    loss_fn, _ = steps.step_loss(state, batch, **built.common)
    return loss_fn(params, quant_variables)[0]

  state = built.state
  quant_variables = {
    "quant_state": state.quant_state,
    "quant_stats": steps.statistics_input(state.quant_state),
  }
  return loss, (state.params, quant_variables, state, built.batch)


def residuals(built: Built) -> dict:
  """{dtype: bytes} of the step's saved residuals (the arguments not counted)."""
  loss, args = step_loss(built)
  found = saved_residuals(loss, *args)
  by_dtype: dict[str, int] = {}
  for aval, where in found:
    if "from the argument" in where:
      continue
    key = str(aval.dtype)
    by_dtype[key] = by_dtype.get(key, 0) + math.prod(aval.shape) * aval.dtype.itemsize
  return dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]))


def compiled(built: Built) -> dict:
  """XLA's compiled memory of the step on this machine, and its convolutions lowered and
  compiled (a recomputed forward pass that XLA merged back shows as fewer compiled ones)."""
  start = time.perf_counter()
  lowered = jax.jit(built.step).lower(built.state, built.batch)
  executable = lowered.compile()
  analysis = executable.memory_analysis()
  return {
    "temp_bytes": analysis.temp_size_in_bytes,
    "argument_bytes": analysis.argument_size_in_bytes,
    "output_bytes": analysis.output_size_in_bytes,
    "convolutions_lowered": lowered.as_text().count("stablehlo.convolution"),
    "convolutions_compiled": executable.as_text().count(" convolution("),
    "compile_s": round(time.perf_counter() - start, 1),
  }


def remat_control(layers: int = 20, rows: int = 4096, width: int = 512) -> dict:
  """Whether this platform's XLA keeps a rematerialisation: a tanh MLP's gradient whose layers
  each take a bfloat16 copy of their input (named), compiled as written (keeping the float32
  activations too) and under `jax.checkpoint` saving only the named copies, each layer's
  activation recomputed from its own copy (so a recomputation needs nothing else: what
  memory="int8" does). Reports the compiled temp memory and the dots lowered and compiled (a
  recomputation that XLA merged back into the forward pass is a dot fewer)."""
  weights = [jnp.zeros((width, width), jnp.float32)] * layers
  x = jnp.zeros((rows, width), jnp.float32)

  def mlp(weights, x):
    for w in weights:
      h = checkpoint_name(x.astype(jnp.bfloat16), "h")
      x = jnp.tanh(jnp.dot(h, w.astype(jnp.bfloat16), preferred_element_type=jnp.float32))
    return jnp.sum(x)

  def measured(f) -> dict:
    lowered = jax.jit(jax.grad(f)).lower(weights, x)
    executable = lowered.compile()
    return {
      "temp_bytes": executable.memory_analysis().temp_size_in_bytes,
      "dots_lowered": lowered.as_text().count("stablehlo.dot_general"),
      "dots_compiled": executable.as_text().count(" dot("),
    }

  remat = jax.checkpoint(mlp, policy=jax.checkpoint_policies.save_only_these_names("h"))
  plain, kept = measured(mlp), measured(remat)
  return {
    "activation_bytes": layers * rows * width * 4,
    "named_bytes": layers * rows * width * 2,
    "plain_temp_bytes": plain["temp_bytes"],
    "remat_temp_bytes": kept["temp_bytes"],
    "plain_dots": [plain["dots_lowered"], plain["dots_compiled"]],
    "remat_dots": [kept["dots_lowered"], kept["dots_compiled"]],
  }


def largest_batch(row: dict, batch: int, budget: float) -> int | None:
  """The PREDICTED largest batch: the training state (arguments, outputs) fixed, per example
  its residuals plus its share of the compiled temp memory that is not residuals."""
  if "temp_bytes" not in row:
    return None
  kept = sum(row["residual_bytes"].values())
  fixed = row["argument_bytes"] + row["output_bytes"]
  workspace = max(row["temp_bytes"] - kept, 0)
  per_example = (kept + workspace) / batch
  return max(0, int((budget - fixed) // per_example)) if per_example else None


def _mib(b: float) -> str:
  return f"{b / 2**20:,.0f}"


def table(results: dict, budget_gib: float) -> str:
  lines = [
    "| model | batch | variant | residuals MiB (by dtype) | vs fp32 | vs bf16 | XLA temp MiB "
    f"(CPU) | largest batch in {budget_gib:g} GiB (predicted) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for model, entry in results.items():
    rows = entry["variants"]
    fp32 = sum(rows["fp32"]["residual_bytes"].values())
    bf16 = sum(rows["bf16"]["residual_bytes"].values())
    for name, row in rows.items():
      total = sum(row["residual_bytes"].values())
      parts = ", ".join(f"{k} {_mib(v)}" for k, v in row["residual_bytes"].items() if v >= 2**19)
      temp = _mib(row["temp_bytes"]) if "temp_bytes" in row else "-"
      biggest = row.get("largest_batch")
      lines.append(
        f"| {model} | {entry['batch']} | {name} | {_mib(total)} ({parts}) | "
        f"{total / fp32:.2f}x | {total / bf16:.2f}x | {temp} | "
        f"{biggest if biggest is not None else '-'} |"
      )
  return "\n".join(lines)


def _stored(path: str) -> dict:
  """What an earlier (interrupted) run wrote to `path`: its models' rows and its control."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
  parser.add_argument("--budget-gib", type=float, default=16.0)
  parser.add_argument("--no-compile", action="store_true", help="residuals only")
  parser.add_argument("--out", default="benchmarks/results/memory_cpu.json")
  parser.add_argument(
    "--resume", action="store_true", help="keep the rows already in --out, measure the rest"
  )
  args = parser.parse_args(argv)
  wanted = {name.strip() for name in args.variants.split(",")}
  variants = [v for v in VARIANTS if v.name in wanted | {"fp32", "bf16"}]
  budget = args.budget_gib * 2**30
  stored = _stored(args.out) if args.resume else {}
  results = stored.get("models", {})
  payload = {**environment("benchmarks.memory"), "budget_gib": args.budget_gib, "models": results}
  if "remat_control" in stored:  # kept unless measured again
    payload["remat_control"] = stored["remat_control"]
  if not args.no_compile:
    payload["remat_control"] = control = remat_control()
    print(
      "control, a 20-layer MLP's gradient: float32 activations {} MiB, their bf16 copies {} MiB;"
      " XLA temp {} MiB as written, {} MiB keeping the copies only; dots lowered, compiled: {}"
      " as written, {} keeping the copies only".format(
        *(
          _mib(control[k])
          for k in ("activation_bytes", "named_bytes", "plain_temp_bytes", "remat_temp_bytes")
        ),
        control["plain_dots"],
        control["remat_dots"],
      ),
      flush=True,
    )
  for model in args.models.split(","):
    batch = config(model, VARIANTS[0]).batch_size
    results.setdefault(model, {"batch": batch, "variants": {}})
    for variant in variants:
      if variant.name in results[model]["variants"]:
        continue
      built = abstract_step(model, variant)  # one build for both measurements
      row = {**dataclasses.asdict(variant), "residual_bytes": residuals(built)}
      if not args.no_compile:
        row |= compiled(built)
        row["largest_batch"] = largest_batch(row, batch, budget)
      results[model]["variants"][variant.name] = row
      print(model, variant.name, {k: v for k, v in row.items() if k != "name"}, flush=True)
      write_json(args.out, payload)
  print(table(results, args.budget_gib))
  write_json(args.out, payload)


if __name__ == "__main__":
  main()
