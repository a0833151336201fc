"""See what the gradient quantizer does to a model on one batch.

For every quantized layer (QConv, QDense) the report gives:
- the fraction of output channels whose gradient is bell-shaped (the rest are inverted-T),
  by DAQ's test, whatever the layer's method;
- the wgrad clip ratios (clip value / max|g| per channel: 1 means no clipping);
- the quantization error: cosine similarity between the float g and both of its int8
  versions (wgrad path, dgrad path), and the cosine similarity and relative error of the
  layer's weight and input gradients against the float layer given the same g.

g is the gradient arriving at the layer's output in a training step of the quantized model,
so the errors are those of one layer's backward pass, not accumulated through the network.
The capture and both backward passes are `daq_jax.analysis.gradients`'s (which
`python -m daq_jax.analyze` runs over batches and methods).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from daq_jax.analysis import gradients
from daq_jax.nn.ops import RNG_STREAM
from daq_jax.quant import gradient


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """What the gradient quantizer did in one layer on one batch (see the module docstring)."""

  path: str
  method: str
  channels: int
  bell_fraction: float
  clip_ratio_mean: float
  clip_ratio_min: float
  wgrad_g_cosine: float
  dgrad_g_cosine: float
  dw_cosine: float
  dw_rel_error: float
  dx_cosine: float
  dx_rel_error: float


def _cosine(a, b) -> float:
  return float(1.0 - gradient.cosine_distance(a, b))


def _rel_error(approx, exact) -> float:
  norm = float(jnp.linalg.norm(exact.astype(jnp.float32)))
  diff = float(jnp.linalg.norm((approx - exact).astype(jnp.float32)))
  return diff / norm if norm > 0 else 0.0


def inspect_gradients(
  model: nn.Module,
  variables: dict,
  loss_fn: Callable[[Any], jax.Array],
  *args,
  key: jax.Array | None = None,
  **apply_kwargs,
) -> list[LayerReport]:
  """Reports per quantized layer on one batch (runs eagerly; meant for analysis, not speed).

  Args:
    model: a Flax model with quantized layers (QConv/QDense, or `daq_jax.quantize`'s).
    variables: its variables, `quant_state` included.
    loss_fn: maps what `model.apply(variables, *args, **apply_kwargs)` returns to a scalar.
    *args: the model's inputs.
    key: PRNG key for the `quant` rng stream (stochastic rounding), if the method needs one.
    **apply_kwargs: passed to `model.apply` (`mutable=["batch_stats"]`, `train=True`, ...).

  Returns:
    One `LayerReport` per call of a quantized layer, in call order.
  """
  key = jax.random.key(0) if key is None else key
  rngs = dict(apply_kwargs.pop("rngs", {}) or {})
  rngs.setdefault(RNG_STREAM, key)
  calls = gradients.capture(model, variables, loss_fn, *args, rngs=rngs, **apply_kwargs)
  return [_layer_report(call, key) for call in calls]


def _layer_report(call: gradients.OpCall, key) -> LayerReport:
  cfg, g = call.op.quant, call.g
  dx_q, dw_q, _ = gradients.quantized_backward(call, cfg, call.state, key)
  dx_f, dw_f = gradients.float_backward(call)
  channels = g.shape[-1]
  gq = gradient.quantize_gradient(g, call.state, cfg, key if cfg.stochastic else None)
  per_channel = gradient.clip_stats(g.reshape(-1, channels))
  live = per_channel.gmax > 0
  ratio = jnp.broadcast_to(gq.wgrad_scale, (channels,)) / jnp.where(live, per_channel.gmax, 1.0)
  ratio_live = ratio[live] if bool(jnp.any(live)) else jnp.ones((1,))
  g_d, g_w = gq.dequantized(g.shape)
  return LayerReport(
    path=call.layer,
    method=cfg.name,
    channels=channels,
    bell_fraction=float(jnp.mean(per_channel.is_bell(cfg).astype(jnp.float32))),
    clip_ratio_mean=float(jnp.mean(ratio_live)),
    clip_ratio_min=float(jnp.min(ratio_live)),
    wgrad_g_cosine=_cosine(g_w, g),
    dgrad_g_cosine=_cosine(g_d, g),
    dw_cosine=_cosine(dw_q, dw_f),
    dw_rel_error=_rel_error(dw_q, dw_f),
    dx_cosine=_cosine(dx_q, dx_f),
    dx_rel_error=_rel_error(dx_q, dx_f),
  )


def format_reports(reports: Sequence[LayerReport]) -> str:
  """A fixed-width table of layer reports, one row per layer."""
  head = (
    f"{'layer':<28} {'method':<10} {'C':>5} {'bell':>5} {'clip':>5} {'clip_min':>8} "
    f"{'cos_gw':>7} {'cos_gd':>7} {'cos_dw':>7} {'err_dw':>7} {'cos_dx':>7} {'err_dx':>7}"
  )
  rows = [head]
  for r in reports:
    rows.append(
      f"{r.path[-28:]:<28} {r.method:<10} {r.channels:>5} {r.bell_fraction:>5.2f} "
      f"{r.clip_ratio_mean:>5.2f} {r.clip_ratio_min:>8.2f} {r.wgrad_g_cosine:>7.4f} "
      f"{r.dgrad_g_cosine:>7.4f} {r.dw_cosine:>7.4f} {r.dw_rel_error:>7.4f} "
      f"{r.dx_cosine:>7.4f} {r.dx_rel_error:>7.4f}"
    )
  return "\n".join(rows)
