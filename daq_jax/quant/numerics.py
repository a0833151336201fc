"""Symmetric int8 quantization: levels -127..127, a clip value s, nearest or stochastic rounding.

    q = clip(round(127 * v / s), -127, 127)      v_hat = q * s / 127

Stochastic rounding draws no PRNG stream per element: one 32-bit seed per tensor (from the
caller's PRNG key) and the element's row-major index go through a counter-based integer hash,
whose top 24 bits are the uniform u in floor(t + u). That costs a few integer operations in
the quantizer's own fusion and no memory traffic, and the Pallas gradient quantizer computes
the same bits in its kernel (`dither` is the one definition). 24 bits bound the rounding's
bias by 2**-24 of an int8 step.

A zero clip value (an all-zero tensor or channel) quantizes to zeros. A NaN or infinite clip
value also gives q = 0, but every dequantization multiplies by s, so NaN/Inf in a tensor stays
visible downstream instead of turning into finite numbers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from daq_jax.quant.config import ROUNDINGS

QMAX = 127
# The longest int8 x int8 reduction that cannot overflow int32: 127 * 127 * K <= 2**31 - 1,
# K = 133,144 (the exact bound).
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


_GOLDEN = 0x9E3779B9  # spreads consecutive indices over the 32-bit range before hashing
DITHER_BITS = 24  # the uniform's bits: exactly representable in a float32 mantissa


def seeds(key: jax.Array, count: int) -> jax.Array:
  """`count` uint32 seeds for `dither` from a PRNG key (one small draw, not one per element)."""
  return jax.random.bits(key, (count,), jnp.uint32)


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: every input bit flips each output bit with p ~ 1/2."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def dither(seed: jax.Array, index: jax.Array) -> jax.Array:
  """The uniform u in [0, 1) of stochastic rounding for elements at `index` (uint32, the
  row-major position in the tensor), float32 multiples of 2**-24.

  A counter-based generator: a pure function of (seed, index), so a kernel that knows its
  elements' positions draws the same u as the jnp quantizer.
  """
  bits = _mix32((index.astype(jnp.uint32) * jnp.uint32(_GOLDEN)) ^ seed.astype(jnp.uint32))
  return (bits >> (32 - DITHER_BITS)).astype(jnp.float32) * jnp.float32(2.0**-DITHER_BITS)


def flat_index(shape) -> jax.Array:
  """uint32 row-major positions of an array of `shape` (modulo 2**32)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride = (stride * shape[axis]) % 2**32
  return index


def quantize_tensor(
  v: jax.Array,
  scale: jax.Array,
  *,
  rounding: str = "nearest",
  key: jax.Array | None = None,
  seed: jax.Array | None = None,
) -> jax.Array:
  """Quantizes `v` to int8 with clip value `scale` (broadcast against `v`).

  Args:
    v: a float array.
    scale: the clip value s, a float32 array broadcastable to `v` (a scalar for per-tensor
      quantization, shape (C,) for per-channel on the last axis).
    rounding: `nearest` (ties to even) or `stochastic` (floor(t + u), u ~ U[0, 1) from
      `dither`: unbiased, E[q] = t inside the clip range).
    key: the PRNG key for stochastic rounding, or
    seed: its uint32 seed (`seeds`), as the gradient quantizer passes it.

  Returns:
    An int8 array of `v`'s shape with values in [-127, 127].
  """
  t = v.astype(jnp.float32) * inverse_step(jnp.asarray(scale, jnp.float32))
  if rounding == "stochastic" and seed is None:
    if key is None:
      raise ValueError("stochastic rounding needs a PRNG key")
    seed = seeds(key, 1)[0]
  return round_steps(t, rounding=rounding, seed=seed)


def round_steps(t: jax.Array, *, rounding: str = "nearest", seed: jax.Array | None = None):
  """`t` (a value times 127/s, float32) rounded to its int8 level: what `quantize_tensor`
  does after the multiply (stochastic rounding draws `dither(seed, ...)` on t's row-major
  positions)."""
  if rounding == "nearest":
    t = jnp.round(t)
  elif rounding == "stochastic":
    # Clipping first changes nothing (the bounds are integers) and is what the kernel does.
    t = jnp.floor(jnp.clip(t, -QMAX, QMAX) + dither(seed, flat_index(t.shape)))
  else:
    raise ValueError(f"rounding={rounding!r} is not one of {ROUNDINGS}")
  return jnp.clip(t, -QMAX, QMAX).astype(jnp.int8)


def dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
  """q * s / 127, in `dtype`."""
  return (q.astype(jnp.float32) * (jnp.asarray(scale, jnp.float32) / QMAX)).astype(dtype)


def fake_quantize(v: jax.Array, scale: jax.Array, **kwargs) -> jax.Array:
  """Quantize then dequantize, in float32: the float twin of the int8 path."""
  return dequantize(quantize_tensor(v, scale, **kwargs), scale)


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
    return cls(quantize_tensor(v, scale, **kwargs), scale)

  def dequantize(self) -> jax.Array:
    """q * s / 127 in float32."""
    return dequantize(self.q, self.scale)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Deferred:
  """A float tensor with its clip value and rounding, quantized where it is read: an
  implementation that quantizes on load (`Backend.quantizes_on_load`) reads it in float and
  rounds in registers; any other one calls `quantize` first. Either way the int8 codes are
  `quantize_tensor(v, scale, rounding=..., seed=...)`'s.

  Attributes:
    v: the float values.
    scale: float32 clip value(s), broadcastable to `v` (as for `quantize_tensor`).
    seed: the uint32 seed of stochastic rounding (None for nearest).
    rounding: "nearest" or "stochastic".
  """

  v: jax.Array
  scale: jax.Array
  seed: jax.Array | None
  rounding: str = dataclasses.field(metadata=dict(static=True))

  def quantize(self) -> QTensor:
    """The int8 tensor, here and now."""
    q = quantize_tensor(self.v, self.scale, rounding=self.rounding, seed=self.seed)
    return QTensor(q, self.scale)

  def reshape(self, *shape) -> Deferred:
    """The same values (and positions) in another shape; the scale must not depend on it."""
    return dataclasses.replace(self, v=self.v.reshape(*shape))


def quantize_now(operand: QTensor | Deferred) -> QTensor:
  """`operand` as an int8 `QTensor` (a deferred one quantized here)."""
  return operand.quantize() if isinstance(operand, Deferred) else operand


def check_auto_sharding(where: str, **operands) -> None:
  """A clear error for an operand whose type carries an explicit sharding (JAX's
  "sharding in types", the default axis type of `jax.make_mesh`): the quantized ops reshape
  and reduce their operands and leave their layout to XLA, as on a mesh of Auto axes."""
  for name, value in operands.items():
    sharding = getattr(jax.typeof(value), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
      continue
    explicit = [
      axis
      for axis, kind in zip(mesh.axis_names, mesh.axis_types)
      if kind == jax.sharding.AxisType.Explicit
    ]
    if explicit and any(part is not None for part in sharding.spec):
      raise ValueError(
        f"{where}: {name} is sharded over explicit mesh axes {explicit} ({jax.typeof(value)}); "
        "the quantized ops take arrays on a mesh of Auto axes: jax.sharding.Mesh(devices, "
        "names), or jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto, ...))"
      )
