"""int8 x int8 GEMM with int32 accumulation and a fused scaling epilogue, in Pallas.

    out[m, n] = row_scale[m] * col_scale[n] * sum_k a[m, k] * b[k, n]

The forward pass (per-tensor scales), the dgrad (global g scale) and the wgrad (per-channel g
scales on the columns) all reduce to this shape once the convolution is laid out as a GEMM.
Each program computes one (block_m, block_n) tile and loops over K inside the kernel (a K grid
axis that accumulates into the output is a race on GPUs). The int32 accumulator is flushed to
a float32 one every `MAX_INT32_REDUCTION // block_k` steps, so reductions of any length are
exact up to float32 rounding of the flushed partial sums.

Operands are zero-padded up to whole blocks (zeros add nothing), which keeps every load and
store unmasked and power-of-two shaped, as the Triton lowering wants.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from daq_jax.quant.numerics import MAX_INT32_REDUCTION


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmBlockSizes:
  """Tile sizes (powers of two) and Triton launch parameters.

  Attributes:
    block_m, block_n: the output tile of one program.
    block_k: the reduction step; int8 tensor-core MMAs want a multiple of 32.
    num_warps, num_stages: Triton's launch and software-pipelining parameters.
    max_reduction: the longest reduction accumulated in one int32 (tests lower it).
  """

  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3
  max_reduction: int = MAX_INT32_REDUCTION

  def __post_init__(self):
    for name in ("block_m", "block_n", "block_k"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= 16")
    if self.block_k > self.max_reduction:
      raise ValueError(f"block_k={self.block_k} exceeds max_reduction={self.max_reduction}")

  @property
  def steps_per_flush(self) -> int:
    return self.max_reduction // self.block_k


def _gemm_kernel(a_ref, b_ref, row_ref, col_ref, o_ref, *, k_steps: int, sizes: GemmBlockSizes):
  bm, bn, bk = sizes.block_m, sizes.block_n, sizes.block_k
  flush = sizes.steps_per_flush

  def k_step(k, acc_i32):
    a = a_ref[:, pl.ds(pl.multiple_of(k * bk, bk), bk)]
    b = b_ref[pl.ds(pl.multiple_of(k * bk, bk), bk), :]
    return acc_i32 + jnp.dot(a, b, preferred_element_type=jnp.int32)

  def flush_group(group, acc_f32):
    start = group * flush
    stop = jnp.minimum(start + flush, k_steps)
    acc_i32 = jax.lax.fori_loop(start, stop, k_step, jnp.zeros((bm, bn), jnp.int32))
    return acc_f32 + acc_i32.astype(jnp.float32)

  groups = -(-k_steps // flush)
  acc = jax.lax.fori_loop(0, groups, flush_group, jnp.zeros((bm, bn), jnp.float32))
  scaled = acc * row_ref[...][:, None] * col_ref[...][None, :]
  o_ref[...] = scaled.astype(o_ref.dtype)


def _pad_to(x: jax.Array, multiples: tuple[int, ...]) -> jax.Array:
  pads = [(0, -n % m) for n, m in zip(x.shape, multiples, strict=True)]
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


@functools.partial(jax.jit, static_argnames=("out_dtype", "block_sizes", "interpret"))
def int8_matmul(
  a: jax.Array,
  b: jax.Array,
  row_scale: jax.Array,
  col_scale: jax.Array,
  *,
  out_dtype=jnp.float32,
  block_sizes: GemmBlockSizes = GemmBlockSizes(),
  interpret: bool = False,
) -> jax.Array:
  """row_scale[..., :, None] * col_scale[..., None, :] * (a @ b), int8 operands, int32
  accumulation; with a leading group axis, one independent GEMM per group (grouped convs).

  Args:
    a: int8 (M, K), or (G, M, K).
    b: int8 (K, N), or (G, K, N).
    row_scale: float32 (M,) or (G, M) (broadcast a scalar with jnp.full for per-tensor).
    col_scale: float32 (N,) or (G, N).
    out_dtype: float32 or bfloat16.
    block_sizes: tiles and launch parameters.
    interpret: run the Pallas interpreter (any backend, the CPU included).

  Returns:
    (M, N), or (G, M, N), in `out_dtype`.
  """
  if a.dtype != jnp.int8 or b.dtype != jnp.int8:
    raise ValueError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
  grouped = a.ndim == 3
  if a.ndim not in (2, 3) or b.ndim != a.ndim or a.shape[-1] != b.shape[-2]:
    raise ValueError(
      f"int8_matmul: a {a.shape} and b {b.shape} must be (M, K) and (K, N), or (G, M, K) and "
      "(G, K, N)"
    )
  if grouped and a.shape[0] != b.shape[0]:
    raise ValueError(f"int8_matmul: a {a.shape} and b {b.shape} have different group counts")
  m, n = a.shape[-2], b.shape[-1]
  lead = a.shape[:-2]
  if row_scale.shape != (*lead, m) or col_scale.shape != (*lead, n):
    raise ValueError(
      f"int8_matmul: row_scale {row_scale.shape} and col_scale {col_scale.shape} must be "
      f"{(*lead, m)} and {(*lead, n)}"
    )
  s = block_sizes
  one = (1,) * len(lead)
  a_p = _pad_to(a, (*one, s.block_m, s.block_k))
  b_p = _pad_to(b, (*one, s.block_k, s.block_n))
  rows = _pad_to(row_scale.astype(jnp.float32), (*one, s.block_m))
  cols = _pad_to(col_scale.astype(jnp.float32), (*one, s.block_n))
  mp, kp = a_p.shape[-2:]
  np_ = b_p.shape[-1]
  kernel = functools.partial(_gemm_kernel, k_steps=kp // s.block_k, sizes=s)
  grid = (mp // s.block_m, np_ // s.block_n)
  specs = [
    pl.BlockSpec((s.block_m, kp), lambda i, j: (i, 0)),
    pl.BlockSpec((kp, s.block_n), lambda i, j: (0, j)),
    pl.BlockSpec((s.block_m,), lambda i, j: (i,)),
    pl.BlockSpec((s.block_n,), lambda i, j: (j,)),
    pl.BlockSpec((s.block_m, s.block_n), lambda i, j: (i, j)),
  ]
  if grouped:  # a leading grid axis over groups; the kernel sees one group's 2-D blocks

    def with_group(spec):
      index = spec.index_map
      return pl.BlockSpec(
        (pl.squeezed, *spec.block_shape), lambda g, i, j, index=index: (g, *index(i, j))
      )

    specs = [with_group(spec) for spec in specs]
    grid = (a.shape[0], *grid)
  out = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((*lead, mp, np_), out_dtype),
    grid=grid,
    in_specs=specs[:4],
    out_specs=specs[4],
    compiler_params=pltriton.CompilerParams(num_warps=s.num_warps, num_stages=s.num_stages),
    interpret=interpret,
  )(a_p, b_p, rows, cols)
  return out[..., :m, :n]


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
