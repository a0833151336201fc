"""Overflow-safe int8 contractions on XLA: int8 operands, int32 accumulation, float32 result.

An int8 x int8 product is at most 127 * 127 in magnitude, so an int32 accumulator is safe for
reductions of up to `MAX_INT32_REDUCTION` (133,144) terms. Longer reductions (the weight
gradient of a large batch, say) are cut into chunks that each fit; every chunk accumulates in
int32 and the chunk results are summed in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.quant.geometry import channels_last_dimension_numbers, patches
from daq_jax.quant.numerics import MAX_INT32_REDUCTION


def _chunks(size: int, limit: int) -> list[tuple[int, int]]:
  n = -(-size // limit)
  step = -(-size // n)  # equal chunks, each <= limit
  return [(i, min(i + step, size)) for i in range(0, size, step)]


def int8_dot_general(
  lhs: jax.Array, rhs: jax.Array, dimension_numbers, *, max_reduction: int = MAX_INT32_REDUCTION
) -> jax.Array:
  """`lax.dot_general` of int8 operands with int32 accumulation, returned as float32.

  Args:
    lhs, rhs: int8 arrays.
    dimension_numbers: as for `lax.dot_general`, with one contracting dimension per side.
    max_reduction: the longest reduction accumulated in one int32 (tests lower it).
  """
  (lc, rc), _ = dimension_numbers
  if len(lc) != 1 or len(rc) != 1:
    raise ValueError(f"int8_dot_general contracts one dimension per side, got {lc} and {rc}")
  k = lhs.shape[lc[0]]

  def dot(a, b):
    return lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.int32)

  if k <= max_reduction:
    return dot(lhs, rhs).astype(jnp.float32)
  total = None
  for start, stop in _chunks(k, max_reduction):
    part = dot(
      lax.slice_in_dim(lhs, start, stop, axis=lc[0]),
      lax.slice_in_dim(rhs, start, stop, axis=rc[0]),
    ).astype(jnp.float32)
    total = part if total is None else total + part
  return total


# XLA's CPU backend runs an int8 conv fast (its YNNPACK fusion) only when the input or the
# output has at least this many channels; below it the conv is 5-10x slower than float32.
# Measured with jax 0.10.2 on this project's CPU machines (see benchmarks/ops.py).
FAST_CONV_MIN_CHANNELS = 32
# Below this many taps * channels a narrow conv is cheaper as one im2col int8 dot (the stem).
IM2COL_MAX_REDUCTION = 64


def _im2col_conv(lhs, rhs, window_strides, padding, rhs_dilation) -> jax.Array:
  """A groups=1, lhs_dilation=1 conv as one NN int8 dot over the stacked kernel taps."""
  cols, out = patches(
    lhs,
    rhs.shape[:-2],
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=(1,) * len(padding),
    rhs_dilation=rhs_dilation,
  )
  acc = lax.dot_general(
    cols, rhs.reshape(-1, rhs.shape[-1]), (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32
  )
  return acc.reshape(lhs.shape[0], *out, rhs.shape[-1])


def int8_conv(
  lhs: jax.Array,
  rhs: jax.Array,
  *,
  window_strides,
  padding,
  lhs_dilation,
  rhs_dilation,
  feature_group_count: int,
  max_reduction: int = MAX_INT32_REDUCTION,
) -> jax.Array:
  """A channels-last int8 convolution with int32 accumulation, returned as float32.

  The reduction of one output element runs over the kernel taps and the input channels of a
  group. If that exceeds `max_reduction`, the input channels are cut into chunks (only for
  feature_group_count == 1: a grouped conv that long has no known use).

  On the CPU, narrow convs (fewer than `FAST_CONV_MIN_CHANNELS` channels on both sides,
  groups = 1, no input dilation) are reshaped for XLA's fast path: tiny reductions become one
  im2col dot, the others get their input channels zero-padded up to the threshold (exact:
  zeros add nothing). The choice is `lax.platform_dependent`, resolved when the program is
  lowered for its platform, so other platforms get the plain conv.
  """
  if isinstance(padding, str):
    dilated_k = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:-2], rhs_dilation)]
    dilated_in = [(n - 1) * d + 1 for n, d in zip(lhs.shape[1:-1], lhs_dilation)]
    padding = lax.padtype_to_pads(dilated_in, dilated_k, window_strides, padding)
  geometry = dict(
    window_strides=tuple(window_strides),
    padding=tuple(tuple(p) for p in padding),
    lhs_dilation=tuple(lhs_dilation),
    rhs_dilation=tuple(rhs_dilation),
    feature_group_count=feature_group_count,
  )

  def plain(a, b):
    return _chunked_conv(a, b, max_reduction=max_reduction, **geometry)

  c_in, c_out = rhs.shape[-2], rhs.shape[-1]
  narrow = (
    feature_group_count == 1
    and max(c_in, c_out) < FAST_CONV_MIN_CHANNELS
    and all(d == 1 for d in lhs_dilation)
  )
  if not narrow:
    return plain(lhs, rhs)

  def cpu(a, b):
    if math.prod(b.shape[:-2]) * c_in <= IM2COL_MAX_REDUCTION:
      return _im2col_conv(
        a, b, geometry["window_strides"], geometry["padding"], geometry["rhs_dilation"]
      ).astype(jnp.float32)
    extra = FAST_CONV_MIN_CHANNELS - c_in
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])
    b = jnp.pad(b, [(0, 0)] * (b.ndim - 2) + [(0, extra), (0, 0)])
    return plain(a, b)

  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=plain)


def _chunked_conv(lhs, rhs, *, max_reduction: int, **geometry) -> jax.Array:
  """int8 conv, int32 accumulation; input channels chunked past `max_reduction` terms."""
  groups = geometry["feature_group_count"]

  def conv(a, b):
    return lax.conv_general_dilated(
      a,
      b,
      dimension_numbers=channels_last_dimension_numbers(lhs.ndim),
      preferred_element_type=jnp.int32,
      **geometry,
    )

  taps = math.prod(rhs.shape[:-2])
  k = taps * rhs.shape[-2]
  if k <= max_reduction:
    return conv(lhs, rhs).astype(jnp.float32)
  if groups != 1:
    raise ValueError(
      f"grouped int8 conv reduces over {k} terms per output, more than int32 holds safely "
      f"({max_reduction}); feature_group_count={groups} cannot be chunked"
    )
  per_chunk = max(1, max_reduction // taps)
  total = None
  for start, stop in _chunks(rhs.shape[-2], per_chunk):
    part = conv(
      lax.slice_in_dim(lhs, start, stop, axis=lhs.ndim - 1),
      lax.slice_in_dim(rhs, start, stop, axis=rhs.ndim - 2),
    ).astype(jnp.float32)
    total = part if total is None else total + part
  return total
