"""`analyze_workdir`: the gradient analysis of a trained run, written to `<workdir>/analysis/`
(the library side of `python -m daq_jax.analyze`).

It restores the run's checkpoint, takes `batches` training batches from the restored step on
(the batches the run would have seen next), captures every quantized layer's output gradient
(`analysis.gradients`) and writes:
- `hist_<layer>.png`: the most bell-shaped and most inverted-T channel of g, each method's
  clip values marked (the paper's Fig. 1 for this model);
- `distributions.png`: r_c against λ, the inverted-T share and clip/max, per layer;
- `errors.png`: each method's error of both quantized g and of dW, dX, per layer;
- `dw_errors.png`: each method's dW error per layer, beside the share of g's entries its
  wgrad-path rounding sets to zero;
- `analysis.json` with every number, and `summary.md`, which shows the images.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from daq_jax import data as data_lib
from daq_jax.analysis import gradients, plots
from daq_jax.detection import Detection
from daq_jax.nn.ops import OP_NAME, RNG_STREAM, STATE_COLLECTION, QuantConvOp
from daq_jax.quant import config as quant_config
from daq_jax.quant import gradient
from daq_jax.training import steps
from daq_jax.training.evaluation import read_run_record, restore_run
from daq_jax.training.files import replace, write_json

# The methods compared by default; any quantized preset can be named.
METHODS = ("daq", "daq_sr", "daq_sr_wgrad", "daq_sr_wgrad_rows", "per_tensor", "gvq", "mcs", "ui8")
KNOWN = tuple(m for m in quant_config.METHODS if m != "fp32")


def check_methods(methods) -> tuple[str, ...]:
  methods = tuple(methods)
  unknown = [m for m in methods if m not in KNOWN]
  if unknown or not methods:
    raise ValueError(
      f"--methods: {', '.join(unknown) or 'none given'} "
      f"{'is' if len(unknown) == 1 else 'are'} not a quantization method; known: "
      f"{', '.join(KNOWN)}"
    )
  return methods


def analyze_workdir(
  workdir: str,
  batches: int = 2,
  methods=METHODS,
  batch_size: int = 0,
  step: int | None = None,
  report=print,
) -> dict:
  """Analyzes the run in `workdir` (see the module docstring); returns what analysis.json holds.

  Raises:
    ValueError, FileNotFoundError: not a run, no checkpoint, an unknown method, a run
      without quantized layers (one line each).
    ImportError: matplotlib is missing (the message says how to install it).
  """
  methods = check_methods(methods)
  plots.pyplot()  # before any work: the figures are half of what is asked
  if batches <= 0:
    raise ValueError(f"--batches={batches} must be > 0")
  cfg, info = read_run_record(workdir)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not any(
    name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints"))
  ):
    raise FileNotFoundError(f"workdir {workdir} has no checkpoint to analyze: train it first")
  if not cfg.quant.configs():
    raise ValueError(
      f"the run in {workdir} has no quantized layers (quant.method={cfg.quant.method!r}): "
      "there is no quantizer to analyze"
    )
  model, _, state = restore_run(workdir, cfg, info, step, report=report)
  run_cfg = cfg.quant.configs()[0]
  configs = {m: quant_config.preset(m).replace(impl=cfg.quant.impl) for m in methods}
  train_set, _, _ = data_lib.load(cfg.data)
  batch_size = batch_size or cfg.batch_size
  source = data_lib.Batches(train_set, info, batch_size, seed=cfg.seed, workers=cfg.data.workers)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  variables[STATE_COLLECTION] = state.quant_state
  start, started = int(state.step), time.perf_counter()
  try:
    layers, batch_fn, states = None, None, None
    for i in range(batches):
      batch = source.train(start + i)
      images = steps.normalize(batch["image"], info, np.float32)
      key = jax.random.fold_in(jax.random.key(cfg.seed), start + i)
      targets = {k: v for k, v in batch.items() if k != "image"}  # labels, or boxes
      if batch_fn is None:
        layers, batch_fn, states = _prepare(
          model, variables, cfg, info, configs, run_cfg, (images, targets, key)
        )
      numbers, states = batch_fn(variables, images, targets, key, states)
      for name, layer in layers.items():
        layer.add(jax.device_get(numbers[name]))
      report(f"batch {i + 1}/{batches}: {len(layers)} quantized layers")
  finally:
    source.close()
  result = {
    "workdir": os.path.abspath(workdir),
    "step": start,
    "method": cfg.quant.method,
    "model": cfg.model.name,
    "batches": batches,
    "batch_size": batch_size,
    "methods": list(methods),
    "bell_threshold": run_cfg.bell_threshold,
    "seconds": round(time.perf_counter() - started, 1),
    "layers": [layer.result() for layer in layers.values()],
  }
  result["comparison"] = _compare(result["layers"], methods)
  result["parts"] = parts(result["layers"])
  _write(workdir, result)
  return result


def _capture(model, variables, cfg, info, images, targets, key) -> list[gradients.OpCall]:
  """The quantized contractions of one training step (traceable): of its cross-entropy, or
  of the detector's loss on the batch's boxes."""
  dropout_key, quant_key = jax.random.split(key)
  detection = Detection(cfg.detection, info.image_shape[0]) if info.is_detection else None

  def loss_fn(applied):
    out, _ = applied  # (model output, batch_stats updates)
    if detection is not None:
      return detection.loss(out, targets)[0]
    logits = out[0] if isinstance(out, tuple) else out  # Inception's aux head is left out
    return steps.cross_entropy(logits, targets["label"], cfg.label_smoothing).mean()

  return gradients.capture(
    model,
    variables,
    loss_fn,
    images,
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": dropout_key, RNG_STREAM: quant_key},
  )


def _prepare(model, variables, cfg, info, configs, run_cfg, example):
  """The layers (found by tracing one batch), the jitted analysis of a batch, and each
  method's initial state per layer: the checkpoint's for the run's own method."""
  found = {}

  def shapes(variables, images, targets, key):
    calls = _capture(model, variables, cfg, info, images, targets, key)
    for call in calls:
      found[call.layer] = (isinstance(call.op, QuantConvOp), tuple(call.g.shape))
    return {call.layer: call.g for call in calls}

  jax.eval_shape(shapes, variables, *example)
  if not found:
    raise ValueError(f"the model {cfg.model.name} called no quantized layer")
  layers = {
    name: gradients.LayerAnalysis(name, "conv" if conv else "dense", shape)
    for name, (conv, shape) in found.items()
  }
  quant_state_paths = _state_paths(variables[STATE_COLLECTION], found)
  states = {
    method: {
      name: quant_state_paths[name]
      if method == cfg.quant.method
      else gradient.init_state(mcfg, shape[-1])
      for name, (_, shape) in found.items()
    }
    for method, mcfg in configs.items()
  }

  @jax.jit
  def batch_fn(variables, images, targets, key, states):
    numbers, new_states = {}, {m: {} for m in configs}
    for i, call in enumerate(_capture(model, variables, cfg, info, images, targets, key)):
      layer_states = {m: states[m][call.layer] for m in configs}
      numbers[call.layer], updated = gradients.analyze_call(
        call, configs, layer_states, jax.random.fold_in(key, i), run_cfg.bell_threshold
      )
      for m in configs:
        new_states[m][call.layer] = updated[m]
    return numbers, new_states

  # Committed to the device like the states batch_fn returns, so that the second batch does
  # not compile the analysis again.
  return layers, batch_fn, jax.device_put(states, jax.devices()[0])


def parts(layers: list[dict]) -> dict[str, dict]:
  """The inverted-T share of g's channels per part of the model, the first component of the
  layers' paths (a detector's `backbone`, `fpn`, `class_head`, `box_head`): channels counted
  over the part's layers."""
  out: dict[str, dict] = {}
  for layer in layers:
    part = out.setdefault(layer["layer"].split("/")[0], {"layers": 0, "channels": 0, "inv": 0.0})
    part["layers"] += 1
    part["channels"] += layer["channels"]
    part["inv"] += layer["inverted_t_share"] * layer["channels"]
  return {
    name: {
      "layers": p["layers"],
      "channels": p["channels"],
      "inverted_t_share": p["inv"] / p["channels"],
    }
    for name, p in out.items()
  }


def _state_paths(quant_state: dict, found: dict) -> dict:
  """Each layer's state in the checkpoint (its op's variables, at `<layer>/quant`)."""
  return {name: gradients.lookup(quant_state, [*name.split("/"), OP_NAME]) for name in found}


def _compare(layers: list[dict], methods) -> dict:
  """Per layer, whether DAQ's (and per-channel max's) errors are below per_tensor's."""
  out = {}
  for ours in ("daq", "gvq"):
    if ours not in methods or "per_tensor" not in methods:
      continue
    for what in ("wgrad_g", "dw"):
      metric = "cosine_distance" if what.endswith("_g") else "rel_l2"
      below = [
        layer["layer"]
        for layer in layers
        if layer["methods"][ours][what][metric] <= layer["methods"]["per_tensor"][what][metric]
      ]
      out[f"{ours}_below_per_tensor_{what}"] = {"layers": below, "of": len(layers)}
  return out


def _write(workdir: str, result: dict) -> None:
  out = os.path.join(workdir, "analysis")
  os.makedirs(out, exist_ok=True)
  layers = result["layers"]
  images = []
  for layer in layers:
    name = f"hist_{plots.safe_name(layer['layer'])}.png"
    plots.histograms(layer, os.path.join(out, name))
    images.append((layer["layer"], name))
  plots.distributions(layers, result["bell_threshold"], os.path.join(out, "distributions.png"))
  plots.errors(layers, os.path.join(out, "errors.png"))
  plots.dw_errors(layers, os.path.join(out, "dw_errors.png"))
  write_json(os.path.join(out, "analysis.json"), result)
  with replace(os.path.join(out, "summary.md")) as f:
    f.write(_summary(result, images))


def _cause_tables(result: dict) -> list[str]:
  """Where each method's dW and dX error comes from, what rounding zeroes, and the per-row
  dgrad option."""
  methods = result["methods"]
  lines = [
    "![dW error and the g that rounding zeroes, per layer](dw_errors.png)",
    "",
    "Where the dW error comes from (relative L2 increments against the float dW: forward "
    "quantization of x and w / clipping of g / rounding of g), and the share of g's nonzero "
    "entries that wgrad-path rounding sets to zero (with the share of g's energy they hold):",
    "",
    "| layer | "
    + " | ".join(f"{m} dW: fwd / clip / round | {m} zeroed (energy)" for m in methods)
    + " |",
    "|---|" + "---|---|" * len(methods),
  ]
  for layer in result["layers"]:
    cells = []
    for m in methods:
      split, zeroed = layer["methods"][m]["split_dw"], layer["methods"][m]["wgrad_zeroed"]
      cells.append(
        f"{split['forward']:.3f} / {split['clipping']:.3f} / {split['rounding']:.3f} | "
        f"{zeroed['share']:.0%} ({zeroed['energy']:.1%})"
      )
    lines.append(f"| {layer['layer']} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "dX relative L2 error: each method, and one g scale per output position on the dgrad "
    "path (per-row, with either rounding):",
    "",
    "| layer | " + " | ".join(methods) + " | per-row, nearest | per-row, stochastic |",
    "|---|" + "---|" * (len(methods) + 2),
  ]
  for layer in result["layers"]:
    cells = [f"{layer['methods'][m]['dx']['rel_l2']:.3f}" for m in methods]
    cells += [f"{layer['dgrad_per_row'][r]['rel_l2']:.3f}" for r in ("nearest", "stochastic")]
    lines.append(f"| {layer['layer']} | " + " | ".join(cells) + " |")
  return lines


def _summary(result: dict, images) -> str:
  methods = result["methods"]
  lines = [
    f"# Gradient analysis: {result['model']} ({result['method']}), step {result['step']}",
    "",
    f"`python -m daq_jax.analyze --workdir {result['workdir']} --batches {result['batches']}"
    f" --methods {','.join(methods)}`: {result['batches']} training batches of "
    f"{result['batch_size']} from step {result['step']}, λ = {result['bell_threshold']}, "
    f"{result['seconds']} s. Errors are means over the batches; each method carries its own "
    "state from batch to batch (the run's method starts from the checkpoint's).",
    "",
    "![r_c, inverted-T share and clip/max per layer](distributions.png)",
    "",
    "![errors per layer and method](errors.png)",
    "",
  ]
  if 1 < len(result.get("parts", {})) <= 8:  # a detector's parts, not a classifier's blocks
    lines += ["Per part: the inverted-T share of g's channels (the rest are bell-shaped):", ""]
    lines += ["| part | layers | channels | inverted-T |", "|---|---|---|---|"]
    for name, part in result["parts"].items():
      lines.append(
        f"| {name} | {part['layers']} | {part['channels']} | {part['inverted_t_share']:.2f} |"
      )
    lines.append("")
  lines += [
    "Cosine distance of the wgrad-path g against the float g, and relative L2 error of dW:",
    "",
    "| layer | C | inverted-T | " + " | ".join(f"{m} g_w | {m} dW" for m in methods) + " |",
    "|---|---|---|" + "---|---|" * len(methods),
  ]
  for layer in result["layers"]:
    cells = " | ".join(
      f"{layer['methods'][m]['wgrad_g']['cosine_distance']:.2e} | "
      f"{layer['methods'][m]['dw']['rel_l2']:.3f}"
      for m in methods
    )
    lines.append(
      f"| {layer['layer']} | {layer['channels']} | {layer['inverted_t_share']:.2f} | {cells} |"
    )
  lines.append("")
  for key, value in result["comparison"].items():
    lines.append(f"- {key}: {len(value['layers'])} of {value['of']} layers")
  lines += ["", *_cause_tables(result), ""]
  lines += ["", "## Per layer: the most bell-shaped and the most inverted-T channel", ""]
  lines += [f"![{layer}]({name})" for layer, name in images]
  return "\n".join(lines) + "\n"
