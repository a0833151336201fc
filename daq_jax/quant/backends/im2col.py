"""Convolutions and dense products on an int8 GEMM over int8 im2col (patch) views: of x for
the forward pass and the weight gradient, of g for the input gradient.

    forward: patches(x) (M, T*C_in) @ w (T*C_in, C_out)          M = N * out positions
    dgrad:   patches(g) (M_in, T*C_out) @ w' (T*C_out, C_in)      w' = the flipped kernel,
             the forward conv of `geometry.dgrad_spec` (input positions M_in); for strided
             convs one such GEMM per output phase, with that phase's taps
             with per-row g scales: col2im(g (M, C_out) @ w^T (C_out, T*C_in)), the row
             scales on the GEMM's rows
    wgrad:   patches(x)^T (T*C_in, M) @ g (M, C_out), per-channel g scales on the columns

Each GEMM is handed over with both operands K-major, a (M, K) and b^T (N, K) ("NT"), the layout
int8 tensor cores read (cuBLASLt's int8 GEMM and Hopper's wgmma want it): the forward's and
dgrad's b^T is a small transpose of the kernel; the wgrad's operands are transposes of the
patches and of g, which XLA folds into its dot (transpose folding) and the Pallas GEMM gets as
copies. The patches are int8, so the largest tensor an im2col product writes is T bytes per
input element (at ResNet-50's first 3x3 layer, batch 128: 231 MB).

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
from daq_jax.quant.backends import xla
from daq_jax.quant.backends.base import Backend
from daq_jax.quant.geometry import (
  ConvSpec,
  col2im,
  dgrad_spec,
  out_spatial,
  spec_patches,
)
from daq_jax.quant.numerics import QMAX, QTensor


def _per_group(cols: jax.Array, taps: int, groups: int) -> jax.Array:
  """(M, T * C) patches -> (G, M, T * C/G): each group's columns, taps major."""
  m = cols.shape[0]
  c_g = cols.shape[1] // (taps * groups)
  return cols.reshape(m, taps, groups, c_g).transpose(2, 0, 1, 3).reshape(groups, m, -1)


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
  def int8_gemm_nt(self, a, bt, row_scale, col_scale) -> jax.Array:
    """(..., M, K) int8 @ ((..., N, K) int8)^T -> float32, times row_scale (..., M) and
    col_scale (..., N); a leading axis, if any, is a batch (group) axis."""

  def _gemm(self, a, bt, row_scale, col_scale) -> jax.Array:
    rows = jnp.broadcast_to(jnp.asarray(row_scale, jnp.float32), a.shape[:-1])
    cols = jnp.broadcast_to(jnp.asarray(col_scale, jnp.float32), bt.shape[:-1])
    return self.int8_gemm_nt(a, bt, rows, cols)

  def conv_forward(self, x, w, spec, out_dtype=jnp.float32):
    groups, taps = spec.feature_group_count, math.prod(w.q.shape[:-2])
    cols = _per_group(spec_patches(x.q, w.q.shape, spec), taps, groups)  # (G, M, T * I)
    scale = _group_scale(x.scale * w.scale / (QMAX * QMAX), groups, cols.shape[1])
    w_t = _kernel_per_group(w.q, groups).transpose(0, 2, 1)  # (G, O, T * I)
    out = self._gemm(cols, w_t, scale, 1.0)  # (G, M, O)
    spatial = out_spatial(x.q.shape, w.q.shape, spec)
    return out.transpose(1, 0, 2).reshape(x.q.shape[0], *spatial, w.q.shape[-1])

  def conv_keep_kernel(self, rhs, w, spec, rows=False):
    # A dgrad with per-row g scales is a GEMM with the forward kernel, then col2im.
    return w if rows else xla.flipped_kernels(rhs, w, spec)

  def conv_dgrad(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    # The input gradient is the forward conv of g with the flipped kernel (`dgrad_spec`), so
    # it is a forward GEMM on int8 patches of g, giving dx directly (no float columns to
    # scatter back with col2im). A strided conv's would patch an input-dilated g, mostly
    # zeros; split by output phase (as impl="xla" does) it is one stride-1 GEMM per phase.
    if xla.uses_subpixel_dgrad(spec):
      acc = xla.subpixel_dgrad(g.q, [k.q for k in kernel], lhs_shape, rhs_shape, spec, self._sums)
      return acc * (g.scale / QMAX) * (kernel[0].scale / QMAX)
    return self.conv_forward(g, kernel, dgrad_spec(lhs_shape, rhs_shape, spec))

  dgrad_rows = True

  def conv_dgrad_rows(self, g, w, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    # Every row of g (one output position) meets the whole kernel, so a row's scale factors
    # out of cols = g (M, O) @ w^T (O, T * I), per group; col2im then adds each tap's column
    # back onto its input position (in float32, after the int8 GEMM).
    groups, taps = spec.feature_group_count, math.prod(rhs_shape[:-2])
    c_in_g, c_out = rhs_shape[-2:]
    g_rows = g.q.reshape(-1, groups, c_out // groups).transpose(1, 0, 2)  # (G, M, O)
    kernel = _kernel_per_group(w.q, groups)  # (G, T * I, O)
    rows = jnp.reshape(g.scale, (1, -1)) * (w.scale / (QMAX * QMAX))
    cols = self._gemm(g_rows, kernel, rows, 1.0)  # (G, M, T * I)
    m = g_rows.shape[1]
    cols = cols.reshape(groups, m, taps, c_in_g).transpose(1, 2, 0, 3).reshape(m, -1)
    return col2im(cols, lhs_shape, rhs_shape, spec)

  def _sums(self, lhs, rhs, **geometry) -> jax.Array:
    """The integer sums of an int8 conv (float32), as one GEMM on patches."""
    one = jnp.float32(QMAX)  # scales of QMAX: the rescaling multiplies by 1
    return self.conv_forward(QTensor(lhs, one), QTensor(rhs, one), ConvSpec(**geometry))

  def conv_wgrad(self, inputs, g, lhs_shape, rhs_shape, spec):
    groups, taps = spec.feature_group_count, math.prod(rhs_shape[:-2])
    *ksize, c_in_g, c_out = rhs_shape
    cols_t = _per_group(spec_patches(inputs.q, rhs_shape, spec), taps, groups).transpose(0, 2, 1)
    g_t = g.q.reshape(-1, groups, c_out // groups).transpose(1, 2, 0)  # (G, O, M)
    rows = _group_scale(inputs.scale / QMAX, groups, cols_t.shape[1])
    cols = _group_scale(g.scale / QMAX, groups, c_out // groups)
    dw = self._gemm(cols_t, g_t, rows, cols)  # (G, T * I, O)
    dw = dw.reshape(groups, taps, c_in_g, c_out // groups).transpose(1, 2, 0, 3)
    return dw.reshape(*ksize, c_in_g, c_out)

  def dense_forward(self, x, w):
    return self._gemm(x.q, w.q.T, x.scale * w.scale / (QMAX * QMAX), 1.0)

  def dense_dgrad(self, g, kernel):
    rows = jnp.reshape(g.scale, -1)  # (1,) for one scale, (M,) per row
    return self._gemm(g.q, kernel.q, rows * kernel.scale / (QMAX * QMAX), 1.0)

  def dense_wgrad(self, inputs, g):
    return self._gemm(inputs.q.T, g.q.T, inputs.scale / QMAX, g.scale / QMAX)


class XlaIm2colBackend(Im2colBackend):
  """The GEMMs as XLA int8 dot_general with int32 accumulation (XLA picks the kernel)."""

  def int8_gemm_nt(self, a, bt, row_scale, col_scale):
    batch = tuple(range(a.ndim - 2))
    dims = (((a.ndim - 1,), (bt.ndim - 1,)), (batch, batch))
    acc = contract.int8_dot_general(a, bt, dims)
    return acc * row_scale[..., :, None] * col_scale[..., None, :]
