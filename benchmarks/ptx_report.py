"""What Triton and ptxas make of the Pallas kernels for sm_90a (H100/H200), on a CPU machine.

    pip install -e '.[ptx]'
    JAX_PLATFORMS=cpu python -m benchmarks.ptx_report      # about 20 s

For each kernel at ResNet-50 shapes (batch 128), and for the launch parameters the kernels
used before this version (4-warp GEMM tiles, a 256-row quantize tile, no split-K), and for
every kernel of a quantized conv layer's step on the implicit-GEMM implementations
(`implicit`, `implicit_fused`: forward, dgrad per output phase, wgrad), it writes
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
from daq_jax.quant.config import RECOMMENDED
from daq_jax.quant.geometry import make_spec

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
  return ptx.compile_program(fn, *[jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes])


# ResNet-50's conv layers at batch 128 that the implicit-GEMM kernels are compiled at: (name,
# lhs shape, rhs shape, geometry).
IMPLICIT_LAYERS = [
  ("l1 3x3", (128, 56, 56, 64), (3, 3, 64, 64), {}),
  ("l1 1x1 expand", (128, 56, 56, 64), (1, 1, 64, 256), {}),
  ("l2 3x3 stride 2", (128, 56, 56, 128), (3, 3, 128, 128), dict(window_strides=2)),
  ("l4 3x3", (128, 7, 7, 512), (3, 3, 512, 512), {}),
]


def implicit_layer_reports(impl: str, layer: str, method: str = RECOMMENDED):
  """(product, report) of every kernel of one quantized conv's forward and backward pass on
  `impl` ("implicit" or "implicit_fused"), bf16 float parts as the ImageNet configs train,
  lowered for CUDA and compiled for sm_90a. The product of a kernel is read off its order:
  the forward conv (the program's first), the dgrad conv(s) (one per output phase of a
  strided conv), the wgrad."""
  _, xs, ws, kw = next(entry for entry in IMPLICIT_LAYERS if entry[0] == layer)
  cfg = quant.preset(method, impl=impl)
  state = gradient.init_state(cfg, ws[-1])
  names = list(state)
  spec = make_spec(xs, ws, **kw)
  out_shape = jax.eval_shape(spec.float_conv, jnp.zeros(xs), jnp.zeros(ws)).shape

  def step(x, w, g, key_data, *values):
    key = jax.random.wrap_key_data(key_data)
    fn = lambda a, b, s: quant.conv_general(a, b, s, key, cfg=cfg, **kw)
    y, vjp = jax.vjp(fn, x, w, dict(zip(names, values)))
    return y, vjp(g)

  key_data = jax.random.key_data(jax.random.key(0))
  reports = _compile(
    step,
    (xs, jnp.bfloat16),
    (ws, jnp.bfloat16),
    (out_shape, jnp.bfloat16),
    (key_data.shape, key_data.dtype),
    *[(v.shape, F32) for v in state.values()],
  )
  convs = [r for r in reports if r.kernel.name == "_conv_kernel"]
  wgrads = [r for r in reports if r.kernel.name == "_wgrad_kernel"]
  if len(convs) < 2 or len(wgrads) != 1 or len(convs) + len(wgrads) != len(reports):
    raise RuntimeError(f"{layer} on {impl}: unexpected kernels {[r.kernel.name for r in reports]}")
  # the forward conv is the first the program runs; the others are the dgrad's
  return [("forward", convs[0]), *(("dgrad", r) for r in convs[1:]), ("wgrad", wgrads[0])]


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
  for impl in ("implicit", "implicit_fused"):
    for layer, *_ in IMPLICIT_LAYERS:
      for product, report in implicit_layer_reports(impl, layer):
        rows.append(_row(report, shape=f"{layer} {product}", variant=f"impl={impl}, bf16"))
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
