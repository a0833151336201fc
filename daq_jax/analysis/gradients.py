"""The gradients a model's quantized layers see, and what each quantization method makes of them.

`capture` runs a loss through a model and records, for every quantized conv, transposed conv
and dense contraction (the op module under a QConv/QDense, or under a layer `daq_jax.quantize`
matched; einsum layers are not analysed), its inputs x and w,
its quantization state and the gradient g arriving at its output. `analyze_call` then, for
every method, quantizes g (wgrad path per channel, dgrad path global), runs the layer's
backward pass with that method's int8 op, and compares both against the float ones: the errors
the paper argues from. Both trace, so one jitted function does a whole batch;
`LayerAnalysis` gathers the numbers of a layer over batches on the host.

Where the error comes from is split three ways, each step's increment relative to the float
result's norm: `forward` (x and w quantized, g float), `clipping` (g clipped to the method's
clip values as well, not rounded) and `rounding` (the method's int8 g). The share of g's
nonzero entries that rounding sets to zero, and the share of g's energy they hold, show the
bias of nearest rounding on the wgrad path. Per-row (per output position) g scales on the
dgrad path, with nearest and with stochastic rounding, are measured for every layer whatever
the methods (the ops offer them as `dgrad_granularity="per_row"`, e.g. `daq_sr_wgrad_rows`).

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

from daq_jax.nn.ops import (
  RNG_STREAM,
  STATE_COLLECTION,
  QuantConvOp,
  QuantConvTransposeOp,
  QuantDotGeneralOp,
)
from daq_jax.quant import gradient, numerics
from daq_jax.quant.config import QuantConfig

HISTOGRAM_BINS = 81
# The op modules analysed, each with the float contraction of its signature (x, w, ...); an
# einsum layer's op (equation, x, w) is not analysed.
FLOAT_CONTRACTIONS = {
  QuantConvOp: jax.lax.conv_general_dilated,
  QuantConvTransposeOp: jax.lax.conv_transpose,
  QuantDotGeneralOp: jax.lax.dot_general,
}


def _analysed(context) -> bool:
  return context.method_name == "__call__" and type(context.module) in FLOAT_CONTRACTIONS


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
  op: QuantConvOp | QuantConvTransposeOp | QuantDotGeneralOp
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
    if _analysed(context):
      path = tuple(context.module.path)
      calls.append((context.module.clone(parent=None), path, args_, kwargs_, out))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, *args, **apply_kwargs)

  def loss_with_probes(probes):
    count = iter(range(len(probes)))

    def add_probe(next_fun, args_, kwargs_, context):
      out = next_fun(*args_, **kwargs_)
      if _analysed(context):
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


def float_backward(call: OpCall, x=None, w=None, g=None) -> tuple[jax.Array, jax.Array]:
  """(dx, dw) of the float contraction given g (or the x, w and g given instead)."""
  contraction = FLOAT_CONTRACTIONS[type(call.op)]
  x0, w0, *rest = call.args
  x = x0 if x is None else x
  w = w0 if w is None else w
  _, vjp = jax.vjp(lambda a, b: contraction(a, b, *rest, **call.kwargs), x, w)
  return vjp(call.g if g is None else g)


def _forward_quantized(v: jax.Array) -> jax.Array:
  """What the quantized ops' forward pass makes of x or w: one max-abs scale, nearest."""
  return numerics.fake_quantize(v, numerics.max_abs(v)).astype(v.dtype)


def _zeroed(g: jax.Array, q: jax.Array) -> dict[str, jax.Array]:
  """The share of g's nonzero entries quantized to 0, and the share of g's energy they hold."""
  g = g.astype(jnp.float32)
  lost = (g != 0) & (q.reshape(g.shape) == 0)
  energy = jnp.sum(g * g)
  return {
    "share": jnp.sum(lost) / jnp.maximum(jnp.sum(g != 0), 1),
    "energy": jnp.sum(jnp.where(lost, g * g, 0.0)) / jnp.where(energy > 0, energy, 1.0),
  }


def _split(exact, forward, clipped, quantized) -> dict[str, jax.Array]:
  """Each step's error increment relative to |exact|: forward, clipping, rounding."""
  norm = jnp.linalg.norm(jnp.asarray(exact, jnp.float32))
  safe = jnp.where(norm > 0, norm, 1.0)
  step = lambda a, b: jnp.linalg.norm(jnp.asarray(a, jnp.float32) - b) / safe
  return {
    "forward": step(forward, exact),
    "clipping": step(clipped, forward),
    "rounding": step(quantized, clipped),
  }


def _per_row_dgrad(call: OpCall, xq, wq, dx_f, key) -> dict[str, dict]:
  """dX errors with one g scale per output position (row of the (M, C) view) on the dgrad
  path, nearest and stochastic, as the float twin of `dgrad_granularity="per_row"`."""
  g2d = call.g.reshape(-1, call.g.shape[-1]).astype(jnp.float32)
  rows = numerics.max_abs(g2d, axis=1, keepdims=True)
  out = {}
  for rounding in numerics.ROUNDINGS:
    g_hat = numerics.fake_quantize(g2d, rows, rounding=rounding, key=key).reshape(call.g.shape)
    dx, _ = float_backward(call, xq, wq, g_hat.astype(call.g.dtype))
    out[rounding] = _errors(dx, dx_f)
  return out


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
    bell-shaped and most inverted-T channel, the dX errors of per-row dgrad scales, and per
    method the errors of both quantized g, dW and dX against the float ones, their split into
    forward quantization, clipping and rounding, the share of g that rounding zeroes on each
    path, and the per-channel wgrad clip values.
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
  xq, wq = (_forward_quantized(v) for v in call.args[:2])
  dx_fq, dw_fq = float_backward(call, xq, wq)  # forward quantization alone
  per_row_key = jax.random.fold_in(key, len(configs))  # the methods use 0 .. len - 1
  numbers["dgrad_per_row"] = _per_row_dgrad(call, xq, wq, dx_f, per_row_key)
  new_states = {}
  for i, (name, cfg) in enumerate(configs.items()):
    method_key = jax.random.fold_in(key, i)
    gq = gradient.quantize_gradient(
      call.g, states[name], cfg, method_key if cfg.stochastic else None
    )
    g_dgrad, g_wgrad = gq.dequantized(call.g.shape)
    dx, dw, new_states[name] = quantized_backward(call, cfg, states[name], method_key)
    wclip = jnp.broadcast_to(gq.wgrad_scale, (channels,))
    _, dw_clip = float_backward(
      call, xq, wq, jnp.clip(g2d, -wclip, wclip).reshape(call.g.shape).astype(call.g.dtype)
    )
    dx_clip, _ = float_backward(
      call, xq, wq, jnp.clip(call.g, -gq.dgrad_scale, gq.dgrad_scale).astype(call.g.dtype)
    )
    numbers["methods"][name] = {
      "wgrad_g": _errors(g_wgrad, call.g),
      "dgrad_g": _errors(g_dgrad, call.g),
      "dw": _errors(dw, dw_f),
      "dx": _errors(dx, dx_f),
      "split_dw": _split(dw_f, dw_fq, dw_clip, dw),
      "split_dx": _split(dx_f, dx_fq, dx_clip, dx),
      "wgrad_zeroed": _zeroed(g2d, gq.wgrad_q),
      "dgrad_zeroed": _zeroed(call.g, gq.dgrad_q),
      "clip": wclip,
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
    self.per_row: dict[str, list[dict]] = {}
    self.last: dict | None = None

  def add(self, numbers: dict) -> None:
    self.last = numbers
    for name, method in numbers["methods"].items():
      for what in AVERAGED:
        self.errors.setdefault(name, {}).setdefault(what, []).append(method[what])
    for rounding, errors in numbers["dgrad_per_row"].items():
      self.per_row.setdefault(rounding, []).append(errors)

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
      methods[name] = {what: _mean(runs) for what, runs in by_what.items()}
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
      "dgrad_per_row": {rounding: _mean(runs) for rounding, runs in self.per_row.items()},
      "histograms": histograms,
    }


# The per-method numbers averaged over batches (each a dict of scalars).
AVERAGED = (
  "wgrad_g",
  "dgrad_g",
  "dw",
  "dx",
  "split_dw",
  "split_dx",
  "wgrad_zeroed",
  "dgrad_zeroed",
)


def _mean(runs: list[dict]) -> dict[str, float]:
  return {k: float(np.mean([float(e[k]) for e in runs])) for k in runs[0]}
