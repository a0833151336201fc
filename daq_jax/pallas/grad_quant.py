"""DAQ's gradient quantizer as two Pallas kernels.

1. `_stats_kernel`: one program per block of channels walks down the N*H*W rows of g three
   times (sum and max, then the squared deviations, then the count above sigma: sigma needs
   the mean, the count needs sigma) and applies the clip rule in its epilogue, writing the
   per-channel clip, the carried MCS state, max|g| and the fraction above sigma.
2. `_quantize_kernel`: one pass over g writing both int8 tensors, per-channel scales (wgrad)
   and the global scale (dgrad).

The global dgrad scale, max over the channel maxima, is a reduction over (C,) between them.
This covers DAQ's and GVQ's configurations (per-channel wgrad scales with `mcs` or `max`
clipping, global `max` for dgrad, nearest rounding); other configurations use the jnp
quantizer (`daq_jax.quant.gradient`), which this file's reference also is.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from daq_jax.quant import gradient, numerics
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.numerics import QMAX


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradQuantBlockSizes:
  """Tiles (powers of two) and Triton launch parameters of both kernels."""

  block_m: int = 256
  block_c: int = 32
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    for name in ("block_m", "block_c"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= 16")


def supports(cfg: QuantConfig) -> bool:
  """Whether the fused kernels implement `cfg`'s gradient quantization."""
  return (
    cfg.wgrad_granularity == "per_channel"
    and cfg.wgrad_clip in ("max", "mcs")
    and cfg.dgrad_clip == "max"
    and cfg.grad_rounding == "nearest"
  )


def _round_half_even(t):
  """jnp.round (ties to even) from floor and exact float arithmetic: Triton has no round."""
  f = jnp.floor(t)
  frac = t - f  # exact
  odd = (f - 2.0 * jnp.floor(f * 0.5)) != 0
  up = (frac > 0.5) | ((frac == 0.5) & odd)
  return f + up.astype(t.dtype)


def _quantize(v, scale):
  """`numerics.quantize` with nearest rounding, in operations the Triton lowering has."""
  inverse = jnp.where(scale > 0, QMAX / jnp.where(scale > 0, scale, 1.0), 0.0)
  t = jnp.clip(v * inverse, -QMAX, QMAX)
  return _round_half_even(t).astype(jnp.int8)


def _stats_kernel(
  g_ref, prev_ref, clip_ref, ema_ref, gmax_ref, above_ref, *, rows: int, sizes, cfg: QuantConfig
):
  bm, bc = sizes.block_m, sizes.block_c
  steps = g_ref.shape[0] // bm

  def block(i):
    g = g_ref[pl.ds(pl.multiple_of(i * bm, bm), bm), :]
    valid = (i * bm + lax.broadcasted_iota(jnp.int32, (bm, bc), 0)) < rows
    return g, valid

  def sum_max(i, carry):
    total, biggest, nonfinite = carry
    g, _ = block(i)  # padded rows are zeros: they add nothing to the sum or the max
    return (
      total + jnp.sum(g, axis=0),
      jnp.maximum(biggest, jnp.max(jnp.abs(g), axis=0)),
      nonfinite + jnp.sum(((g - g) != 0).astype(jnp.float32), axis=0),
    )

  zeros = jnp.zeros((bc,), jnp.float32)
  total, biggest, nonfinite = lax.fori_loop(0, steps, sum_max, (zeros, zeros, zeros))
  mean = total / rows

  def squares(i, acc):
    g, valid = block(i)
    return acc + jnp.sum(jnp.where(valid, (g - mean[None, :]) ** 2, 0.0), axis=0)

  sigma = jnp.sqrt(lax.fori_loop(0, steps, squares, zeros) / rows)

  def count(i, acc):
    g, valid = block(i)
    return acc + jnp.sum((valid & (jnp.abs(g) > sigma[None, :])).astype(jnp.float32), axis=0)

  above = lax.fori_loop(0, steps, count, zeros) / rows
  gmax = jnp.where(nonfinite > 0, jnp.nan, biggest)
  if cfg.wgrad_clip == "mcs":  # the jnp rule itself: it lowers to Triton as it is
    clip, ema = gradient.mcs_clip(gradient.ClipStats(gmax, above), prev_ref[...], cfg)
  else:
    clip = ema = gmax
  clip_ref[...] = clip
  ema_ref[...] = ema
  gmax_ref[...] = gmax
  above_ref[...] = above


def _quantize_kernel(g_ref, clip_ref, dscale_ref, wq_ref, dq_ref):
  g = g_ref[...]
  wq_ref[...] = _quantize(g, clip_ref[...][None, :])
  dq_ref[...] = _quantize(g, dscale_ref[...][:, None])


@functools.partial(jax.jit, static_argnames=("cfg", "block_sizes", "interpret"))
def quantize_gradient(
  g: jax.Array,
  state: gradient.State,
  cfg: QuantConfig,
  *,
  block_sizes: GradQuantBlockSizes = GradQuantBlockSizes(),
  interpret: bool = False,
) -> gradient.QuantizedGradient:
  """The fused version of `gradient.quantize_gradient` for the configs `supports` accepts.

  Args:
    g: dL/dy, channels last.
    state: the layer's state (`gradient.init_state(cfg, C)`).
    cfg: the quantization config.
    block_sizes: tiles and launch parameters.
    interpret: run the Pallas interpreter (any backend).
  """
  if not supports(cfg):
    raise ValueError(f"the fused gradient quantizer does not implement config {cfg}")
  s = block_sizes
  channels = g.shape[-1]
  g2d = g.reshape(-1, channels).astype(jnp.float32)
  rows = g2d.shape[0]
  g_p = jnp.pad(g2d, ((0, -rows % s.block_m), (0, -channels % s.block_c)))
  prev = jnp.pad(state["wgrad_clip"], (0, -channels % s.block_c))
  mp, cp = g_p.shape
  params = pltriton.CompilerParams(num_warps=s.num_warps, num_stages=s.num_stages)
  vector = jax.ShapeDtypeStruct((cp,), jnp.float32)
  channel_block = pl.BlockSpec((s.block_c,), lambda j: (j,))
  clip, ema, gmax, above = pl.pallas_call(
    functools.partial(_stats_kernel, rows=rows, sizes=s, cfg=cfg),
    out_shape=(vector,) * 4,
    grid=(cp // s.block_c,),
    in_specs=[pl.BlockSpec((mp, s.block_c), lambda j: (0, j)), channel_block],
    out_specs=(channel_block,) * 4,
    compiler_params=params,
    interpret=interpret,
  )(g_p, prev)
  dgrad_scale = numerics.max_abs(gmax[:channels])  # NaN when a channel max is NaN
  tile = pl.BlockSpec((s.block_m, s.block_c), lambda i, j: (i, j))
  wq, dq = pl.pallas_call(
    _quantize_kernel,
    out_shape=(jax.ShapeDtypeStruct((mp, cp), jnp.int8),) * 2,
    grid=(mp // s.block_m, cp // s.block_c),
    in_specs=[
      tile,
      pl.BlockSpec((s.block_c,), lambda i, j: (j,)),
      pl.BlockSpec((1,), lambda i, j: (0,)),
    ],
    out_specs=(tile, tile),
    compiler_params=params,
    interpret=interpret,
  )(g_p, clip, jnp.reshape(dgrad_scale, (1,)))
  gq = gradient.QuantizedGradient(
    wgrad_q=wq[:rows, :channels],
    wgrad_scale=clip[:channels],
    dgrad_q=dq[:rows, :channels].reshape(g.shape),
    dgrad_scale=dgrad_scale,
    new_state={"dgrad_clip": dgrad_scale, "wgrad_clip": ema[:channels]},
    wgrad_stats=gradient.ClipStats(gmax=gmax[:channels], above_sigma=above[:channels]),
  )
  return gradient.with_statistics(gq, state, cfg)


def quantize_gradient_reference(g, state, cfg, *, block_sizes=None, interpret=False):
  """The jnp quantizer with the same signature (`block_sizes`, `interpret` ignored)."""
  del block_sizes, interpret
  return gradient.quantize_gradient(g, state, cfg)
