"""impl="pallas": the quantized ops' products on the Pallas int8 GEMM, and DAQ's gradient
quantization on the Pallas kernels where they cover the config.

Compiled for CUDA (Triton lowering) when the program is traced for a CUDA GPU
(`backends.target_platform`), run in Pallas's interpreter on every other platform: the
choice is made when the program is traced, like impl="auto"'s.
"""

from __future__ import annotations

import dataclasses
import functools

from daq_jax.pallas import grad_quant
from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul_nt
from daq_jax.quant import gradient
from daq_jax.quant.backends.im2col import Im2colBackend
from daq_jax.quant.backends.platform import target_platform

BLOCK_SIZES = GemmBlockSizes()
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

  def quantize_gradient(self, g, state, cfg, key):
    if not grad_quant.supports(cfg):
      return gradient.quantize_gradient(g, state, cfg, key)
    fused = functools.partial(grad_quant.quantize_gradient, cfg=cfg, key=key)
    return on_platform(fused, g, state)
