"""INT8 GPU kernels (Pallas, Triton lowering); the only package that imports Pallas."""

from daq_jax.pallas.gemm import GemmBlockSizes, int8_matmul, int8_matmul_reference

__all__ = ["GemmBlockSizes", "int8_matmul", "int8_matmul_reference"]
