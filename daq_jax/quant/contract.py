"""Overflow-safe int8 contractions on XLA: int8 operands, int32 accumulation, float32 result.

An int8 x int8 product is at most 127 * 127 in magnitude, so an int32 accumulator is safe for
reductions of up to `MAX_INT32_REDUCTION` (133,143) terms. Longer reductions (the weight
gradient of a large batch, say) are cut into chunks that each fit; every chunk accumulates in
int32 and the chunk results are summed in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

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


def channels_last_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """NHWC / HWIO / NHWC (and their 1-D and 3-D forms) for rank-`ndim` operands."""
  spatial = tuple(range(1, ndim - 1))
  lhs = (0, ndim - 1) + spatial
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


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
  """

  def conv(a, b):
    return lax.conv_general_dilated(
      a,
      b,
      window_strides=window_strides,
      padding=padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=channels_last_dimension_numbers(lhs.ndim),
      feature_group_count=feature_group_count,
      preferred_element_type=jnp.int32,
    )

  taps = math.prod(rhs.shape[:-2])
  k = taps * rhs.shape[-2]
  if k <= max_reduction:
    return conv(lhs, rhs).astype(jnp.float32)
  if feature_group_count != 1:
    raise ValueError(
      f"grouped int8 conv reduces over {k} terms per output, more than int32 holds safely "
      f"({max_reduction}); feature_group_count={feature_group_count} cannot be chunked"
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
