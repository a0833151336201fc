"""int8 x int8 GEMM with int32 accumulation and a fused scaling epilogue, in Pallas.

    out[m, n] = row_scale[m] * col_scale[n] * sum_k a[m, k] * b[k, n]

The forward pass (per-tensor scales), the dgrad (global g scale) and the wgrad (per-channel g
scales on the columns) all reduce to this shape once the convolution is laid out as a GEMM.

Layout: both operands are K-major, a (M, K) and b^T (N, K) (`int8_matmul_nt`), which is what
Hopper's int8 wgmma reads from shared memory; `int8_matmul` takes b as (K, N) and transposes it.
Each program computes one (block_m, block_n) tile over one K range and loops over that range
inside the kernel. Long reductions are split: with `split_k` ranges, each program writes a
scaled float32 partial tile and XLA sums the partials, so a wgrad GEMM whose K is N*H*W (and
whose M x N is a handful of tiles) still fills the GPU. Inside a range, the int32 accumulator
is flushed to a float32 one every `MAX_INT32_REDUCTION // block_k` steps, so reductions of any
length are exact up to float32 rounding of the flushed partial sums; a range shorter than that
keeps one int32 accumulator only (register pressure: see `GemmBlockSizes`).

Operands are zero-padded up to whole blocks (zeros add nothing), which keeps every load and
store unmasked and power-of-two shaped, as the Triton lowering wants.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from daq_jax.pallas.common import check_compilable, triton_params
from daq_jax.quant.numerics import MAX_INT32_REDUCTION

# Hopper has 132 SMs (H100 SXM, H200); auto split-K aims for about two programs per SM.
TARGET_PROGRAMS = 264
MIN_STEPS_PER_SPLIT = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmBlockSizes:
  """Tile sizes (powers of two) and Triton launch parameters.

  Attributes:
    block_m, block_n: the output tile of one program. int8 wgmma needs block_m >= 64.
    block_k: the reduction step; int8 wgmma consumes K in steps of 32, so at least 32.
    num_warps, num_stages: Triton's launch and software-pipelining parameters. A 128x128
      tile's int32 accumulator is 128 registers a thread at 4 warps, and 256 with the float32
      flush accumulator beside it, which spills; 8 warps halve both.
    split_k: how many K ranges (partial products summed in XLA); 0 picks one from the shape
      (`split_count`), 1 never splits.
    max_reduction: the longest reduction accumulated in one int32 (tests lower it).
  """

  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 8
  num_stages: int = 3
  split_k: int = 0
  max_reduction: int = MAX_INT32_REDUCTION

  def __post_init__(self):
    for name, least in (("block_m", 64), ("block_n", 16), ("block_k", 32)):
      value = getattr(self, name)
      if value < least or value & (value - 1):
        raise ValueError(
          f"GemmBlockSizes: {name}={value} must be a power of two >= {least} (int8 wgmma tiles)"
        )
    if self.block_k > self.max_reduction:
      raise ValueError(f"block_k={self.block_k} exceeds max_reduction={self.max_reduction}")
    if self.split_k < 0:
      raise ValueError(f"GemmBlockSizes: split_k={self.split_k} must be >= 0 (0: automatic)")

  @property
  def steps_per_flush(self) -> int:
    return self.max_reduction // self.block_k


def split_count(tiles: int, k_steps: int, sizes: GemmBlockSizes) -> int:
  """The number of K ranges: `sizes.split_k`, or, when it is 0, enough ranges for about
  `TARGET_PROGRAMS` programs, each at least `MIN_STEPS_PER_SPLIT` K steps long."""
  if sizes.split_k:
    return max(1, min(sizes.split_k, k_steps))
  wanted = -(-TARGET_PROGRAMS // tiles)
  return max(1, min(wanted, k_steps // MIN_STEPS_PER_SPLIT))


_NT = (((1,), (1,)), ((), ()))  # (bm, bk) x (bn, bk) -> (bm, bn)


def _gemm_kernel(a_ref, b_ref, row_ref, col_ref, o_ref, *, k_steps: int, sizes: GemmBlockSizes):
  bm, bn, bk = sizes.block_m, sizes.block_n, sizes.block_k
  flush = sizes.steps_per_flush

  def k_step(k, acc_i32):
    a = a_ref[:, pl.ds(pl.multiple_of(k * bk, bk), bk)]
    b = b_ref[:, pl.ds(pl.multiple_of(k * bk, bk), bk)]
    return acc_i32 + lax.dot_general(a, b, _NT, preferred_element_type=jnp.int32)

  def int32_sum(start, stop):
    return lax.fori_loop(start, stop, k_step, jnp.zeros((bm, bn), jnp.int32))

  if k_steps <= flush:  # one int32 accumulator: nothing else lives across the loop
    acc = int32_sum(0, k_steps).astype(jnp.float32)
  else:

    def flush_group(group, acc_f32):
      start = group * flush
      return acc_f32 + int32_sum(start, jnp.minimum(start + flush, k_steps)).astype(jnp.float32)

    groups = -(-k_steps // flush)
    acc = lax.fori_loop(0, groups, flush_group, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc * row_ref[...][:, None] * col_ref[...][None, :]


def _pad_to(x: jax.Array, multiples: tuple[int, ...]) -> jax.Array:
  pads = [(0, -n % m) for n, m in zip(x.shape, multiples, strict=True)]
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


def _check(a, bt, row_scale, col_scale) -> None:
  if a.dtype != jnp.int8 or bt.dtype != jnp.int8:
    raise ValueError(f"int8_matmul takes int8 operands, got {a.dtype} and {bt.dtype}")
  if a.ndim not in (2, 3) or bt.ndim != a.ndim or a.shape[-1] != bt.shape[-1]:
    raise ValueError(
      f"int8_matmul_nt: a {a.shape} and b^T {bt.shape} must be (M, K) and (N, K), or "
      "(G, M, K) and (G, N, K)"
    )
  if a.ndim == 3 and a.shape[0] != bt.shape[0]:
    raise ValueError(f"int8_matmul: a {a.shape} and b {bt.shape} have different group counts")
  lead, m, n = a.shape[:-2], a.shape[-2], bt.shape[-2]
  if row_scale.shape != (*lead, m) or col_scale.shape != (*lead, n):
    raise ValueError(
      f"int8_matmul: row_scale {row_scale.shape} and col_scale {col_scale.shape} must be "
      f"{(*lead, m)} and {(*lead, n)}"
    )


@functools.partial(jax.jit, static_argnames=("out_dtype", "block_sizes", "interpret"))
def int8_matmul_nt(
  a: jax.Array,
  bt: jax.Array,
  row_scale: jax.Array,
  col_scale: jax.Array,
  *,
  out_dtype=jnp.float32,
  block_sizes: GemmBlockSizes = GemmBlockSizes(),
  interpret: bool = False,
) -> jax.Array:
  """row_scale[..., :, None] * col_scale[..., None, :] * (a @ bt^T), int8 operands, int32
  accumulation; with a leading group axis, one independent GEMM per group (grouped convs).

  Args:
    a: int8 (M, K), or (G, M, K).
    bt: int8 (N, K), or (G, N, K): the right operand K-major.
    row_scale: float32 (M,) or (G, M) (broadcast a scalar with jnp.full for per-tensor).
    col_scale: float32 (N,) or (G, N).
    out_dtype: float32 or bfloat16.
    block_sizes: tiles, split-K and launch parameters.
    interpret: run the Pallas interpreter (any backend, the CPU included).

  Returns:
    (M, N), or (G, M, N), in `out_dtype`.
  """
  _check(a, bt, row_scale, col_scale)
  check_compilable(interpret, "int8_matmul")
  grouped = a.ndim == 3
  if not grouped:
    a, bt, row_scale, col_scale = a[None], bt[None], row_scale[None], col_scale[None]
  s = block_sizes
  groups, m, k = a.shape
  n = bt.shape[1]
  tiles = groups * math.ceil(m / s.block_m) * math.ceil(n / s.block_n)
  k_steps = math.ceil(k / s.block_k)
  splits = split_count(tiles, k_steps, s)
  steps = math.ceil(k_steps / splits)  # K steps per range
  span = steps * s.block_k  # K elements per range
  a_p = _pad_to(a, (1, s.block_m, span))
  b_p = _pad_to(bt, (1, s.block_n, span))
  splits = a_p.shape[-1] // span  # rounding up may leave fewer ranges
  rows = _pad_to(row_scale.astype(jnp.float32), (1, s.block_m))
  cols = _pad_to(col_scale.astype(jnp.float32), (1, s.block_n))
  mp, np_ = a_p.shape[1], b_p.shape[1]
  # Grid (group * range, M tiles, N tiles): Triton grids have three axes.
  out = pl.pallas_call(
    functools.partial(_gemm_kernel, k_steps=steps, sizes=s),
    out_shape=jax.ShapeDtypeStruct((groups * splits, mp, np_), jnp.float32),
    grid=(groups * splits, mp // s.block_m, np_ // s.block_n),
    in_specs=[
      pl.BlockSpec((pl.squeezed, s.block_m, span), lambda gs, i, j: (gs // splits, i, gs % splits)),
      pl.BlockSpec((pl.squeezed, s.block_n, span), lambda gs, i, j: (gs // splits, j, gs % splits)),
      pl.BlockSpec((pl.squeezed, s.block_m), lambda gs, i, j: (gs // splits, i)),
      pl.BlockSpec((pl.squeezed, s.block_n), lambda gs, i, j: (gs // splits, j)),
    ],
    out_specs=pl.BlockSpec((pl.squeezed, s.block_m, s.block_n), lambda gs, i, j: (gs, i, j)),
    compiler_params=triton_params(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )(a_p, b_p, rows, cols)
  out = out.reshape(groups, splits, mp, np_)
  out = (out[:, 0] if splits == 1 else jnp.sum(out, axis=1))[:, :m, :n].astype(out_dtype)
  return out if grouped else out[0]


def int8_matmul(a: jax.Array, b: jax.Array, row_scale, col_scale, **kwargs) -> jax.Array:
  """`int8_matmul_nt` (same keyword arguments) with b as (K, N) or (G, K, N), transposed to
  K-major here (a copy)."""
  if a.ndim not in (2, 3) or b.ndim != a.ndim or a.shape[-1] != b.shape[-2]:
    raise ValueError(
      f"int8_matmul: a {a.shape} and b {b.shape} must be (M, K) and (K, N), or (G, M, K) and "
      "(G, K, N)"
    )
  return int8_matmul_nt(a, jnp.swapaxes(b, -1, -2), row_scale, col_scale, **kwargs)


def int8_matmul_reference(
  a: jax.Array,
  b: jax.Array,
  row_scale: jax.Array,
  col_scale: jax.Array,
  *,
  out_dtype=jnp.float32,
  block_sizes: GemmBlockSizes = GemmBlockSizes(),
  interpret: bool = False,
) -> jax.Array:
  """The same product in plain jnp: int32 partial sums over chunks of `max_reduction`, summed
  in float32, then scaled (`interpret` is accepted and ignored)."""
  del interpret
  k = a.shape[-1]
  step = block_sizes.steps_per_flush * block_sizes.block_k
  acc = jnp.zeros((*a.shape[:-1], b.shape[-1]), jnp.float32)
  for start in range(0, k, step):
    part = jnp.matmul(
      a[..., start : start + step],
      b[..., start : start + step, :],
      preferred_element_type=jnp.int32,
    )
    acc = acc + part.astype(jnp.float32)
  return (acc * row_scale[..., :, None] * col_scale[..., None, :]).astype(out_dtype)
