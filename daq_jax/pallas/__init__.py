"""INT8 GPU kernels (Pallas, Triton lowering); the only package that imports Pallas."""

from daq_jax.pallas.common import check_compilable, triton_params
from daq_jax.pallas.gemm import (
  GemmBlockSizes,
  int8_matmul,
  int8_matmul_nt,
  int8_matmul_reference,
)
from daq_jax.pallas.grad_quant import GradQuantBlockSizes, quantize_gradient

__all__ = [
  "GemmBlockSizes",
  "GradQuantBlockSizes",
  "check_compilable",
  "int8_matmul",
  "int8_matmul_nt",
  "int8_matmul_reference",
  "quantize_gradient",
  "triton_params",
]
