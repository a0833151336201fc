"""The gradient quantizer: DAQ's per-channel distribution test and magnitude-aware clipping,
and the baselines' rules (plain max-abs, UI8's direction-sensitive clipping).

The output gradient g of a layer (channels last) is quantized twice:
- for the weight gradient, per output channel (or per tensor), with a clip value chosen by
  `cfg.wgrad_clip`;
- for the input gradient, with one global clip value chosen by `cfg.dgrad_clip` (or, with
  `cfg.dgrad_granularity="per_row"`, one max-abs scale per output position).

Per-layer state (one float per output channel for per-channel MCS) is read from the previous
step and a new value is returned; the quantized ops hand it out of the backward pass as the
cotangent of their state input.

References:
  Zhao et al., "Distribution Adaptive INT8 Quantization for Training CNNs", AAAI 2021.
  Zhu et al., "Towards Unified INT8 Training for Convolutional Neural Network", CVPR 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from daq_jax.quant import numerics
from daq_jax.quant.config import QuantConfig

State = dict[str, jax.Array]


class ClipStats(NamedTuple):
  """Statistics of the columns of a 2-D view (M, C) of g, each of shape (C,)."""

  gmax: jax.Array  # max |g|
  above_sigma: jax.Array  # r: fraction of elements with |g| > std (population, about the mean)

  def is_bell(self, cfg: QuantConfig) -> jax.Array:
    """True for bell-shaped (Gaussian-like) columns, False for sharp inverted-T ones."""
    return self.above_sigma > cfg.bell_threshold


class QuantizedGradient(NamedTuple):
  """Both quantizations of g, and what the layer's state becomes.

  Attributes:
    wgrad_q: int8 (M, C), the wgrad-path g as a 2-D view (channels last); or, where the path
      quantizes on load (`quantize_gradient(defer=...)`), a `numerics.Deferred` of that view.
    wgrad_scale: float32 clip values, (C,) per channel or () per tensor.
    dgrad_q: int8, g's shape (or a `numerics.Deferred` of g).
    dgrad_scale: float32 (), one global scale, or (*g.shape[:-1], 1), one per output
      position (`dgrad_granularity="per_row"`).
    new_state: the layer's state for the next step.
    wgrad_stats: the statistics the wgrad clip rule saw (per channel or per tensor).
  """

  wgrad_q: jax.Array
  wgrad_scale: jax.Array
  dgrad_q: jax.Array
  dgrad_scale: jax.Array
  new_state: State
  wgrad_stats: ClipStats

  @property
  def dgrad(self) -> numerics.QTensor | numerics.Deferred:
    """The dgrad-path g with its scale (global, or one per row), or deferred."""
    return _operand(self.dgrad_q, self.dgrad_scale)

  @property
  def wgrad(self) -> numerics.QTensor | numerics.Deferred:
    """The wgrad-path g, (M, C), with its per-channel (or per-tensor) scale, or deferred."""
    return _operand(self.wgrad_q, self.wgrad_scale)

  def dequantized(self, shape) -> tuple[jax.Array, jax.Array]:
    """(dgrad-path g, wgrad-path g) back in float32, both of g's `shape` (the float twin)."""
    dgrad, wgrad = (numerics.quantize_now(op) for op in (self.dgrad, self.wgrad))
    return dgrad.dequantize(), wgrad.dequantize().reshape(shape)


def _operand(q, scale) -> numerics.QTensor | numerics.Deferred:
  return q if isinstance(q, numerics.Deferred) else numerics.QTensor(q, scale)


def init_state(cfg: QuantConfig, channels: int) -> State:
  """The state of a layer before its first step: zeros, read as 'no history yet'."""
  shape = (channels,) if cfg.wgrad_granularity == "per_channel" else ()
  state = {
    "wgrad_clip": jnp.zeros(shape, jnp.float32),
    "dgrad_clip": jnp.zeros((), jnp.float32),
  }
  if "dsgc" in (cfg.wgrad_clip, cfg.dgrad_clip):
    state["deviation"] = jnp.zeros((), jnp.float32)
  return state


# What the quantizer saw in a step, for logging, apart from the state it learns from and never
# read back: the share of inverted-T channels in the wgrad path (live channels, by the bell
# test with cfg.bell_threshold), the mean wgrad clip / max|g| over them, and the dgrad scale.
# An op hands them out of the backward pass as the cotangent of an input of zeros
# (`init_statistics`, or any subset of its keys); given none, it computes none.
STATISTICS = ("inverted_t", "clip_ratio", "dgrad_scale")


def init_statistics() -> State:
  """The statistics input of an op: zero scalars, whose cotangent is the step's statistics."""
  return {name: jnp.zeros((), jnp.float32) for name in STATISTICS}


def statistics(gq: QuantizedGradient, cfg: QuantConfig, names=STATISTICS) -> State:
  """The statistics `names` (of `STATISTICS`) of a quantized gradient: scalars, from what the
  quantizer computed; nothing is computed for no names."""
  if not names:
    return {}
  stats = gq.wgrad_stats
  live = stats.gmax > 0
  count = jnp.maximum(jnp.sum(live), 1).astype(jnp.float32)
  clip = jnp.broadcast_to(gq.wgrad_scale, stats.gmax.shape)
  ratio = clip / jnp.where(live, stats.gmax, 1.0)
  every = {
    "inverted_t": jnp.sum(live & ~stats.is_bell(cfg)) / count,
    "clip_ratio": jnp.sum(jnp.where(live, ratio, 0.0)) / count,
    "dgrad_scale": jnp.max(gq.dgrad_scale).astype(jnp.float32),  # per row: the largest
  }
  return {name: every[name] for name in names}


def check_statistics(stats: State) -> None:
  """Raises a clear error when `stats` are not scalars named in `STATISTICS`."""
  unknown = sorted(set(stats) - set(STATISTICS))
  shapes = {k: jnp.shape(v) for k, v in stats.items() if jnp.shape(v) != ()}
  if unknown or shapes:
    raise ValueError(
      f"quantizer statistics must be scalars named in {STATISTICS}; got unknown {unknown}, "
      f"non-scalar {shapes}"
    )


def check_state(state: State, cfg: QuantConfig, channels: int) -> None:
  """Raises a clear error when `state` does not fit the config and the layer's width."""
  want = jax.tree.map(jnp.shape, init_state(cfg, channels))
  got = jax.tree.map(jnp.shape, state)
  if want != got:
    raise ValueError(
      f"quantization state has shapes {got} but config {cfg.name!r} with {channels} output "
      f"channels needs {want} (was the state made for another config?)"
    )


def clip_stats(g2d: jax.Array) -> ClipStats:
  """Column statistics of a 2-D view (M, C) of g."""
  g2d = g2d.astype(jnp.float32)
  mag = jnp.abs(g2d)
  sigma = jnp.std(g2d, axis=0)
  return ClipStats(
    gmax=numerics.max_abs(g2d, axis=0),
    above_sigma=jnp.mean((mag > sigma).astype(jnp.float32), axis=0),
  )


def mcs_clip(stats: ClipStats, prev: jax.Array, cfg: QuantConfig) -> tuple[jax.Array, jax.Array]:
  """Magnitude-aware clipping: the clip value to use now and the state to carry.

  Bell-shaped columns are not clipped (s = max|g|); inverted-T columns use the recursive
  s(t) = (1 - k*A) s(t-1) + A max|g(t)|. The carried state always tracks that recursion, so a
  column that changes type continues from its history. A state of 0 (or NaN, after a
  non-finite step) means no history: the recursion starts at the current max.

  Returns:
    (clip, ema), both of the statistics' shape.
  """
  has_history = prev > 0
  ema = (1.0 - cfg.mcs_k * cfg.mcs_a) * jnp.where(has_history, prev, 0.0) + cfg.mcs_a * stats.gmax
  ema = jnp.where(has_history, ema, stats.gmax)
  return jnp.where(stats.is_bell(cfg), stats.gmax, ema), ema


def cosine_distance(a: jax.Array, b: jax.Array, axis=None) -> jax.Array:
  """1 - cos(a, b) over `axis`; 0 where either side is all zeros."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  dot = jnp.sum(a * b, axis=axis)
  norm = jnp.sqrt(jnp.sum(a * a, axis=axis) * jnp.sum(b * b, axis=axis))
  safe = jnp.where(norm > 0, norm, 1.0)
  return jnp.where(norm > 0, 1.0 - dot / safe, 0.0)


def dsgc_clip(g2d: jax.Array, stats: ClipStats, cfg: QuantConfig) -> tuple[jax.Array, jax.Array]:
  """UI8's direction-sensitive clipping: the candidate clip with the smallest cosine distance.

  Candidates are `cfg.dsgc_ratios` times max|g| per column, evaluated with nearest rounding.

  Returns:
    (clip, distance) of the statistics' shape.
  """

  def distance(ratio):
    clip = ratio * stats.gmax
    return cosine_distance(g2d, numerics.fake_quantize(g2d, clip), axis=0)

  ratios = jnp.asarray(cfg.dsgc_ratios, jnp.float32)
  distances = jax.lax.map(distance, ratios)  # (R, C): one pass over g at a time
  best = jnp.argmin(distances, axis=0)
  clip = ratios[best] * stats.gmax
  return clip, jnp.take_along_axis(distances, best[None], axis=0)[0]


def _clip(rule: str, view, stats: ClipStats, prev, cfg):
  """(clip, carried state) of one rule on the columns of `view`."""
  if rule == "max":
    return stats.gmax, stats.gmax
  if rule == "mcs":
    return mcs_clip(stats, prev, cfg)
  clip, _ = dsgc_clip(view, stats, cfg)
  return clip, clip


def _quantize(v, scale, rounding: str, seed, defer: bool):
  if defer:
    return numerics.Deferred(v, scale, seed, rounding)
  return numerics.quantize_tensor(v, scale, rounding=rounding, seed=seed)


def quantize_gradient(
  g: jax.Array,
  state: State,
  cfg: QuantConfig,
  key: jax.Array | None = None,
  defer: tuple[str, ...] = (),
) -> QuantizedGradient:
  """Quantizes a layer's output gradient for wgrad (per channel) and dgrad (global).

  Args:
    g: dL/dy, channels last, any rank >= 1.
    state: the layer's state from the previous step (see `init_state`).
    cfg: the quantization config.
    key: PRNG key, required when either path rounds stochastically (`cfg.stochastic`).
    defer: the paths ("dgrad", "wgrad") whose int8 tensor is not computed here but handed
      on as a `numerics.Deferred` (scales, seeds and state computed as always), for an
      implementation that quantizes g as it loads it.

  Returns:
    A `QuantizedGradient`.
  """
  channels = g.shape[-1]
  if cfg.stochastic and key is None:
    raise ValueError(
      f"quant config {cfg.name!r} rounds stochastically and needs a PRNG key (Flax layers: "
      "pass rngs={'quant': key} to apply)"
    )
  wseed, dseed = numerics.seeds(key, 2) if cfg.stochastic else (None, None)
  g2d = g.reshape(-1, channels)
  flat = g.reshape(-1, 1)  # per-tensor rules see one column
  # Statistics XLA finds unused (std for a `max` rule, say) are dead code and cost nothing.
  tensor_stats = clip_stats(flat)

  dclip, dstate = _clip(cfg.dgrad_clip, flat, tensor_stats, state["dgrad_clip"][None], cfg)
  dgrad_scale = dclip[0]
  if cfg.dgrad_granularity == "per_row":
    # One max-abs scale per output position (the clip rule is `max`); the carried state stays
    # the tensor's max, so the state has one shape whatever the granularity.
    dgrad_scale = numerics.max_abs(g.astype(jnp.float32), axis=-1, keepdims=True)
  dgrad_q = _quantize(g, dgrad_scale, cfg.dgrad_rounding, dseed, "dgrad" in defer)
  new_state = {"dgrad_clip": dstate[0]}

  per_channel = cfg.wgrad_granularity == "per_channel"
  if cfg.shared_gradient:
    wgrad_scale, wgrad_q = dgrad_scale, dgrad_q.reshape(g2d.shape)
    wstate, wstats = dstate[0], tensor_stats
  else:
    view = g2d if per_channel else flat
    wstats = clip_stats(g2d) if per_channel else tensor_stats
    prev = state["wgrad_clip"] if per_channel else state["wgrad_clip"][None]
    wgrad_scale, wstate = _clip(cfg.wgrad_clip, view, wstats, prev, cfg)
    if not per_channel:
      wgrad_scale, wstate = wgrad_scale[0], wstate[0]
    wgrad_q = _quantize(g2d, wgrad_scale, cfg.wgrad_rounding, wseed, "wgrad" in defer)
  new_state["wgrad_clip"] = wstate
  if "deviation" in state:
    # UI8 scales a layer's learning rate by the deviation of the gradient the layer actually
    # used (after stochastic rounding, where it rounds so), not of the clip search's nearest
    # rounding; per-channel deviations are averaged into the layer's one.
    if cfg.wgrad_clip == "dsgc":
      used = numerics.quantize_now(_operand(wgrad_q, wgrad_scale)).dequantize()
      deviation = cosine_distance(g2d, used, axis=0 if per_channel else None)
    else:
      used = numerics.quantize_now(_operand(dgrad_q, dgrad_scale)).dequantize()
      deviation = cosine_distance(g, used)
    new_state["deviation"] = jnp.mean(deviation)
  gq = QuantizedGradient(
    wgrad_q=wgrad_q,
    wgrad_scale=wgrad_scale,
    dgrad_q=dgrad_q,
    dgrad_scale=dgrad_scale,
    new_state=new_state,
    wgrad_stats=wstats,
  )
  return gq
