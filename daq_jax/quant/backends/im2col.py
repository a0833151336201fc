"""Convolutions and dense products on an int8 GEMM: im2col for the forward pass and the
weight gradient, GEMM then col2im for the input gradient.

    forward: patches(x) (M, T*C_in) @ w (T*C_in, C_out)          M = N * out positions
    dgrad:   g (M, C_out) @ w^T (C_out, T*C_in), then col2im      (the transpose of patches)
    wgrad:   patches(x)^T (T*C_in, M) @ g (M, C_out), per-channel g scales on the columns

Every geometry of `geometry.ConvSpec` is supported: strides, padding, input and kernel
dilation, 1-D/2-D/3-D, and feature groups (one GEMM per group on a leading batch axis;
depthwise convs are its (M, T) x (T, multiplier) case). The scales are applied to the GEMM's
rows and columns (fused into the epilogue by the Pallas GEMM, by XLA's fusion otherwise).
`Im2colBackend` leaves the GEMM abstract: `XlaIm2colBackend` runs XLA's int8 dot_general
(registered as impl "im2col"), `daq_jax.pallas.backend.PallasBackend` the Pallas kernel.
"""

from __future__ import annotations

import abc
import math

import jax
import jax.numpy as jnp

from daq_jax.quant import contract
from daq_jax.quant.backends.base import Backend
from daq_jax.quant.geometry import out_spatial, spec_patches
from daq_jax.quant.numerics import QMAX


def _per_group(cols: jax.Array, taps: int, groups: int) -> jax.Array:
  """(M, T * C) patches -> (G, M, T * C/G): each group's columns, taps major."""
  m = cols.shape[0]
  c_g = cols.shape[1] // (taps * groups)
  return cols.reshape(m, taps, groups, c_g).transpose(2, 0, 1, 3).reshape(groups, m, -1)


def _from_groups(cols_g: jax.Array, taps: int) -> jax.Array:
  """The inverse of `_per_group`: (G, M, T * C/G) -> (M, T * C)."""
  groups, m, width = cols_g.shape
  c_g = width // taps
  return cols_g.reshape(groups, m, taps, c_g).transpose(1, 2, 0, 3).reshape(m, -1)


def _kernel_per_group(w: jax.Array, groups: int) -> jax.Array:
  """(*sp, C_in/G, C_out) -> (G, T * C_in/G, C_out/G), taps major like the patches."""
  *_, c_in_g, c_out = w.shape
  w = w.reshape(-1, c_in_g, groups, c_out // groups)  # (T, I, G, O)
  return w.transpose(2, 0, 1, 3).reshape(groups, -1, c_out // groups)


def _group_scale(scale, groups: int, width: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (groups * width,)).reshape(groups, width)


class Im2colBackend(Backend):
  """The conv and dense products as GEMMs; subclasses give the GEMM."""

  @abc.abstractmethod
  def int8_gemm(self, a, b, row_scale, col_scale) -> jax.Array:
    """(..., M, K) int8 @ (..., K, N) int8 -> float32, times row_scale (..., M) and
    col_scale (..., N); a leading axis, if any, is a batch (group) axis."""

  def _gemm(self, a, b, row_scale, col_scale) -> jax.Array:
    rows = jnp.broadcast_to(jnp.asarray(row_scale, jnp.float32), a.shape[:-1])
    cols = jnp.broadcast_to(jnp.asarray(col_scale, jnp.float32), (*b.shape[:-2], b.shape[-1]))
    return self.int8_gemm(a, b, rows, cols)

  def conv_forward(self, x, w, spec):
    groups, taps = spec.feature_group_count, math.prod(w.q.shape[:-2])
    cols = _per_group(spec_patches(x.q, w.q.shape, spec), taps, groups)  # (G, M, T * I)
    scale = _group_scale(x.scale * w.scale / (QMAX * QMAX), groups, cols.shape[1])
    out = self._gemm(cols, _kernel_per_group(w.q, groups), scale, 1.0)  # (G, M, O)
    spatial = out_spatial(x.q.shape, w.q.shape, spec)
    return out.transpose(1, 0, 2).reshape(x.q.shape[0], *spatial, w.q.shape[-1])

  def conv_dgrad(self, g, kernel, lhs_shape, rhs_shape, spec):
    groups, taps = spec.feature_group_count, math.prod(rhs_shape[:-2])
    c_out = rhs_shape[-1]
    g_g = g.q.reshape(-1, groups, c_out // groups).transpose(1, 0, 2)  # (G, M, O)
    w_t = _kernel_per_group(kernel.q, groups).transpose(0, 2, 1)  # (G, O, T * I)
    scale = _group_scale(g.scale * kernel.scale / (QMAX * QMAX), groups, g_g.shape[1])
    cols = _from_groups(self._gemm(g_g, w_t, scale, 1.0), taps)
    (col2im,) = jax.linear_transpose(
      lambda v: spec_patches(v, rhs_shape, spec), jax.ShapeDtypeStruct(lhs_shape, jnp.float32)
    )(cols)
    return col2im

  def conv_wgrad(self, inputs, g, lhs_shape, rhs_shape, spec):
    groups, taps = spec.feature_group_count, math.prod(rhs_shape[:-2])
    *ksize, c_in_g, c_out = rhs_shape
    cols_t = _per_group(spec_patches(inputs.q, rhs_shape, spec), taps, groups).transpose(0, 2, 1)
    g_g = g.q.reshape(-1, groups, c_out // groups).transpose(1, 0, 2)  # (G, M, O)
    rows = _group_scale(inputs.scale / QMAX, groups, cols_t.shape[1])
    cols = _group_scale(g.scale / QMAX, groups, c_out // groups)
    dw = self._gemm(cols_t, g_g, rows, cols)  # (G, T * I, O)
    dw = dw.reshape(groups, taps, c_in_g, c_out // groups).transpose(1, 2, 0, 3)
    return dw.reshape(*ksize, c_in_g, c_out)

  def dense_forward(self, x, w):
    return self._gemm(x.q, w.q, x.scale * w.scale / (QMAX * QMAX), 1.0)

  def dense_dgrad(self, g, kernel):
    return self._gemm(g.q, kernel.q.T, g.scale * kernel.scale / (QMAX * QMAX), 1.0)

  def dense_wgrad(self, inputs, g):
    return self._gemm(inputs.q.T, g.q, inputs.scale / QMAX, g.scale / QMAX)


class XlaIm2colBackend(Im2colBackend):
  """The GEMMs as XLA int8 dot_general with int32 accumulation (XLA picks the kernel)."""

  def int8_gemm(self, a, b, row_scale, col_scale):
    batch = tuple(range(a.ndim - 2))
    dims = (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))
    acc = contract.int8_dot_general(a, b, dims)
    return acc * row_scale[..., :, None] * col_scale[..., None, :]
