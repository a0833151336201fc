"""DAQ's gradient quantizer on Pallas kernels over a 2-D grid of (rows, channels) tiles.

g is viewed as (M, C), M = N*H*W rows. Every kernel runs one program per (block_m, block_c)
tile, so a layer with 64 channels and 400,000 rows still has thousands of programs:
1. `_partials_kernel`: per tile, the column sums, max |g| and count of non-finite values;
2. `_squares_kernel`: per tile, the squared deviations from the column mean;
3. `_count_kernel`: per tile, the count of |g| above the column's sigma;
4. `_quantize_kernel`: both int8 tensors, from the per-channel and global 127/s.
Between them, XLA sums the (M / block_m, C) partials and computes every per-channel scalar:
mean, sigma (IEEE sqrt), the clip rule (`gradient.mcs_clip` itself) and 127/s
(`numerics.inverse_step`, IEEE division). The kernels only add, compare, multiply and round,
so a clip value gives the same int8 codes as the jnp quantizer on every platform (Triton's
division and sqrt are approximate; none is left in a kernel). The sums run in another order
than XLA's reductions, so mean and sigma agree to float32 rounding.

This covers DAQ's and GVQ's configurations (per-channel wgrad scales with `mcs` or `max`
clipping, global `max` for dgrad) with either rounding on either path: stochastic rounding
draws its bits in the kernel from the counter-based `numerics.dither` (a seed per path and
each element's position), so it gives the jnp quantizer's int8 codes too. Other
configurations use the jnp quantizer (`daq_jax.quant.gradient`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from daq_jax.pallas.common import check_compilable, quantize_in_kernel, triton_params
from daq_jax.quant import gradient, numerics
from daq_jax.quant.config import QuantConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradQuantBlockSizes:
  """Tiles (powers of two) and Triton launch parameters of the kernels.

  Attributes:
    block_m: rows per tile of the statistics kernels.
    quantize_block_m: rows per tile of the quantize kernel, which holds two outputs per
      element: at 256 x 64 with 4 warps it needs 255 registers a thread and spills (ptxas).
    block_c: channels per tile, at most: a layer with fewer channels uses the next power of
      two (>= 16) above its width.
    num_warps, num_stages: Triton's launch parameters.
  """

  block_m: int = 256
  quantize_block_m: int = 64
  block_c: int = 64
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    if self.block_m % self.quantize_block_m:
      raise ValueError(
        f"quantize_block_m={self.quantize_block_m} must divide block_m={self.block_m}"
      )
    for name in ("block_m", "quantize_block_m", "block_c"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= 16")

  def channel_block(self, channels: int) -> int:
    return min(self.block_c, max(16, 1 << (channels - 1).bit_length()))


def supports(cfg: QuantConfig) -> bool:
  """Whether the fused kernels implement `cfg`'s gradient quantization."""
  return (
    cfg.wgrad_granularity == "per_channel"
    and cfg.wgrad_clip in ("max", "mcs")
    and cfg.dgrad_clip == "max"
    and cfg.dgrad_granularity == "per_tensor"
  )


def _valid_rows(rows: int, shape) -> jax.Array:
  first = pl.program_id(0) * shape[0]
  return (first + lax.broadcasted_iota(jnp.int32, shape, 0)) < rows


def _partials_kernel(g_ref, sum_ref, max_ref, bad_ref):
  g = g_ref[...]  # padded rows and channels are zeros: they add nothing to a sum or a max
  sum_ref[...] = jnp.sum(g, axis=0)
  max_ref[...] = jnp.max(jnp.abs(g), axis=0)
  bad_ref[...] = jnp.sum(((g - g) != 0).astype(jnp.float32), axis=0)  # NaN and inf


def _squares_kernel(g_ref, mean_ref, out_ref, *, rows: int):
  g = g_ref[...]
  deviation = jnp.where(_valid_rows(rows, g.shape), g - mean_ref[...][None, :], 0.0)
  out_ref[...] = jnp.sum(deviation * deviation, axis=0)


def _count_kernel(g_ref, sigma_ref, out_ref, *, rows: int):
  g = g_ref[...]
  above = _valid_rows(rows, g.shape) & (jnp.abs(g) > sigma_ref[...][None, :])
  out_ref[...] = jnp.sum(above.astype(jnp.float32), axis=0)


def _quantize_kernel(
  g_ref, winv_ref, dinv_ref, seed_ref, wq_ref, dq_ref, *, channels: int, roundings
):
  g = g_ref[...]
  index = None
  if "stochastic" in roundings:  # the element's row-major position in the (M, C) view of g
    rows = pl.program_id(0) * g.shape[0] + lax.broadcasted_iota(jnp.int32, g.shape, 0)
    cols = pl.program_id(1) * g.shape[1] + lax.broadcasted_iota(jnp.int32, g.shape, 1)
    index = rows.astype(jnp.uint32) * jnp.uint32(channels) + cols.astype(jnp.uint32)
  wrounding, drounding = roundings
  wq_ref[...] = quantize_in_kernel(g, winv_ref[...][None, :], wrounding, seed_ref[0], index)
  dq_ref[...] = quantize_in_kernel(g, dinv_ref[...][:, None], drounding, seed_ref[1], index)


@functools.partial(jax.jit, static_argnames=("cfg", "block_sizes", "interpret"))
def quantize_gradient(
  g: jax.Array,
  state: gradient.State,
  cfg: QuantConfig,
  key: jax.Array | None = None,
  *,
  block_sizes: GradQuantBlockSizes = GradQuantBlockSizes(),
  interpret: bool = False,
) -> gradient.QuantizedGradient:
  """The fused version of `gradient.quantize_gradient` for the configs `supports` accepts.

  Args:
    g: dL/dy, channels last.
    state: the layer's state (`gradient.init_state(cfg, C)`).
    cfg: the quantization config.
    key: PRNG key, required when either path rounds stochastically (the jnp quantizer's
      seeds are drawn from it the same way, so both give the same codes).
    block_sizes: tiles and launch parameters.
    interpret: run the Pallas interpreter (any backend).
  """
  if not supports(cfg):
    raise ValueError(f"the fused gradient quantizer does not implement config {cfg}")
  check_compilable(interpret, "quantize_gradient")
  if cfg.stochastic and key is None:
    raise ValueError(f"quant config {cfg.name!r} rounds stochastically and needs a PRNG key")
  seeds = numerics.seeds(key, 2) if cfg.stochastic else jnp.zeros((2,), jnp.uint32)
  s = block_sizes
  channels = g.shape[-1]
  bc = s.channel_block(channels)
  g2d = g.reshape(-1, channels).astype(jnp.float32)
  rows = g2d.shape[0]
  g_p = jnp.pad(g2d, ((0, -rows % s.block_m), (0, -channels % bc)))
  mp, cp = g_p.shape
  grid = (mp // s.block_m, cp // bc)
  call = functools.partial(
    pl.pallas_call,
    grid=grid,
    compiler_params=triton_params(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )
  tile = pl.BlockSpec((s.block_m, bc), lambda i, j: (i, j))
  per_channel = pl.BlockSpec((bc,), lambda i, j: (j,))
  partial = pl.BlockSpec((pl.squeezed, bc), lambda i, j: (i, j))
  partials = jax.ShapeDtypeStruct((grid[0], cp), jnp.float32)

  sums, maxima, bad = call(
    _partials_kernel, out_shape=(partials,) * 3, in_specs=[tile], out_specs=(partial,) * 3
  )(g_p)

  def column_sums(kernel, vector):
    """A pass over g with a per-channel vector: its per-tile partials summed over rows."""
    parts = call(
      functools.partial(kernel, rows=rows),
      out_shape=partials,
      in_specs=[tile, per_channel],
      out_specs=partial,
    )(g_p, vector)
    return jnp.sum(parts, axis=0)

  mean = jnp.sum(sums, axis=0) / rows
  sigma = jnp.sqrt(column_sums(_squares_kernel, mean) / rows)
  above = (column_sums(_count_kernel, sigma) / rows)[:channels]
  gmax = jnp.where(jnp.sum(bad, axis=0) > 0, jnp.nan, jnp.max(maxima, axis=0))[:channels]
  stats = gradient.ClipStats(gmax=gmax, above_sigma=above)
  if cfg.wgrad_clip == "mcs":
    clip, ema = gradient.mcs_clip(stats, state["wgrad_clip"], cfg)
  else:
    clip = ema = gmax
  dgrad_scale = numerics.max_abs(gmax)  # NaN when a channel max is NaN
  small = pl.BlockSpec((s.quantize_block_m, bc), lambda i, j: (i, j))
  kernel = functools.partial(
    _quantize_kernel, channels=channels, roundings=(cfg.wgrad_rounding, cfg.dgrad_rounding)
  )
  wq, dq = pl.pallas_call(
    kernel,
    out_shape=(jax.ShapeDtypeStruct((mp, cp), jnp.int8),) * 2,
    grid=(mp // s.quantize_block_m, cp // bc),
    in_specs=[
      small,
      per_channel,
      pl.BlockSpec((1,), lambda i, j: (0,)),
      pl.BlockSpec((2,), lambda i, j: (0,)),
    ],
    out_specs=(small, small),
    compiler_params=triton_params(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )(
    g_p,
    jnp.pad(numerics.inverse_step(clip), (0, cp - channels)),
    jnp.reshape(numerics.inverse_step(dgrad_scale), (1,)),
    seeds,
  )
  return gradient.QuantizedGradient(
    wgrad_q=wq[:rows, :channels],
    wgrad_scale=clip,
    dgrad_q=dq[:rows, :channels].reshape(g.shape),
    dgrad_scale=dgrad_scale,
    new_state={"dgrad_clip": dgrad_scale, "wgrad_clip": ema},
    wgrad_stats=stats,
  )
