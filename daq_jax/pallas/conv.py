"""Convolution and dense products on the Pallas int8 GEMM: im2col for the forward pass and the
weight gradient, GEMM then col2im for the input gradient.

    forward: patches(x) (M, T*C_in) @ w (T*C_in, C_out)          M = N * out positions
    dgrad:   g (M, C_out) @ w^T (C_out, T*C_in), then col2im      (the transpose of patches)
    wgrad:   patches(x)^T (T*C_in, M) @ g (M, C_out), per-channel g scales on the columns

Every geometry of `conv_op.ConvSpec` with feature_group_count == 1 is supported (strides,
padding, input and kernel dilation, 1-D/2-D/3-D). The scales are applied in the GEMM's
epilogue. On a machine without a GPU the kernels run in Pallas's interpreter.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul
from daq_jax.quant.numerics import QMAX

BLOCK_SIZES = GemmBlockSizes()


def _gemm(a, b, row_scale, col_scale, interpret: bool):
  """a @ b * row_scale[:, None] * col_scale[None, :] with broadcastable float32 scales."""
  rows = jnp.broadcast_to(jnp.asarray(row_scale, jnp.float32), (a.shape[0],))
  cols = jnp.broadcast_to(jnp.asarray(col_scale, jnp.float32), (b.shape[1],))
  return int8_matmul(a, b, rows, cols, block_sizes=BLOCK_SIZES, interpret=interpret)


def patches(x: jax.Array, rhs_shape, spec) -> jax.Array:
  """im2col: (N, *spatial, C) -> (N * prod(out), T * C), taps major, channels minor (the
  order of a (*spatial, C_in, C_out) kernel reshaped to (T * C_in, C_out))."""
  *ksize, _, _ = rhs_shape
  zero = jnp.zeros((), x.dtype)
  pad_cfg = (
    [(0, 0, 0)]
    + [(lo, hi, ld - 1) for (lo, hi), ld in zip(spec.padding, spec.lhs_dilation, strict=True)]
    + [(0, 0, 0)]
  )
  x_p = lax.pad(x, zero, pad_cfg)
  out = [
    (size - ((k - 1) * d + 1)) // s + 1
    for size, k, d, s in zip(
      x_p.shape[1:-1], ksize, spec.rhs_dilation, spec.window_strides, strict=True
    )
  ]
  cols = []
  for tap in itertools.product(*(range(k) for k in ksize)):
    start = [0, *(t * d for t, d in zip(tap, spec.rhs_dilation, strict=True)), 0]
    limit = [
      x_p.shape[0],
      *(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, spec.window_strides)),
      x_p.shape[-1],
    ]
    cols.append(lax.slice(x_p, start, limit, [1, *spec.window_strides, 1]))
  return jnp.stack(cols, axis=-2).reshape(-1, len(cols) * x.shape[-1])


def _check(spec) -> None:
  if spec.feature_group_count != 1:
    raise NotImplementedError(
      f"impl='pallas' has no grouped conv kernel yet (feature_group_count="
      f"{spec.feature_group_count}); use impl='xla' for grouped and depthwise convs"
    )


def conv_forward(x_q, w_q, sx, sw, spec, *, interpret: bool) -> jax.Array:
  """The forward conv, float32 (N, *out, C_out)."""
  _check(spec)
  cols = patches(x_q, w_q.shape, spec)
  out = _gemm(cols, w_q.reshape(-1, w_q.shape[-1]), sx * sw / (QMAX * QMAX), 1.0, interpret)
  spatial = _out_spatial(x_q.shape, w_q.shape, spec)
  return out.reshape(x_q.shape[0], *spatial, w_q.shape[-1])


def _out_spatial(lhs_shape, rhs_shape, spec) -> list[int]:
  return [
    ((n - 1) * ld + 1 + lo + hi - ((k - 1) * rd + 1)) // s + 1
    for n, k, s, (lo, hi), ld, rd in zip(
      lhs_shape[1:-1],
      rhs_shape[:-2],
      spec.window_strides,
      spec.padding,
      spec.lhs_dilation,
      spec.rhs_dilation,
      strict=True,
    )
  ]


def conv_dgrad(g_q, w_q, sg, sw, lhs_shape, spec, *, interpret: bool) -> jax.Array:
  """The input gradient, float32 (N, *spatial, C_in): GEMM into columns, then col2im."""
  _check(spec)
  c_out = w_q.shape[-1]
  w_t = w_q.reshape(-1, c_out).T  # (C_out, T * C_in)
  cols = _gemm(g_q.reshape(-1, c_out), w_t, sg * sw / (QMAX * QMAX), 1.0, interpret)
  (col2im,) = jax.linear_transpose(
    lambda x: patches(x, w_q.shape, spec), jax.ShapeDtypeStruct(lhs_shape, jnp.float32)
  )(cols)
  return col2im


def conv_wgrad(x_q, g_q, sx, wgrad_scale, rhs_shape, spec, *, interpret: bool) -> jax.Array:
  """The weight gradient, float32 (*spatial, C_in, C_out), per-channel g scales fused."""
  _check(spec)
  c_out = rhs_shape[-1]
  cols_t = patches(x_q, rhs_shape, spec).T  # (T * C_in, M)
  dw = _gemm(cols_t, g_q.reshape(-1, c_out), sx / QMAX, wgrad_scale / QMAX, interpret)
  return dw.reshape(rhs_shape)


def dense_forward(x_q, w_q, sx, sw, *, interpret: bool) -> jax.Array:
  """(M, K) @ (K, N) in float32."""
  return _gemm(x_q, w_q, sx * sw / (QMAX * QMAX), 1.0, interpret)


def dense_dgrad(g_q, w_q, sg, sw, *, interpret: bool) -> jax.Array:
  """(M, N) @ (N, K): the input gradient."""
  return _gemm(g_q, w_q.T, sg * sw / (QMAX * QMAX), 1.0, interpret)


def dense_wgrad(x_q, g_q, sx, wgrad_scale, *, interpret: bool) -> jax.Array:
  """(K, M) @ (M, N): the weight gradient with per-column g scales."""
  return _gemm(x_q.T, g_q, sx / QMAX, wgrad_scale / QMAX, interpret)
