"""Implicit-GEMM int8 convolution in Pallas: no patch tensor, the rows of each kernel tap's GEMM
gathered from the input as they are loaded.

    out[p, o] = out_scale * sum_t row_factor[src_t(p)] * sum_c lhs_q[src_t(p), c] * rhs[t, o, c]

p runs over the output positions (N * prod(out spatial) rows), t over the kernel taps, and
src_t(p) is the input row that tap t of output p reads: per spatial dim, i = o * stride - pad_lo
+ tap * rhs_dilation, divided by the input dilation where that divides it; a tap that lands on
padding (or between dilated inputs) reads zeros through the load's mask. So strides, padding,
input and kernel dilation and 1-D to 3-D convolutions are one kernel, and the forward product
and the input gradient (the forward conv of g with the flipped kernel, `geometry.dgrad_spec`;
a strided one runs per output phase, as `xla.subpixel_dgrad` does) are this kernel.

Each program computes a (block_m, block_n) tile of out over every tap and block_k-wide step of
the input channels, accumulating in int32. Scales, in the epilogue:
- `out_scale`: one float, the product of the per-tensor scales (x's and w's over 127**2);
- `row_factor`: one float per input row (the per-row g scales of `dgrad_granularity=
  "per_row"`, over 127), applied per tap to that tap's int32 sum, in float32.
The lhs is int8, or float quantized on load (`quantize`): each loaded element is multiplied by
its row's 127/s (or the tensor's), clipped and rounded in registers, nearest or stochastic with
the counter-based dither of `numerics` on the element's row-major position in the lhs, so the
codes equal the jnp quantizer's and no int8 copy of the lhs is written.

Ungrouped convs only (a grouped or depthwise conv stays on another implementation); the reduction
T * C_in must fit one int32 (`numerics.MAX_INT32_REDUCTION`, 133,144 terms). Any channel
counts: a step past the last input channel is masked (a narrow layer, the 3-channel stem say,
wastes most of each 32-wide int8 wgmma step: the cost model counts it, and auto picks
another implementation where that loses).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from daq_jax.pallas.common import (
  check_compilable,
  quantize_in_kernel,
  triton_params,
  vector,
  whole,
)
from daq_jax.quant import numerics
from daq_jax.quant.geometry import ConvSpec, out_spatial
from daq_jax.quant.numerics import MAX_INT32_REDUCTION

_NT = (((1,), (1,)), ((), ()))  # (bm, bk) x (bn, bk) -> (bm, bn)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvBlockSizes:
  """Tiles (powers of two) and Triton launch parameters of the implicit-GEMM kernels.

  Attributes:
    block_m: output positions (rows) per program; int8 wgmma needs >= 64.
    block_n: output channels per program, at most (a narrower layer takes the next power of
      two >= 16 above its width).
    block_k: input channels per step, at most (a narrower layer takes the next power of two
      >= 32 above its width, 32 being the K of one int8 wgmma; a tail is masked).
    num_warps, num_stages: Triton's launch parameters; 8 warps keep a 128 x 128 int32 tile,
      the float accumulator of per-row scales and the quantize-on-load temporaries in
      registers (4 warps spill, ptxas).
    max_reduction: the longest reduction accumulated in one int32 (the wgrad kernel flushes
      into float32 past it; tests lower it).
  """

  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 8
  num_stages: int = 3
  max_reduction: int = MAX_INT32_REDUCTION

  def __post_init__(self):
    for name, least in (("block_m", 16), ("block_n", 16), ("block_k", 16)):
      value = getattr(self, name)
      if value < least or value & (value - 1):
        raise ValueError(f"ConvBlockSizes: {name}={value} must be a power of two >= {least}")

  def channel_step(self, channels: int) -> int:
    """Input channels per step: `block_k`, or the next power of two >= 32 above `channels`."""
    return min(self.block_k, max(32, 1 << (channels - 1).bit_length()))

  def out_block(self, channels: int) -> int:
    return min(self.block_n, max(16, 1 << (channels - 1).bit_length()))


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The static shape arithmetic of one conv: per spatial dim, its sizes and geometry."""

  in_sizes: tuple[int, ...]
  out_sizes: tuple[int, ...]
  ksize: tuple[int, ...]
  strides: tuple[int, ...]
  pads_lo: tuple[int, ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]

  @classmethod
  def of(cls, lhs_shape, rhs_shape, spec: ConvSpec) -> Geometry:
    return cls(
      in_sizes=tuple(lhs_shape[1:-1]),
      out_sizes=tuple(out_spatial(lhs_shape, rhs_shape, spec)),
      ksize=tuple(rhs_shape[:-2]),
      strides=tuple(spec.window_strides),
      pads_lo=tuple(lo for lo, _ in spec.padding),
      lhs_dilation=tuple(spec.lhs_dilation),
      rhs_dilation=tuple(spec.rhs_dilation),
    )

  @property
  def taps(self) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(k) for k in self.ksize)))

  def positions(self, rows: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(batch index, [output coordinate per spatial dim]) of output rows (row-major)."""
    coords = []
    rest = rows
    for size in reversed(self.out_sizes):
      coords.append(rest % size)
      rest = rest // size
    return rest, coords[::-1]

  def source(self, batch, coords, tap) -> tuple[jax.Array, jax.Array]:
    """(input row, valid) that kernel tap `tap` of the outputs at `coords` reads; an invalid
    source (padding, or between dilated inputs) is row 0, to be masked."""
    row, valid = batch, None
    for o, t, size, s, lo, ld, rd in zip(
      coords,
      tap,
      self.in_sizes,
      self.strides,
      self.pads_lo,
      self.lhs_dilation,
      self.rhs_dilation,
    ):
      i = o * s - lo + t * rd
      ok = i >= 0
      if ld > 1:
        ok &= i % ld == 0
        i = i // ld
      ok &= i < size
      valid = ok if valid is None else valid & ok
      row = row * size + i
    return jnp.where(valid, row, 0), valid


def unsupported(lhs_shape, rhs_shape, spec: ConvSpec) -> str | None:
  """Why the kernels cannot compute this conv (None when they can)."""
  if spec.feature_group_count != 1:
    return (
      f"a grouped conv ({spec.feature_group_count} groups): the implicit-GEMM kernels are ungrouped"
    )
  taps, c_in = math.prod(rhs_shape[:-2]), rhs_shape[-2]
  if taps * c_in > MAX_INT32_REDUCTION:
    return f"{taps} taps x {c_in} channels overflow one int32 accumulator"
  return None


def check_call(what, name, operand, lhs_shape, rhs_shape, spec, quantize, seed, interpret):
  """The preconditions of an implicit-GEMM kernel call, each a clear error: a traced-for
  platform that can compile it, a supported conv, and an int8 `operand` without `quantize`
  or a float one with it (and a seed for stochastic rounding)."""
  check_compilable(interpret, f"implicit-GEMM {what}")
  reason = unsupported(lhs_shape, rhs_shape, spec)
  if reason:
    raise ValueError(f"implicit-GEMM {what}: {reason}")
  if (operand.dtype == jnp.int8) == bool(quantize):
    raise ValueError(
      f"implicit-GEMM {what}: an int8 {name} takes no quantize, a float one needs it; got "
      f"{operand.dtype} with quantize={quantize!r}"
    )
  if quantize == "stochastic" and seed is None:
    raise ValueError(f"implicit-GEMM {what}: stochastic quantize-on-load needs a seed")


def _conv_kernel(
  x_ref,
  w_ref,
  factor_ref,
  inv_ref,
  scale_ref,
  seed_ref,
  o_ref,
  *,
  geometry: Geometry,
  rows: int,
  channels: int,
  sizes: ConvBlockSizes,
  bk: int,
  per_row: bool,
  quantize: str | None,
  per_row_inverse: bool,
):
  bm, bn = o_ref.shape
  out_rows = pl.program_id(0) * bm + lax.iota(jnp.int32, bm)
  batch, coords = geometry.positions(out_rows)
  cols = lax.iota(jnp.int32, bk)
  steps = -(-channels // bk)
  inverse = inv_ref[0] if quantize and not per_row_inverse else None
  seed = seed_ref[0]
  acc_i = jnp.zeros((bm, bn), jnp.int32)
  acc_f = jnp.zeros((bm, bn), jnp.float32) if per_row else None
  for t, tap in enumerate(geometry.taps):
    src, valid = geometry.source(batch, coords, tap)
    valid &= out_rows < rows
    if quantize and per_row_inverse:
      inverse = plgpu.load(inv_ref.at[src], mask=valid, other=0.0)[:, None]

    def k_step(k, acc, src=src, valid=valid, t=t, inverse=inverse):
      channel = k * bk + cols
      mask = valid[:, None] if channels % bk == 0 else valid[:, None] & (channel < channels)
      a = plgpu.load(x_ref.at[src[:, None], channel[None, :]], mask=mask, other=0)
      if quantize:
        index = src[:, None].astype(jnp.uint32) * jnp.uint32(channels) + channel[None, :]
        a = quantize_in_kernel(a, inverse, quantize, seed, index.astype(jnp.uint32))
      b = w_ref[t, :, pl.ds(pl.multiple_of(k * bk, bk), bk)]
      return acc + lax.dot_general(a, b, _NT, preferred_element_type=jnp.int32)

    if per_row:
      tap_sum = lax.fori_loop(0, steps, k_step, jnp.zeros((bm, bn), jnp.int32))
      factor = plgpu.load(factor_ref.at[src], mask=valid, other=0.0)
      acc_f = acc_f + tap_sum.astype(jnp.float32) * factor[:, None]
    else:
      acc_i = lax.fori_loop(0, steps, k_step, acc_i)
  acc = acc_f if per_row else acc_i.astype(jnp.float32)
  o_ref[...] = (acc * scale_ref[0]).astype(o_ref.dtype)


@functools.partial(
  jax.jit,
  static_argnames=(
    "lhs_shape",
    "rhs_shape",
    "spec",
    "quantize",
    "out_dtype",
    "block_sizes",
    "interpret",
  ),
)
def int8_conv(
  lhs: jax.Array,
  rhs_t: jax.Array,
  out_scale: jax.Array,
  row_factor: jax.Array | None = None,
  inverse: jax.Array | None = None,
  seed: jax.Array | None = None,
  *,
  lhs_shape: tuple[int, ...],
  rhs_shape: tuple[int, ...],
  spec: ConvSpec,
  quantize: str | None = None,
  out_dtype=jnp.float32,
  block_sizes: ConvBlockSizes = ConvBlockSizes(),
  interpret: bool = False,
) -> jax.Array:
  """The conv of `spec` as an implicit GEMM, int8 products accumulated in int32, scaled.

  Args:
    lhs: (N, *spatial, C_in): int8, or float with `quantize`.
    rhs_t: int8 (T, C_out, C_in): the kernel, tap by tap K-major (`kernel_taps`).
    out_scale: float32 (): multiplies every output.
    row_factor: float32 (N * prod(spatial),) or None: one factor per input row, applied to
      each tap's int32 sum before the taps are added (per-row dequantization).
    inverse: float32, 127/s of the lhs for `quantize`: () one for all, or per input row.
    seed: uint32 () for stochastic `quantize` (`numerics.seeds`).
    lhs_shape, rhs_shape: the conv's operand shapes ((*k, C_in, C_out) for the rhs).
    spec: the conv's geometry (groups = 1).
    quantize: None (an int8 lhs), "nearest" or "stochastic": how the float lhs is rounded as
      it is loaded.
    out_dtype: float32 or bfloat16.
    block_sizes: tiles and launch parameters.
    interpret: run the Pallas interpreter (any backend).

  Returns:
    (N, *out spatial, C_out) in `out_dtype`.
  """
  check_call("int8_conv", "lhs", lhs, lhs_shape, rhs_shape, spec, quantize, seed, interpret)
  s = block_sizes
  geometry = Geometry.of(lhs_shape, rhs_shape, spec)
  taps, c_out, c_in = rhs_t.shape
  rows = lhs_shape[0] * math.prod(geometry.out_sizes)
  bk, bn = s.channel_step(c_in), s.out_block(c_out)
  out_p, in_p = -(-c_out // bn) * bn, -(-c_in // bk) * bk
  rows_p = -(-rows // s.block_m) * s.block_m
  x2d = lhs.reshape(-1, c_in)
  pads = ((0, 0), (0, out_p - c_out), (0, in_p - c_in))
  w = jnp.pad(rhs_t, pads) if (out_p, in_p) != (c_out, c_in) else rhs_t
  factor = vector(row_factor, jnp.float32)
  inv = vector(inverse, jnp.float32)
  kernel = functools.partial(
    _conv_kernel,
    geometry=geometry,
    rows=rows,
    channels=c_in,
    sizes=s,
    bk=bk,
    per_row=row_factor is not None,
    quantize=quantize,
    per_row_inverse=inv.shape[0] > 1,
  )
  scalars = (jnp.reshape(out_scale, (1,)).astype(jnp.float32), vector(seed, jnp.uint32))
  out = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((rows_p, out_p), out_dtype),
    grid=(rows_p // s.block_m, out_p // bn),
    in_specs=[
      whole(x2d),
      pl.BlockSpec((taps, bn, in_p), lambda i, j: (0, j, 0)),
      whole(factor),
      whole(inv),
      *map(whole, scalars),
    ],
    out_specs=pl.BlockSpec((s.block_m, bn), lambda i, j: (i, j)),
    compiler_params=triton_params(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )(x2d, w, factor, inv, *scalars)
  if (rows_p, out_p) != (rows, c_out):
    out = out[:rows, :c_out]
  return out.reshape(lhs_shape[0], *geometry.out_sizes, c_out)


def kernel_taps(rhs: jax.Array) -> jax.Array:
  """(*k, C_in, C_out) -> (T, C_out, C_in): each tap's kernel K-major, as `int8_conv` takes."""
  return jnp.swapaxes(rhs.reshape(-1, *rhs.shape[-2:]), 1, 2)


def int8_conv_reference(
  lhs,
  rhs_t,
  out_scale,
  row_factor=None,
  inverse=None,
  seed=None,
  *,
  lhs_shape,
  rhs_shape,
  spec: ConvSpec,
  quantize=None,
  out_dtype=jnp.float32,
  block_sizes=None,
  interpret=False,
):
  """The same conv in plain jnp (`block_sizes` and `interpret` are accepted and ignored): the
  lhs quantized by the jnp quantizer, each tap's rows gathered, int32 products per tap."""
  del block_sizes, interpret
  geometry = Geometry.of(lhs_shape, rhs_shape, spec)
  c_in = rhs_t.shape[-1]
  x2d = lhs.reshape(-1, c_in)
  if quantize:
    step = jnp.reshape(inverse, (-1, 1) if jnp.size(inverse) > 1 else ())
    x2d = numerics.round_steps(x2d.astype(jnp.float32) * step, rounding=quantize, seed=seed)
  rows = lhs_shape[0] * math.prod(geometry.out_sizes)
  batch, coords = geometry.positions(jnp.arange(rows))
  sums, total = jnp.zeros((rows, rhs_t.shape[1]), jnp.int32), 0.0
  for t, tap in enumerate(geometry.taps):
    src, valid = geometry.source(batch, coords, tap)
    a = jnp.where(valid[:, None], x2d[src], 0)
    part = jnp.matmul(a, rhs_t[t].T, preferred_element_type=jnp.int32)
    if row_factor is None:
      sums = sums + part
    else:
      factor = jnp.where(valid, jnp.reshape(row_factor, (-1,))[src], 0.0)
      total = total + part.astype(jnp.float32) * factor[:, None]
  total = sums.astype(jnp.float32) if row_factor is None else total
  out = (total * out_scale).astype(out_dtype)
  return out.reshape(lhs_shape[0], *geometry.out_sizes, rhs_t.shape[1])
