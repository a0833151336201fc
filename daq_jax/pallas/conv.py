"""Convolution and dense products on the Pallas int8 GEMM: im2col for the forward pass and the
weight gradient, GEMM then col2im for the input gradient.

    forward: patches(x) (M, T*C_in) @ w (T*C_in, C_out)          M = N * out positions
    dgrad:   g (M, C_out) @ w^T (C_out, T*C_in), then col2im      (the transpose of patches)
    wgrad:   patches(x)^T (T*C_in, M) @ g (M, C_out), per-channel g scales on the columns

Every geometry of `conv_op.ConvSpec` is supported: strides, padding, input and kernel
dilation, 1-D/2-D/3-D, and feature groups (one GEMM per group on the GEMM's group grid axis;
depthwise convs are its (M, T) x (T, multiplier) case: correct, not yet fast). The scales are
applied in the GEMM's epilogue. Without a GPU the kernels run in Pallas's interpreter. This
file composes kernels rather than defining one: its oracle is impl="xla" (quant/conv_op.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul
from daq_jax.quant import contract
from daq_jax.quant.conv_op import out_spatial
from daq_jax.quant.numerics import QMAX

BLOCK_SIZES = GemmBlockSizes()


def _gemm(a, b, row_scale, col_scale, interpret: bool):
  """a @ b * row_scale[..., :, None] * col_scale[..., None, :], scales broadcast to the
  GEMM's (grouped or not) row and column shapes."""
  rows = jnp.broadcast_to(jnp.asarray(row_scale, jnp.float32), a.shape[:-1])
  cols = jnp.broadcast_to(jnp.asarray(col_scale, jnp.float32), (*b.shape[:-2], b.shape[-1]))
  return int8_matmul(a, b, rows, cols, block_sizes=BLOCK_SIZES, interpret=interpret)


def patches(x: jax.Array, rhs_shape, spec) -> jax.Array:
  """im2col (`contract.patches`) for a kernel of `rhs_shape` under `spec`: (M, T * C)."""
  cols, _ = contract.patches(
    x,
    rhs_shape[:-2],
    window_strides=spec.window_strides,
    padding=spec.padding,
    lhs_dilation=spec.lhs_dilation,
    rhs_dilation=spec.rhs_dilation,
  )
  return cols


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


def conv_forward(x_q, w_q, sx, sw, spec, *, interpret: bool) -> jax.Array:
  """The forward conv, float32 (N, *out, C_out); grouped convs run one GEMM per group."""
  groups, taps = spec.feature_group_count, math.prod(w_q.shape[:-2])
  cols = _per_group(patches(x_q, w_q.shape, spec), taps, groups)  # (G, M, T * I)
  w_g = _kernel_per_group(w_q, groups)  # (G, T * I, O)
  scale = _group_scale(sx * sw / (QMAX * QMAX), groups, cols.shape[1])
  out = _gemm(cols, w_g, scale, 1.0, interpret)  # (G, M, O)
  spatial = out_spatial(x_q.shape, w_q.shape, spec)
  return out.transpose(1, 0, 2).reshape(x_q.shape[0], *spatial, w_q.shape[-1])


def conv_dgrad(g_q, w_q, sg, sw, lhs_shape, spec, *, interpret: bool) -> jax.Array:
  """The input gradient, float32 (N, *spatial, C_in): GEMM into columns, then col2im."""
  groups, taps = spec.feature_group_count, math.prod(w_q.shape[:-2])
  c_out = w_q.shape[-1]
  g_g = g_q.reshape(-1, groups, c_out // groups).transpose(1, 0, 2)  # (G, M, O)
  w_t = _kernel_per_group(w_q, groups).transpose(0, 2, 1)  # (G, O, T * I)
  scale = _group_scale(sg * sw / (QMAX * QMAX), groups, g_g.shape[1])
  cols = _from_groups(_gemm(g_g, w_t, scale, 1.0, interpret), taps)
  (col2im,) = jax.linear_transpose(
    lambda x: patches(x, w_q.shape, spec), jax.ShapeDtypeStruct(lhs_shape, jnp.float32)
  )(cols)
  return col2im


def conv_wgrad(x_q, g_q, sx, wgrad_scale, rhs_shape, spec, *, interpret: bool) -> jax.Array:
  """The weight gradient, float32 (*spatial, C_in/G, C_out), per-channel g scales fused."""
  groups, taps = spec.feature_group_count, math.prod(rhs_shape[:-2])
  *ksize, c_in_g, c_out = rhs_shape
  cols_t = _per_group(patches(x_q, rhs_shape, spec), taps, groups).transpose(0, 2, 1)
  g_g = g_q.reshape(-1, groups, c_out // groups).transpose(1, 0, 2)  # (G, M, O)
  rows = _group_scale(sx / QMAX, groups, cols_t.shape[1])
  cols = _group_scale(wgrad_scale / QMAX, groups, c_out // groups)
  dw = _gemm(cols_t, g_g, rows, cols, interpret)  # (G, T * I, O)
  dw = dw.reshape(groups, taps, c_in_g, c_out // groups).transpose(1, 2, 0, 3)
  return dw.reshape(*ksize, c_in_g, c_out)


def dense_forward(x_q, w_q, sx, sw, *, interpret: bool) -> jax.Array:
  """(M, K) @ (K, N) in float32."""
  return _gemm(x_q, w_q, sx * sw / (QMAX * QMAX), 1.0, interpret)


def dense_dgrad(g_q, w_q, sg, sw, *, interpret: bool) -> jax.Array:
  """(M, N) @ (N, K): the input gradient."""
  return _gemm(g_q, w_q.T, sg * sw / (QMAX * QMAX), 1.0, interpret)


def dense_wgrad(x_q, g_q, sx, wgrad_scale, *, interpret: bool) -> jax.Array:
  """(K, M) @ (M, N): the weight gradient with per-column g scales."""
  return _gemm(x_q.T, g_q, sx / QMAX, wgrad_scale / QMAX, interpret)
