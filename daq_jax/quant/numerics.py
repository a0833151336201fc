"""Symmetric int8 quantization: levels -127..127, a clip value s, nearest or stochastic rounding.

    q = clip(round(127 * v / s), -127, 127)      v_hat = q * s / 127

A zero clip value (an all-zero tensor or channel) quantizes to zeros. A NaN or infinite clip
value also gives q = 0, but every dequantization multiplies by s, so NaN/Inf in a tensor stays
visible downstream instead of turning into finite numbers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

QMAX = 127
# The longest int8 x int8 reduction that cannot overflow int32: 127 * 127 * K <= 2**31 - 1,
# K = 133,144 (METHOD.md's 133,143 is one short of the exact bound).
MAX_INT32_REDUCTION = (2**31 - 1) // (QMAX * QMAX)


def max_abs(v: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """The max-abs clip value in float32, over all of `v` or over `axis`; NaN where the
  reduction saw a NaN or an infinity (XLA's CPU max reduction drops NaN, so this is explicit).
  """
  v = v.astype(jnp.float32)
  biggest = jnp.max(jnp.abs(v), axis=axis, keepdims=keepdims)
  nonfinite = jnp.any(~jnp.isfinite(v), axis=axis, keepdims=keepdims)
  return jnp.where(nonfinite, jnp.nan, biggest)


def inverse_step(scale: jax.Array) -> jax.Array:
  """127 / s, and 0 where s is not positive: what `quantize` multiplies by (the Pallas
  quantizer takes it precomputed, so both divide in XLA)."""
  # `scale > 0` is False for NaN, so a NaN scale quantizes to zeros (the dequantization,
  # which multiplies by the scale, brings the NaN back).
  safe = jnp.where(scale > 0, scale, 1.0)
  return jnp.where(scale > 0, QMAX / safe, 0.0)


def quantize(
  v: jax.Array,
  scale: jax.Array,
  *,
  rounding: str = "nearest",
  key: jax.Array | None = None,
) -> jax.Array:
  """Quantizes `v` to int8 with clip value `scale` (broadcast against `v`).

  Args:
    v: a float array.
    scale: the clip value s, a float32 array broadcastable to `v` (a scalar for per-tensor
      quantization, shape (C,) for per-channel on the last axis).
    rounding: `nearest` (ties to even) or `stochastic` (floor(t + u), u ~ U[0, 1)).
    key: the PRNG key for stochastic rounding.

  Returns:
    An int8 array of `v`'s shape with values in [-127, 127].
  """
  t = v.astype(jnp.float32) * inverse_step(jnp.asarray(scale, jnp.float32))
  if rounding == "nearest":
    t = jnp.round(t)
  elif rounding == "stochastic":
    if key is None:
      raise ValueError("stochastic rounding needs a PRNG key")
    t = jnp.floor(t + jax.random.uniform(key, t.shape, jnp.float32))
  else:
    raise ValueError(f"rounding={rounding!r} is not one of ('nearest', 'stochastic')")
  return jnp.clip(t, -QMAX, QMAX).astype(jnp.int8)


def dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
  """q * s / 127, in `dtype`."""
  return (q.astype(jnp.float32) * (jnp.asarray(scale, jnp.float32) / QMAX)).astype(dtype)


def fake_quantize(v: jax.Array, scale: jax.Array, **kwargs) -> jax.Array:
  """Quantize then dequantize, in float32: the float twin of the int8 path."""
  return dequantize(quantize(v, scale, **kwargs), scale)


def rescale(acc: jax.Array, *scales: jax.Array) -> jax.Array:
  """Turns an integer (or float-summed integer) accumulator into float32: acc * prod(s/127)."""
  factor = jnp.float32(1.0)
  for s in scales:
    factor = factor * (jnp.asarray(s, jnp.float32) / QMAX)
  return acc.astype(jnp.float32) * factor


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor:
  """An int8 tensor and its clip value: the operand every int8 contraction takes.

  Attributes:
    q: int8 values in [-127, 127].
    scale: float32 clip value s (v_hat = q * s / 127): () for one scale, (C,) for one per
      channel of the last axis.
  """

  q: jax.Array
  scale: jax.Array

  @classmethod
  def of(cls, v: jax.Array, scale: jax.Array, **kwargs) -> QTensor:
    """`v` quantized with `scale` (keyword arguments as for `quantize`)."""
    return cls(quantize(v, scale, **kwargs), scale)

  def dequantize(self) -> jax.Array:
    """q * s / 127 in float32."""
    return dequantize(self.q, self.scale)
