"""impl="pallas": the quantized ops' products on the Pallas int8 GEMM, and DAQ's gradient
quantization on the Pallas kernels where they cover the config; impl="implicit" and
"implicit_fused": the conv products on the implicit-GEMM kernels.

Compiled for CUDA (Triton lowering) when the program is traced for a CUDA GPU
(`backends.target_platform`), run in Pallas's interpreter on every other platform: the
choice is made when the program is traced, like impl="auto"'s.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from daq_jax.pallas import grad_quant, implicit_conv, implicit_wgrad
from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul_nt
from daq_jax.quant import gradient, numerics
from daq_jax.quant.backends import xla
from daq_jax.quant.backends.im2col import Im2colBackend
from daq_jax.quant.backends.platform import target_platform
from daq_jax.quant.geometry import ConvSpec, dgrad_spec, out_spatial
from daq_jax.quant.numerics import QMAX, QTensor

BLOCK_SIZES = GemmBlockSizes()
CONV_BLOCK_SIZES = implicit_conv.ConvBlockSizes()
# Tiles that keep every conv kernel in registers at ResNet-50's widths (ptxas, sm_90a; tests/
# pallas/test_ptx.py, benchmarks/results/ptx_sm90a.json). Quantize-on-load holds the float
# tile and its rounding's temporaries: 32-wide K steps (64-wide ones spill 288 bytes at 512
# channels). Per-row scales with int8 g hold a float32 accumulator beside the int32 one:
# 64-wide output tiles (128-wide ones spill 1,052 bytes at 512 channels, 1,148 with 32-wide
# K steps). The wgrad kernel spills at neither.
ON_LOAD_CONV_BLOCK_SIZES = implicit_conv.ConvBlockSizes(block_k=32)
ROWS_CONV_BLOCK_SIZES = implicit_conv.ConvBlockSizes(block_n=64)
# The interpreter runs programs one after another: splitting K only multiplies them.
INTERPRET_BLOCK_SIZES = dataclasses.replace(BLOCK_SIZES, split_k=1)


def on_platform(fn, *args, interpreted=None):
  """`fn(*args, interpret=...)`: compiled for CUDA, interpreted elsewhere (`interpreted`, if
  given, replaces `fn` there)."""
  if target_platform() == "cuda":
    return fn(*args, interpret=False)
  return (interpreted or fn)(*args, interpret=True)


class PallasBackend(Im2colBackend):
  """The im2col products on the Pallas int8 GEMM (scales fused in its epilogue)."""

  def int8_gemm_nt(self, a, bt, row_scale, col_scale):
    gemm = functools.partial(int8_matmul_nt, block_sizes=BLOCK_SIZES)
    slow = functools.partial(int8_matmul_nt, block_sizes=INTERPRET_BLOCK_SIZES)
    return on_platform(gemm, a, bt, row_scale, col_scale, interpreted=slow)

  def quantize_gradient(self, g, state, cfg, key, defer=()):
    if defer or not grad_quant.supports(cfg):
      return gradient.quantize_gradient(g, state, cfg, key, defer)
    fused = functools.partial(grad_quant.quantize_gradient, cfg=cfg, key=key)
    return on_platform(fused, g, state)


def _taps(kernel: QTensor) -> jax.Array:
  return implicit_conv.kernel_taps(kernel.q)


def _factor(*scales) -> jax.Array:
  """The dequantization factor of an int8 product, prod(s / 127) in `numerics.rescale`'s
  order: the kernels' outputs are then the xla implementation's bit for bit."""
  return numerics.rescale(jnp.float32(1.0), *scales)


class ImplicitBackend(PallasBackend):
  """impl="implicit": the conv products on the implicit-GEMM kernels (`implicit_conv`,
  `implicit_wgrad`): no patch tensor, outputs written in the layer's dtype, scales in the
  epilogues; a strided conv's input gradient per output phase (`xla.subpixel_dgrad`). Dense
  layers, and convs the kernels do not take (grouped ones), are the Pallas GEMM's."""

  dgrad_rows = True

  def unsupported(self, contraction, spec, platform, shapes=None):
    if spec is None:
      return None
    if shapes is None:  # only the geometry is known: what it alone rules out
      ones = [1] * len(spec.window_strides)
      shapes = ((1, *ones, spec.feature_group_count), (*ones, 1, spec.feature_group_count))
    lhs, rhs = shapes
    if contraction == "dgrad":  # the forward conv of g (C_out channels) with the flipped kernel
      *k, c_in, c_out = rhs
      lhs, rhs = (lhs[0], *out_spatial(lhs, rhs, spec), c_out), (*k, c_out, c_in)
    return implicit_conv.unsupported(lhs, rhs, spec)

  def conv_forward(self, x, w, spec, out_dtype=jnp.float32):
    run = functools.partial(
      implicit_conv.int8_conv,
      lhs_shape=x.q.shape,
      rhs_shape=w.q.shape,
      spec=spec,
      out_dtype=out_dtype,
      block_sizes=CONV_BLOCK_SIZES,
    )
    return on_platform(run, x.q, _taps(w), _factor(x.scale, w.scale))

  def conv_keep_kernel(self, rhs, w, spec, rows=False):
    return xla.flipped_kernels(rhs, w, spec)  # per-row scales or not: the same dgrad conv

  def _dgrad(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype, rows: bool):
    """The input gradient as the forward conv of g with the flipped kernel(s), g int8 or
    deferred, with one scale or (`rows`) one per g row."""
    deferred = isinstance(g, numerics.Deferred)
    values = g.v if deferred else g.q
    first = kernel[0] if isinstance(kernel, tuple) else kernel
    inverse = seed = factor = None
    if rows:
      scale = _factor(first.scale)
      factor = jnp.reshape(g.scale, (-1,)) / QMAX
    else:
      scale = _factor(g.scale, first.scale)
    if deferred:
      inverse = numerics.inverse_step(jnp.reshape(g.scale, (-1,)) if rows else g.scale)
      seed = g.seed

    def conv(_, k_q, **geometry):
      run = functools.partial(
        implicit_conv.int8_conv,
        lhs_shape=values.shape,
        rhs_shape=k_q.shape,
        spec=ConvSpec(**geometry),
        quantize=g.rounding if deferred else None,
        out_dtype=out_dtype,
        block_sizes=(
          ON_LOAD_CONV_BLOCK_SIZES
          if deferred
          else (ROWS_CONV_BLOCK_SIZES if rows else CONV_BLOCK_SIZES)
        ),
      )
      taps = implicit_conv.kernel_taps(k_q)
      return on_platform(run, values, taps, scale, factor, inverse, seed)

    if xla.uses_subpixel_dgrad(spec):
      kernels = [k.q for k in kernel]
      return xla.subpixel_dgrad(values, kernels, lhs_shape, rhs_shape, spec, conv)
    return conv(values, kernel.q, **dgrad_spec(lhs_shape, rhs_shape, spec).conv_kwargs())

  def conv_dgrad(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    return self._dgrad(g, kernel, lhs_shape, rhs_shape, spec, out_dtype, rows=False)

  def conv_dgrad_rows(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    return self._dgrad(g, kernel, lhs_shape, rhs_shape, spec, out_dtype, rows=True)

  def conv_keep_input(self, lhs, x, spec):
    return x  # int8, channels last: the wgrad kernel gathers its rows

  def conv_wgrad(self, inputs, g, lhs_shape, rhs_shape, spec):
    c_out = rhs_shape[-1]
    deferred = isinstance(g, numerics.Deferred)
    g_scale = jnp.broadcast_to(jnp.asarray(g.scale, jnp.float32), (c_out,))
    col_scale = _factor(inputs.scale, g_scale)
    run = functools.partial(
      implicit_wgrad.int8_conv_wgrad,
      lhs_shape=lhs_shape,
      rhs_shape=rhs_shape,
      spec=spec,
      quantize=g.rounding if deferred else None,
      block_sizes=CONV_BLOCK_SIZES,  # one tiling, one order of the float partial sums
    )
    if deferred:
      return on_platform(run, inputs.q, g.v, col_scale, numerics.inverse_step(g_scale), g.seed)
    return on_platform(run, inputs.q, g.q, col_scale)


class FusedImplicitBackend(ImplicitBackend):
  """impl="implicit_fused": `implicit` whose dgrad and wgrad kernels read g in float and
  quantize it as they load it (nearest or stochastic, the jnp quantizer's codes), so no int8
  copy of g is written; the scales and the state still come from the gradient quantizer."""

  quantizes_on_load = True
