"""The float twin: the same quantized values, dequantized, through float convs and dots.

This is the oracle of the int8 implementations: given the same int8 operands and scales it
computes the same products in float32 (bit for bit when the scales are powers of two), and
its backward products are JAX's own transposes of the float conv and dot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.quant.backends.base import Backend
from daq_jax.quant.geometry import out_spatial


def float_dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w in float at full precision."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def _transpose(fn, shape, cotangent):
  """The transpose of the linear map `fn` from arrays of `shape`, applied to `cotangent`."""
  (out,) = jax.linear_transpose(fn, jax.ShapeDtypeStruct(shape, jnp.float32))(cotangent)
  return out


class SimulateBackend(Backend):
  """Dequantize, then float32 products at HIGHEST precision."""

  def conv_forward(self, x, w, spec, out_dtype=jnp.float32):
    return spec.float_conv(x.dequantize(), w.dequantize())

  def conv_dgrad(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    w_hat = kernel.dequantize()
    return _transpose(lambda a: spec.float_conv(a, w_hat), lhs_shape, g.dequantize())

  dgrad_rows = True

  def conv_dgrad_rows(self, g, w, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    return self.conv_dgrad(g, w, lhs_shape, rhs_shape, spec)  # its kept kernel is `w` too

  def conv_wgrad(self, inputs, g, lhs_shape, rhs_shape, spec):
    x_hat = inputs.dequantize()
    out_shape = (lhs_shape[0], *out_spatial(lhs_shape, rhs_shape, spec), rhs_shape[-1])
    g_hat = g.dequantize().reshape(out_shape)
    return _transpose(lambda b: spec.float_conv(x_hat, b), rhs_shape, g_hat)

  def dense_forward(self, x, w):
    return float_dense(x.dequantize(), w.dequantize())

  def dense_dgrad(self, g, kernel):
    w_hat = kernel.dequantize()
    return _transpose(
      lambda a: float_dense(a, w_hat), (g.q.shape[0], w_hat.shape[0]), g.dequantize()
    )

  def dense_wgrad(self, inputs, g):
    x_hat = inputs.dequantize()
    return _transpose(
      lambda b: float_dense(x_hat, b), (x_hat.shape[1], g.q.shape[1]), g.dequantize()
    )
