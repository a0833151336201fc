"""A roofline PREDICTION of a training step's conv and dense products on a GPU, per layer,
product (forward, dgrad, wgrad) and design (`daq_jax.quant.backends.cost`: bf16, im2col,
pallas, xla, implicit, implicit_fused, delayed; and auto, what impl="auto" picks for CUDA
layer by layer), with totals per step and the ratio to bf16.

    python -m benchmarks.roofline --model resnet50 --batch 128
    python -m benchmarks.roofline --model r3d_18          # the configs' own batch and sizes
    python -m benchmarks.roofline --model retinanet_r50 --layers   # + every layer's row
    python -m benchmarks.roofline --model resnet50 --int8-tops 3958 --hbm-tbs 4.8  # other peaks

The layers are the model's own, at its config's input size (`MODELS`): traced abstractly
(nothing is computed), quantized by the config's rules (layers kept float, the zoo's stem and
classifier by default, count as bf16 in every design). Every number is a prediction from the
assumptions listed in `daq_jax.quant.backends.cost` (peaks, efficiencies, L2 reuse, pass
counts), not a measurement. JSON goes to --out (default benchmarks/results/roofline_<model>
.json) with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math

import jax
import jax.numpy as jnp

from benchmarks.common import environment, write_json
from daq_jax.quant import backends
from daq_jax.quant import config as quant_config
from daq_jax.quant.backends import cost
from daq_jax.quant.geometry import ConvSpec

# model: (config module, classes of its dataset, input shape (without the batch) from its
# config's sizes)
MODELS = {
  "resnet50": ("configs.imagenet_resnet50", 1000),
  "r3d_18": ("configs.video_ucf101_r3d18", 101),
  "retinanet_r50": ("configs.detection_coco_retinanet_r50", 80),
}


def train_config(model: str, batch: int | None, method: str | None):
  """The `TrainConfig` of the model's config file, with `batch` and `method` if given."""
  from daq_jax.training.config import from_dict

  module, _ = MODELS[model]
  values = importlib.import_module(module).get_config().to_dict()
  if batch:
    values["batch_size"] = batch
  if method:
    values["quant"]["method"] = method
  return from_dict(values)


def input_shape(cfg) -> tuple[int, ...]:
  """(H, W, 3) or (T, H, W, 3) at the config's sizes."""
  size = cfg.data.image_size
  if cfg.model.name in ("r3d_18", "r2plus1d_18"):
    return (cfg.data.clip_frames, size, size, 3)
  return (size, size, 3)


def _conv_spec(params) -> ConvSpec:
  return ConvSpec(
    window_strides=tuple(params["window_strides"]),
    padding=tuple(tuple(p) for p in params["padding"]),
    lhs_dilation=tuple(params["lhs_dilation"]),
    rhs_dilation=tuple(params["rhs_dilation"]),
    feature_group_count=params["feature_group_count"],
  )


def _contractions(jaxpr, found: list) -> None:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
      found.append(("conv", lhs, rhs, _conv_spec(eqn.params)))
    elif eqn.primitive.name == "dot_general":
      lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
      if len(rhs) == 2:  # a dense layer's x (..., K) @ w (K, N)
        found.append(("dense", (math.prod(lhs[:-1]), lhs[-1]), rhs, None))
    for param in eqn.params.values():
      subs = param if isinstance(param, (tuple, list)) else [param]
      for sub in subs:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _contractions(inner, found)


def model_layers(model: str, batch: int | None = None, method: str | None = None):
  """(layers, {path: QuantConfig or None}, parameter count, cfg) of a model at its config's
  sizes: every conv and dense layer it calls, traced abstractly, in call order."""
  from daq_jax.training import modeling

  cfg = train_config(model, batch, method)
  _, classes = MODELS[model]
  shape = input_shape(cfg)
  training = modeling.create_model(cfg, classes, shape)
  float_model = training.module
  x = jax.ShapeDtypeStruct((cfg.batch_size, *shape), jnp.float32)
  variables = jax.eval_shape(lambda x: float_model.init(jax.random.key(0), x, train=False), x)
  params = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))

  def forward(variables, x):
    return float_model.apply(variables, x, train=True, mutable=["batch_stats"])

  found: list = []
  _contractions(jax.make_jaxpr(forward)(variables, x).jaxpr, found)
  decided = training.layers(jax.random.key(0), jnp.zeros((2, *shape)), train=False)
  if len(decided) != len(found):
    raise RuntimeError(
      f"{model}: {len(found)} contractions traced but {len(decided)} layers called; the "
      "roofline pairs them in order"
    )
  layers = [
    cost.Layer(path, lhs, rhs, spec)
    for path, (_, lhs, rhs, spec) in zip(decided, found, strict=True)
  ]
  return layers, {path: c for path, (_, c) in decided.items()}, params, cfg


# The designs whose JSON rows list every kernel (the others give each product's totals).
DETAILED = ("auto", "delayed")


def auto_plan(layer: cost.Layer, cfg, act_bytes: int) -> tuple[str, str, str]:
  """What impl="auto" runs `layer` on when traced for CUDA (the cost model's pick among the
  implementations that support it)."""
  dtype = {2: "bfloat16", 4: "float32"}[act_bytes]
  shapes = (layer.lhs, layer.rhs) if layer.spec is not None else None
  return backends.plan(cfg, layer.spec, platform="cuda", shapes=shapes, dtype=dtype).names


def predict(layers, configs, params: int, hw: cost.Hardware, act_bytes: int, designs):
  """Per design ("auto": what impl="auto" picks for CUDA, layer by layer): per layer and
  product its kernels' bytes, ops and predicted seconds; the step's totals (products, then
  with the elementwise work and the optimizer)."""
  results = {}
  elementwise = [k for layer in layers for k in cost.elementwise(layer, act_bytes)]
  rest = cost.seconds([*elementwise, cost.optimizer(params)], hw)
  for design in designs:
    rows, totals = [], dict.fromkeys(cost.PRODUCTS, 0.0)
    bounds: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    for layer in layers:
      cfg = configs[layer.name]
      # layers kept float run as bf16 in every design
      chosen = design if cfg is not None else "bf16"
      if chosen == "auto":
        chosen = auto_plan(layer, cfg, act_bytes)
      method = cost.Method.of(cfg or quant_config.daq())
      row = {"layer": layer.name, "design": chosen}
      for product, kernels in cost.products(layer, chosen, method, act_bytes).items():
        seconds = cost.seconds(kernels, hw)
        totals[product] += seconds
        for k in kernels:
          bounds[k.bound(hw)] = bounds.get(k.bound(hw), 0.0) + k.seconds(hw)
          what = f"{product}: {k.name} ({k.bound(hw)})"
          by_kernel[what] = by_kernel.get(what, 0.0) + k.seconds(hw)
        row[product] = {
          "read": sum(k.read for k in kernels),
          "written": sum(k.written for k in kernels),
          "mma_ops": sum(k.mma_ops for k in kernels),
          "alu_ops": sum(k.alu_ops for k in kernels),
          "us": round(seconds * 1e6, 3),
        }
        if design in DETAILED:  # every kernel, for the plans the docs read
          row[product]["kernels"] = [
            {**dataclasses.asdict(k), "us": round(k.seconds(hw) * 1e6, 3), "bound": k.bound(hw)}
            for k in kernels
          ]
      rows.append(row)
    convs = sum(totals.values())
    results[design] = {
      "products_ms": {p: t * 1e3 for p, t in totals.items()},
      "convs_ms": convs * 1e3,
      "step_ms": (convs + rest) * 1e3,
      "bound_ms": {b: t * 1e3 for b, t in bounds.items()},
      "by_kernel_ms": {k: t * 1e3 for k, t in sorted(by_kernel.items(), key=lambda kv: -kv[1])},
      "layers": rows,
    }
  reference = results.get("bf16")
  if reference:
    for result in results.values():
      result["convs_vs_bf16"] = result["convs_ms"] / reference["convs_ms"]
      result["step_vs_bf16"] = result["step_ms"] / reference["step_ms"]
  return results, rest * 1e3


def _table(results, elementwise_ms: float) -> str:
  lines = [
    "| design | forward | dgrad | wgrad | convs | vs bf16 | step | vs bf16 | time bound by |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for design, r in results.items():
    p = r["products_ms"]
    bounds = ", ".join(f"{b} {t:.1f}" for b, t in sorted(r["bound_ms"].items()))
    lines.append(
      f"| {design} | {p['forward']:.2f} | {p['dgrad']:.2f} | {p['wgrad']:.2f} | "
      f"{r['convs_ms']:.2f} | {r.get('convs_vs_bf16', 1):.2f}x | {r['step_ms']:.2f} | "
      f"{r.get('step_vs_bf16', 1):.2f}x | {bounds} |"
    )
  lines.append("")
  lines.append(
    f"ms, predicted. Step = convs + {elementwise_ms:.2f} ms of BatchNorm/ReLU/add and "
    "optimizer work (the same in every design). 'time bound by': the kernels' predicted ms "
    "summed by what bounds each (tensor cores, memory, ALU)."
  )
  return "\n".join(lines)


def _breakdown(results, design: str, top: int = 8) -> str:
  """Where `design`'s predicted conv time goes: its kernels summed over the layers, the
  largest first."""
  r = results[design]
  lines = [f"{design}: {r['convs_ms']:.2f} ms of conv products, the largest parts:"]
  for what, ms in list(r["by_kernel_ms"].items())[:top]:
    lines.append(f"  {ms:6.2f} ms  {100 * ms / r['convs_ms']:4.1f} %  {what}")
  return "\n".join(lines)


def _layer_table(results, designs) -> str:
  lines = ["| layer | " + " | ".join(designs) + " |", "|---|" + "---|" * len(designs)]
  for i, row in enumerate(results[designs[0]]["layers"]):
    cells = []
    for design in designs:
      r = results[design]["layers"][i]
      cells.append(" / ".join(f"{r[p]['us']:.0f}" for p in cost.PRODUCTS))
    lines.append(f"| {row['layer']} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("µs predicted: forward / dgrad / wgrad, each with its quantization passes.")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
  parser.add_argument("--batch", type=int, default=None, help="default: the config's")
  parser.add_argument("--method", default=None, help="default: the config's quant.method")
  parser.add_argument(
    "--act-bytes", type=int, choices=(2, 4), default=2, help="float parts: 2 bf16, 4 float32"
  )
  parser.add_argument("--designs", default=",".join([*cost.DESIGNS, "auto"]))
  parser.add_argument("--layers", action="store_true", help="print every layer's row too")
  parser.add_argument("--out", default=None)
  defaults = cost.Hardware()
  for field in dataclasses.fields(cost.Hardware):
    if field.name != "name":
      flag = "--" + field.name.replace("_", "-")
      parser.add_argument(flag, type=float, default=getattr(defaults, field.name))
  args = parser.parse_args(argv)
  hw = cost.Hardware(
    **{f.name: getattr(args, f.name) for f in dataclasses.fields(cost.Hardware) if f.name != "name"}
  )
  designs = [d.strip() for d in args.designs.split(",") if d.strip()]
  layers, configs, params, cfg = model_layers(args.model, args.batch, args.method)
  results, rest_ms = predict(layers, configs, params, hw, args.act_bytes, designs)
  quantized = sum(c is not None for c in configs.values())
  print(
    f"{args.model}, batch {cfg.batch_size}, input {input_shape(cfg)}, {cfg.quant.method}, "
    f"{quantized} of {len(layers)} layers quantized, float parts {args.act_bytes} bytes; "
    f"{hw.name}: {hw.int8_tops:g} int8 TOPS, {hw.bf16_tflops:g} bf16 TFLOP/s, {hw.hbm_tbs:g} "
    f"TB/s, {hw.compute_efficiency:.0%} of the tensor peaks. PREDICTED, not measured."
  )
  print(_table(results, rest_ms))
  for design in ("auto", "delayed"):
    if design in results:
      print()
      print(_breakdown(results, design))
  if args.layers:
    print()
    print(_layer_table(results, designs))
  payload = {
    **environment("benchmarks.roofline"),
    "kind": "prediction (a roofline model), not a measurement",
    "model": args.model,
    "batch": cfg.batch_size,
    "input_shape": list(input_shape(cfg)),
    "method": cfg.quant.method,
    "act_bytes": args.act_bytes,
    "hardware": dataclasses.asdict(hw),
    "assumptions": cost.__doc__,
    "elementwise_and_optimizer_ms": rest_ms,
    "designs": results,
  }
  write_json(args.out or f"benchmarks/results/roofline_{args.model}.json", payload)


if __name__ == "__main__":
  main()
