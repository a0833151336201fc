"""What Triton and ptxas make of the Pallas kernels for sm_90a (H100/H200), on a CPU machine.

    pip install -e '.[ptx]'
    JAX_PLATFORMS=cpu python -m benchmarks.ptx_report      # about 20 s

For each kernel at ResNet-50 shapes (batch 128), and for the launch parameters the kernels
used before this version (4-warp GEMM tiles, a 256-row quantize tile, no split-K), it writes
the grid, warps, shared memory, registers a thread, spill bytes, local-memory instructions,
the wgmma / mma.sync instructions and any approximate math to
benchmarks/results/ptx_sm90a.json: the compiler facts the kernels' parameters were chosen by.
No timing: nothing here runs a kernel.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from benchmarks.common import environment, write_json
from daq_jax import quant
from daq_jax.pallas import gemm, grad_quant, ptx
from daq_jax.quant import gradient

I8, F32 = jnp.int8, jnp.float32

# (name, M, K, N) of the GEMM (N: the rows of b^T).
GEMMS = [
  ("l1 3x3 forward", 128 * 56 * 56, 576, 64),
  ("l4 3x3 forward", 128 * 7 * 7, 4608, 512),
  ("l1 3x3 wgrad (K = N*H*W)", 576, 128 * 56 * 56, 64),
]
DEFAULT = gemm.GemmBlockSizes()
VARIANTS = {
  "default": DEFAULT,
  "4 warps": dataclasses.replace(DEFAULT, num_warps=4),
  "4 warps, no split": dataclasses.replace(DEFAULT, num_warps=4, split_k=1),
  "8 warps, no split": dataclasses.replace(DEFAULT, split_k=1),
}


def _row(report: ptx.PtxReport, **labels) -> dict:
  return {
    **labels,
    "kernel": report.kernel.name,
    "grid": report.kernel.grid,
    "num_warps": report.kernel.num_warps,
    "num_stages": report.kernel.num_stages,
    "smem_bytes": report.smem_bytes,
    "registers": report.registers,
    "spill_bytes": report.spill_bytes,
    "local_memory_instructions": report.local_memory,
    "wgmma": report.wgmma,
    "mma_sync": report.mma_sync,
    "approximate_math": report.approximate_math,
  }


def _compile(fn, *shapes) -> list[ptx.PtxReport]:
  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
  return [ptx.compile_kernel(k) for k in ptx.triton_kernels(ptx.lower_for_cuda(fn, *args))]


def run() -> list[dict]:
  rows = []
  for name, m, k, n in GEMMS:
    for variant, sizes in VARIANTS.items():
      (report,) = _compile(
        lambda a, b, r, c, sizes=sizes: gemm.int8_matmul_nt(a, b, r, c, block_sizes=sizes),
        ((m, k), I8),
        ((n, k), I8),
        ((m,), F32),
        ((n,), F32),
      )
      rows.append(_row(report, shape=name, variant=variant))
      print(rows[-1], flush=True)
  cfg = quant.daq()
  state = gradient.init_state(cfg, 64)
  keys = list(state)
  for variant, sizes in {
    "default": grad_quant.GradQuantBlockSizes(),
    "256-row quantize tile": grad_quant.GradQuantBlockSizes(quantize_block_m=256),
  }.items():
    reports = _compile(
      lambda g, *v, sizes=sizes: grad_quant.quantize_gradient(
        g, dict(zip(keys, v)), cfg, block_sizes=sizes
      ),
      ((128, 56, 56, 64), F32),
      *[(v.shape, F32) for v in state.values()],
    )
    for report in reports:
      rows.append(_row(report, shape="l1 gradient (128x56x56x64)", variant=variant))
      print(rows[-1], flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/ptx_sm90a.json")
  args = parser.parse_args(argv)
  reason = ptx.missing()
  if reason:
    raise SystemExit(f"error: {reason}")
  payload = {**environment("benchmarks.ptx_report"), "arch": "sm_90a", "rows": run()}
  print("wrote", write_json(args.out, payload))


if __name__ == "__main__":
  main()
