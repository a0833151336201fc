"""impl="pallas": the quantized ops' products on the Pallas int8 GEMM, and DAQ's gradient
quantization on the fused kernels where they cover the config.

Compiled for CUDA (Triton lowering) when the program is lowered for a GPU, run in Pallas's
interpreter on every other platform: the choice is `lax.platform_dependent`, resolved when
the program is lowered, not when it is traced.
"""

from __future__ import annotations

import functools

from jax import lax

from daq_jax.pallas import grad_quant
from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul
from daq_jax.quant import gradient
from daq_jax.quant.backends.im2col import Im2colBackend

BLOCK_SIZES = GemmBlockSizes()


def on_platform(fn, *args):
  """`fn(*args, interpret=...)`: compiled on CUDA, interpreted elsewhere."""
  return lax.platform_dependent(
    *args,
    cuda=functools.partial(fn, interpret=False),
    default=functools.partial(fn, interpret=True),
  )


class PallasBackend(Im2colBackend):
  """im2col/col2im around the Pallas int8 GEMM (scales fused in its epilogue)."""

  def int8_gemm(self, a, b, row_scale, col_scale):
    gemm = functools.partial(int8_matmul, block_sizes=BLOCK_SIZES)
    return on_platform(gemm, a, b, row_scale, col_scale)

  def quantize_gradient(self, g, state, cfg, key):
    if not grad_quant.supports(cfg):
      return gradient.quantize_gradient(g, state, cfg, key)
    fused = functools.partial(grad_quant.quantize_gradient, cfg=cfg)
    return on_platform(fused, g, state)
