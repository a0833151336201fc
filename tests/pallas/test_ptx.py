"""The Pallas kernels compiled for Hopper (sm_90a) on a CPU-only machine: Triton's compiler
(shipped in JAX's CUDA plugin) turns each kernel's IR into PTX, and ptxas assembles it.

At the production tile sizes and ResNet-50 shapes, every GEMM must use int8 wgmma (never
the older mma.sync), and no kernel may touch local memory (ld.local/st.local in the PTX, or
spills reported by ptxas) or contain approximate division or square roots (which would give
other int8 codes on the GPU than on the CPU). Needs the `ptx` extra
(`pip install -e '.[ptx]'`, about 220 MB of wheels, run with JAX_PLATFORMS=cpu); skipped
with the reason where it is missing.
"""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import ptx_report
from daq_jax import quant
from daq_jax.pallas import gemm, grad_quant, ptx
from daq_jax.quant import gradient

pytestmark = pytest.mark.skipif(ptx.missing() is not None, reason=f"{ptx.missing()}")

S8_WGMMA = "s32.s8.s8"
I8, F32 = jnp.int8, jnp.float32


def _reports(fn, *shapes):
  reports = ptx.compile_program(fn, *[jax.ShapeDtypeStruct(s, dtype) for s, dtype in shapes])
  assert reports, "the program lowered to no Triton kernel"
  return reports


def _assert_clean(report):
  name = report.kernel.name
  assert report.local_memory == 0, f"{name}: ld.local/st.local in the PTX"
  assert report.spill_bytes == 0, f"{name}: ptxas spills {report.spill_bytes} bytes"
  assert report.approximate_math == [], f"{name}: {report.approximate_math}"


def _assert_s8_wgmma(report):
  assert report.wgmma and all(S8_WGMMA in op for op in report.wgmma), report.wgmma
  assert report.mma_sync == 0


# (M, K, N) of ResNet-50 GEMMs at batch 128 (the GEMM's N is the tile axis of b^T).
@pytest.mark.parametrize(
  "m, k, n",
  [
    (128 * 56 * 56, 576, 64),  # layer 1 3x3 forward
    (128 * 7 * 7, 4608, 512),  # layer 4 3x3 forward
    (576, 128 * 56 * 56, 64),  # layer 1 3x3 wgrad: K = N*H*W, split into ranges
    (64, 140_000, 64),  # a reduction past the int32 bound (flushed accumulator), not split
  ],
)
def test_gemm_compiles_to_s8_wgmma_without_spills(m, k, n):
  sizes = gemm.GemmBlockSizes(split_k=1) if k == 140_000 else gemm.GemmBlockSizes()
  (report,) = _reports(
    lambda a, b, r, c: gemm.int8_matmul_nt(a, b, r, c, block_sizes=sizes),
    ((m, k), I8),
    ((n, k), I8),
    ((m,), F32),
    ((n,), F32),
  )
  _assert_s8_wgmma(report)
  _assert_clean(report)
  if k == 128 * 56 * 56:
    assert report.kernel.grid[0] > 1, "a long-K wgrad GEMM is split into K ranges"


@pytest.mark.parametrize("method", ["daq", "daq_sr"])
def test_gradient_quantizer_kernels_compile_clean(method):
  """Stochastic rounding's in-kernel hash (integer multiplies and shifts) keeps the quantize
  kernel free of local memory, spills and approximate math too."""
  cfg = quant.preset(method)
  state = gradient.init_state(cfg, 64)
  keys = list(state)
  seed = jax.random.key_data(jax.random.key(0))
  reports = _reports(
    lambda g, k, *values: grad_quant.quantize_gradient(
      g, dict(zip(keys, values)), cfg, jax.random.wrap_key_data(k)
    ),
    ((128, 56, 56, 64), F32),
    (seed.shape, seed.dtype),
    *[(v.shape, F32) for v in state.values()],
  )
  assert len(reports) == 4
  for report in reports:
    _assert_clean(report)
    assert report.kernel.grid[0] >= 1000, "a 2-D grid: thousands of row blocks at 64 channels"


def test_a_pallas_conv_layer_step_compiles_clean():
  """One quantized 3x3 conv, forward and backward on impl="pallas": every kernel of the
  step (3 GEMMs, the gradient quantizer's 4 kernels) compiles, the GEMMs to s8 wgmma.
  (64 -> 128 channels, so that no two GEMMs have one shape and share one lowered kernel.)"""
  cfg = quant.daq(impl="pallas")
  state = gradient.init_state(cfg, 128)
  keys = list(state)

  def step(x, w, *values):
    def loss(x, w, s):
      return jnp.sum(quant.conv_general(x, w, s, cfg=cfg, padding="SAME") ** 2)

    return jax.grad(loss, argnums=(0, 1, 2))(x, w, dict(zip(keys, values)))

  reports = _reports(
    step, ((32, 16, 16, 64), F32), ((3, 3, 64, 128), F32), *[(v.shape, F32) for v in state.values()]
  )
  gemms = [r for r in reports if "gemm" in r.kernel.name]
  assert len(gemms) == 3 and len(reports) == 7, [r.kernel.name for r in reports]
  for report in reports:
    _assert_clean(report)
  for report in gemms:
    _assert_s8_wgmma(report)


# One layer in the fast set, the others (and the fused variant's) in the slow set.
@pytest.mark.parametrize(
  "impl, layer",
  [
    (impl, layer)
    if (impl, layer) == ("implicit", "l1 3x3")
    else pytest.param(impl, layer, marks=pytest.mark.slow)
    for impl in ("implicit", "implicit_fused")
    for layer, *_ in ptx_report.IMPLICIT_LAYERS
  ],
)
def test_implicit_conv_kernels_compile_to_s8_wgmma_without_spills(impl, layer):
  """Every kernel of a quantized ResNet-50 conv layer's step (daq_sr_rows, bf16 float parts):
  the forward conv, the dgrad conv(s) and the wgrad, int8 wgmma only, nothing in local
  memory, no approximate math (so the in-kernel rounding gives the jnp quantizer's codes)."""
  reports = ptx_report.implicit_layer_reports(impl, layer)  # raises on other kernels
  strided = layer.endswith("stride 2")
  assert [p for p, _ in reports].count("dgrad") == (4 if strided else 1)  # one per phase
  for _, report in reports:
    _assert_s8_wgmma(report)
    _assert_clean(report)


def test_the_ptx_report_script_writes_its_json(tmp_path):
  out = tmp_path / "ptx.json"
  ptx_report.main(["--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  default = [r for r in rows if r["variant"] == "default"]
  assert default and all(r["spill_bytes"] == 0 for r in default), default
