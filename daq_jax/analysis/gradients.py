"""The gradients a model's quantized layers see, and what each quantization method makes of them.

`capture` runs a loss through a model and records, for every quantized contraction (the op
module under a QConv/QDense, or under a layer `daq_jax.quantize` matched), its inputs x and w,
its quantization state and the gradient g arriving at its output. `analyze_call` then, for
every method, quantizes g (wgrad path per channel, dgrad path global), runs the layer's
backward pass with that method's int8 op, and compares both against the float ones: the errors
the paper argues from. Both trace, so one jitted function does a whole batch;
`LayerAnalysis` gathers the numbers of a layer over batches on the host.

Each method carries its own per-layer state from batch to batch, as in training: the run's own
method starts from the checkpoint's state, the others from a fresh one (so give them a few
batches: magnitude-aware clipping needs history).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from daq_jax.nn.ops import RNG_STREAM, STATE_COLLECTION, QuantConvOp, QuantOp
from daq_jax.quant import gradient
from daq_jax.quant.config import QuantConfig

HISTOGRAM_BINS = 81


@dataclasses.dataclass
class OpCall:
  """One call of a quantized contraction in a model, with the gradient at its output.

  Attributes:
    layer: the layer's path ("stage1_block0/conv1").
    op: the op module (unbound), whose `quant` is the layer's config.
    args, kwargs: the call's arguments: (x, w, ...) as `lax.conv_general_dilated` or
      `lax.dot_general` take them.
    g: dL/dy at the op's output.
    state: the layer's quantization state in the variables.
  """

  layer: str
  op: QuantOp
  args: tuple
  kwargs: dict
  g: jax.Array
  state: dict


def lookup(tree: dict, path: Sequence[str]):
  """The node of nested dicts at `path`."""
  for name in path:
    tree = tree[name]
  return tree


def capture(
  model, variables: dict, loss_fn: Callable[[Any], jax.Array], *args, **apply_kwargs
) -> list[OpCall]:
  """Every quantized contraction of one `model.apply(variables, *args, **apply_kwargs)`.

  Args:
    model: a Flax model (or `daq_jax.quantize`'s wrapper) with quantized layers.
    variables: its variables, `quant_state` included.
    loss_fn: maps what the apply returns to a scalar loss.

  Returns:
    One `OpCall` per quantized contraction, in call order.
  """
  calls = []

  def record(next_fun, args_, kwargs_, context):
    out = next_fun(*args_, **kwargs_)
    if context.method_name == "__call__" and isinstance(context.module, QuantOp):
      path = tuple(context.module.path)
      calls.append((context.module.clone(parent=None), path, args_, kwargs_, out))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, *args, **apply_kwargs)

  def loss_with_probes(probes):
    count = iter(range(len(probes)))

    def add_probe(next_fun, args_, kwargs_, context):
      out = next_fun(*args_, **kwargs_)
      if context.method_name == "__call__" and isinstance(context.module, QuantOp):
        out = out + probes[next(count)]
      return out

    with nn.intercept_methods(add_probe):
      return loss_fn(model.apply(variables, *args, **apply_kwargs))

  # The gradient with respect to a zero added to an op's output is the g its backward sees.
  grads = jax.grad(loss_with_probes)([jnp.zeros_like(c[4]) for c in calls])
  return [
    OpCall(
      layer="/".join(path[:-1]),
      op=op,
      args=tuple(args_),
      kwargs=dict(kwargs_),
      g=g,
      state=lookup(variables[STATE_COLLECTION], path),
    )
    for (op, path, args_, kwargs_, _), g in zip(calls, grads, strict=True)
  ]


def _errors(approx, exact) -> dict[str, jax.Array]:
  """Cosine distance and relative L2 error of `approx` against `exact` (traceable)."""
  exact = jnp.asarray(exact, jnp.float32)
  approx = jnp.asarray(approx, jnp.float32)
  norm = jnp.linalg.norm(exact)
  diff = jnp.linalg.norm(approx - exact)
  return {
    "cosine_distance": gradient.cosine_distance(approx, exact),
    "rel_l2": jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1.0), 0.0),
  }


def float_backward(call: OpCall) -> tuple[jax.Array, jax.Array]:
  """(dx, dw) of the float contraction given g."""
  contraction = (
    jax.lax.conv_general_dilated if isinstance(call.op, QuantConvOp) else jax.lax.dot_general
  )
  x, w, *rest = call.args
  _, vjp = jax.vjp(lambda a, b: contraction(a, b, *rest, **call.kwargs), x, w)
  return vjp(call.g)


def quantized_backward(call: OpCall, cfg: QuantConfig, state: dict, key: jax.Array):
  """(dx, dw, new state) of the layer's int8 op under `cfg`, given g."""
  op = call.op.clone(quant=cfg)
  x, w, *rest = call.args

  def apply(a, b, s):
    return op.apply({STATE_COLLECTION: s}, a, b, *rest, **call.kwargs, rngs={RNG_STREAM: key})

  _, vjp = jax.vjp(apply, x, w, state)
  return vjp(call.g)


def analyze_call(
  call: OpCall, configs: dict[str, QuantConfig], states: dict, key: jax.Array, bell_threshold
) -> tuple[dict, dict]:
  """Everything about one layer's g on one batch, for every method (traceable: jit it).

  Args:
    configs: {method: config}.
    states: {method: the layer's state under that method}.

  Returns:
    (numbers, new states): `numbers` holds r_c and max|g| per channel, the g columns of the most
    bell-shaped and most inverted-T channel, and per method the errors of both quantized g, dW
    and dX against the float ones and the per-channel wgrad clip values.
  """
  channels = call.g.shape[-1]
  g2d = call.g.reshape(-1, channels).astype(jnp.float32)
  stats = gradient.clip_stats(g2d)
  live = stats.gmax > 0
  bell = jnp.argmax(jnp.where(live, stats.above_sigma, -1.0))
  inverted = jnp.argmin(jnp.where(live, stats.above_sigma, 2.0))
  numbers = {
    "r": stats.above_sigma,
    "gmax": stats.gmax,
    "bell_channel": bell,
    "bell_column": g2d[:, bell],
    "inverted_channel": inverted,
    "inverted_column": g2d[:, inverted],
    "inverted_share": jnp.sum(live & (stats.above_sigma <= bell_threshold))
    / jnp.maximum(jnp.sum(live), 1),
    "methods": {},
  }
  dx_f, dw_f = float_backward(call)
  new_states = {}
  for i, (name, cfg) in enumerate(configs.items()):
    method_key = jax.random.fold_in(key, i)
    gq = gradient.quantize_gradient(
      call.g, states[name], cfg, method_key if cfg.stochastic else None
    )
    g_dgrad, g_wgrad = gq.dequantized(call.g.shape)
    dx, dw, new_states[name] = quantized_backward(call, cfg, states[name], method_key)
    numbers["methods"][name] = {
      "wgrad_g": _errors(g_wgrad, call.g),
      "dgrad_g": _errors(g_dgrad, call.g),
      "dw": _errors(dw, dw_f),
      "dx": _errors(dx, dx_f),
      "clip": jnp.broadcast_to(gq.wgrad_scale, (channels,)),
    }
  return numbers, new_states


def _histogram(column: np.ndarray) -> dict:
  top = float(np.abs(column).max()) or 1.0
  counts, edges = np.histogram(column, bins=HISTOGRAM_BINS, range=(-top, top))
  return {"edges": edges.tolist(), "counts": counts.tolist()}


class LayerAnalysis:
  """One layer's numbers (`analyze_call`'s, on the host) gathered over batches.

  Args:
    layer: the layer's path.
    kind: "conv" or "dense".
    g_shape: the shape of its output gradient.
  """

  def __init__(self, layer: str, kind: str, g_shape: tuple[int, ...]):
    self.layer, self.kind, self.g_shape = layer, kind, tuple(g_shape)
    self.errors: dict[str, dict[str, list[dict]]] = {}
    self.last: dict | None = None

  def add(self, numbers: dict) -> None:
    self.last = numbers
    for name, method in numbers["methods"].items():
      for what in ("wgrad_g", "dgrad_g", "dw", "dx"):
        self.errors.setdefault(name, {}).setdefault(what, []).append(method[what])

  def result(self) -> dict:
    """Everything about the layer, as plain JSON values (errors averaged over batches; the
    distribution, clips and histograms of the last batch)."""
    last = self.last
    r, gmax = np.asarray(last["r"]), np.asarray(last["gmax"])
    live = gmax > 0
    histograms = {}
    if live.any():
      for kind in ("bell", "inverted"):
        channel = int(last[f"{kind}_channel"])
        histograms["bell" if kind == "bell" else "inverted_t"] = {
          "channel": channel,
          "r": float(r[channel]),
          **_histogram(np.asarray(last[f"{kind}_column"])),
          "clips": {m: float(v["clip"][channel]) for m, v in last["methods"].items()},
        }
    methods = {}
    for name, by_what in self.errors.items():
      methods[name] = {
        what: {k: float(np.mean([float(e[k]) for e in runs])) for k in runs[0]}
        for what, runs in by_what.items()
      }
      ratios = np.asarray(last["methods"][name]["clip"])[live] / gmax[live]
      ratios = ratios if ratios.size else np.ones(1)
      methods[name]["clip_over_max"] = {
        "mean": float(ratios.mean()),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
      }
    return {
      "layer": self.layer,
      "kind": self.kind,
      "g_shape": list(self.g_shape),
      "channels": self.g_shape[-1],
      "live_channels": int(live.sum()),
      "r": r.tolist(),
      "inverted_t_share": float(last["inverted_share"]),
      "batches": len(next(iter(self.errors.values()))["dw"]) if self.errors else 0,
      "methods": methods,
      "histograms": histograms,
    }
