"""The weight gradient of an int8 convolution as an implicit GEMM in Pallas: per kernel tap, the
input rows that tap reads gathered as they are loaded, no patch tensor.

    dw[t, c, o] = col_scale[o] * sum_p x_q[src_t(p), c] * g_q[p, o]

p runs over the output positions (N * prod(out spatial)), src_t(p) is the input row tap t of
output p reads (`implicit_conv.Geometry.source`; zeros on padding). The reduction over p is
long (N * H * W: 401,408 at ResNet-50's first stage, batch 128), so it is split: the grid is
(split ranges x taps, C_in tiles, C_out tiles), each program reduces its range of p for one tap
into a float32 partial tile and XLA sums the ranges; inside a range the int32 accumulator is
flushed to a float32 one every `MAX_INT32_REDUCTION // block_k` steps, so any length is exact up
to float32 rounding of the flushed sums (as `gemm.int8_matmul_nt` does).

Both operands are read with the reduction axis outer (channels last in memory); the kernel
hands the dot (block_k, block_m)^T x (block_k, block_n), and Triton lays the tiles out K-major
for int8 wgmma in shared memory (compiled for sm_90a: `wgmma...s32.s8.s8`, tests/pallas/
test_ptx.py). g is int8 with per-column scales in `col_scale`, or float quantized on load
(`quantize`) with per-column 127/s and the dither of `numerics` on the element's row-major
position in g (the codes of `gradient.quantize_gradient`'s wgrad path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from daq_jax.pallas.common import quantize_in_kernel, triton_params, vector, whole
from daq_jax.pallas.implicit_conv import ConvBlockSizes, Geometry, check_call
from daq_jax.quant import numerics
from daq_jax.quant.geometry import ConvSpec
from daq_jax.quant.numerics import MAX_INT32_REDUCTION

_TN = (((0,), (0,)), ((), ()))  # (bk, bm) x (bk, bn) -> (bm, bn)
DEFAULT_BLOCK_SIZES = ConvBlockSizes()
TARGET_PROGRAMS = 264  # about two programs per SM of an H100 or H200 (132 SMs)
MIN_STEPS_PER_SPLIT = 4


def split_count(tiles: int, steps: int, split_k: int = 0) -> int:
  """The number of ranges of the reduction: `split_k`, or (0) enough for about
  `TARGET_PROGRAMS` programs, each at least `MIN_STEPS_PER_SPLIT` steps long."""
  if split_k:
    return max(1, min(split_k, steps))
  return max(1, min(-(-TARGET_PROGRAMS // tiles), steps // MIN_STEPS_PER_SPLIT))


def _wgrad_kernel(
  x_ref,
  g_ref,
  inv_ref,
  scale_ref,
  seed_ref,
  o_ref,
  *,
  geometry: Geometry,
  rows: int,
  in_channels: int,
  out_channels: int,
  steps: int,
  bk: int,
  quantize: str | None,
  max_reduction: int,
):
  bm, bn = o_ref.shape
  taps = len(geometry.taps)
  program = pl.program_id(0)
  tap_index, split = program % taps, program // taps
  tap, rest = [], tap_index
  for k in reversed(geometry.ksize):  # the tap's kernel coordinates, row-major
    tap.append(rest % k)
    rest = rest // k
  tap = tap[::-1]
  c_in = pl.program_id(1) * bm + lax.iota(jnp.int32, bm)
  c_out = pl.program_id(2) * bn + lax.iota(jnp.int32, bn)
  c_in_ok, c_out_ok = c_in < in_channels, c_out < out_channels
  if quantize:
    inverse = plgpu.load(inv_ref.at[c_out], mask=c_out_ok, other=0.0)[None, :]
  seed = seed_ref[0]
  first = split * steps * bk

  def k_step(k, acc):
    p = first + k * bk + lax.iota(jnp.int32, bk)
    p_ok = p < rows
    batch, coords = geometry.positions(p)
    src, valid = geometry.source(batch, coords, tap)
    valid &= p_ok
    x = plgpu.load(
      x_ref.at[src[:, None], c_in[None, :]], mask=valid[:, None] & c_in_ok[None, :], other=0
    )
    g = plgpu.load(
      g_ref.at[p[:, None], c_out[None, :]], mask=p_ok[:, None] & c_out_ok[None, :], other=0
    )
    if quantize:
      index = p[:, None].astype(jnp.uint32) * jnp.uint32(out_channels) + c_out[None, :]
      g = quantize_in_kernel(g, inverse, quantize, seed, index.astype(jnp.uint32))
    return acc + lax.dot_general(x, g, _TN, preferred_element_type=jnp.int32)

  def int32_sum(start, stop):
    return lax.fori_loop(start, stop, k_step, jnp.zeros((bm, bn), jnp.int32))

  flush = max_reduction // bk
  if steps <= flush:
    acc = int32_sum(0, steps).astype(jnp.float32)
  else:

    def flush_group(group, acc_f32):
      start = group * flush
      return acc_f32 + int32_sum(start, jnp.minimum(start + flush, steps)).astype(jnp.float32)

    acc = lax.fori_loop(0, -(-steps // flush), flush_group, jnp.zeros((bm, bn), jnp.float32))
  scale = plgpu.load(scale_ref.at[c_out], mask=c_out_ok, other=0.0)
  o_ref[...] = acc * scale[None, :]


@functools.partial(
  jax.jit,
  static_argnames=(
    "lhs_shape",
    "rhs_shape",
    "spec",
    "quantize",
    "split_k",
    "block_sizes",
    "interpret",
  ),
)
def int8_conv_wgrad(
  x: jax.Array,
  g: jax.Array,
  col_scale: jax.Array,
  inverse: jax.Array | None = None,
  seed: jax.Array | None = None,
  *,
  lhs_shape: tuple[int, ...],
  rhs_shape: tuple[int, ...],
  spec: ConvSpec,
  quantize: str | None = None,
  split_k: int = 0,
  block_sizes: ConvBlockSizes = DEFAULT_BLOCK_SIZES,
  interpret: bool = False,
) -> jax.Array:
  """The weight gradient of the conv of `spec`, int8 products accumulated in int32.

  Args:
    x: int8 (N, *spatial, C_in), the forward pass's quantized input.
    g: (N * prod(out spatial), C_out): int8, or float with `quantize`.
    col_scale: float32 (C_out,): multiplies each output column (x's scale times g's, per
      output channel, over 127**2).
    inverse: float32 (C_out,): 127/s of g's columns, for `quantize`.
    seed: uint32 () for stochastic `quantize`.
    lhs_shape, rhs_shape, spec: the conv's operand shapes and geometry (groups = 1).
    quantize: None (an int8 g), "nearest" or "stochastic".
    split_k: ranges of the reduction (0: from the shape, `split_count`).
    block_sizes: block_m tiles C_in, block_n C_out, block_k the output positions of a step.
    interpret: run the Pallas interpreter (any backend).

  Returns:
    float32 (*k, C_in, C_out).
  """
  check_call("int8_conv_wgrad", "g", g, lhs_shape, rhs_shape, spec, quantize, seed, interpret)
  s = block_sizes
  geometry = Geometry.of(lhs_shape, rhs_shape, spec)
  c_in, c_out = rhs_shape[-2:]
  taps = len(geometry.taps)
  rows = g.shape[0]
  bm = min(s.block_m, max(16, 1 << (c_in - 1).bit_length()))
  bn = s.out_block(c_out)
  bk = s.block_k
  tiles = taps * -(-c_in // bm) * -(-c_out // bn)
  total_steps = -(-rows // bk)
  splits = split_count(tiles, total_steps, split_k)
  steps = -(-total_steps // splits)
  splits = -(-total_steps // steps)  # rounding up may leave fewer ranges
  in_p, out_p = -(-c_in // bm) * bm, -(-c_out // bn) * bn
  x2d = x.reshape(-1, c_in)
  operands = (
    x2d,
    g,
    vector(inverse, jnp.float32),
    jnp.reshape(col_scale, (-1,)).astype(jnp.float32),
    vector(seed, jnp.uint32),
  )
  kernel = functools.partial(
    _wgrad_kernel,
    geometry=geometry,
    rows=rows,
    in_channels=c_in,
    out_channels=c_out,
    steps=steps,
    bk=bk,
    quantize=quantize,
    max_reduction=s.max_reduction,
  )
  partials = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((splits * taps, in_p, out_p), jnp.float32),
    grid=(splits * taps, in_p // bm, out_p // bn),
    in_specs=[whole(v) for v in operands],
    out_specs=pl.BlockSpec((pl.squeezed, bm, bn), lambda st, i, j: (st, i, j)),
    compiler_params=triton_params(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )(*operands)
  partials = partials.reshape(splits, taps, in_p, out_p)
  dw = partials[0] if splits == 1 else jnp.sum(partials, axis=0)
  return dw[:, :c_in, :c_out].reshape(rhs_shape)


def int8_conv_wgrad_reference(
  x,
  g,
  col_scale,
  inverse=None,
  seed=None,
  *,
  lhs_shape,
  rhs_shape,
  spec: ConvSpec,
  quantize=None,
  split_k=0,
  block_sizes=None,
  interpret=False,
):
  """The same weight gradient in plain jnp (the tiling arguments are accepted and ignored):
  g quantized by the jnp quantizer, each tap's input rows gathered, int32 products summed in
  chunks of `MAX_INT32_REDUCTION` rows in float32."""
  del split_k, block_sizes, interpret
  geometry = Geometry.of(lhs_shape, rhs_shape, spec)
  if quantize:
    t = g.astype(jnp.float32) * jnp.reshape(inverse, (1, -1))
    g = numerics.round_steps(t, rounding=quantize, seed=seed)
  x2d = x.reshape(-1, rhs_shape[-2])
  rows = g.shape[0]
  batch, coords = geometry.positions(jnp.arange(rows))
  taps = []
  for tap in geometry.taps:
    src, valid = geometry.source(batch, coords, tap)
    a = jnp.where(valid[:, None], x2d[src], 0)
    total = 0.0
    for start in range(0, rows, MAX_INT32_REDUCTION):
      part = jnp.matmul(
        a[start : start + MAX_INT32_REDUCTION].T,
        g[start : start + MAX_INT32_REDUCTION],
        preferred_element_type=jnp.int32,
      )
      total = total + part.astype(jnp.float32)
    taps.append(total * jnp.reshape(col_scale, (1, -1)))
  return jnp.stack(taps).reshape(rhs_shape)
