"""The Pallas int8 GEMM against its jnp reference.

Strategy: `TestGemm` runs the compiled kernel and is skipped without a GPU; `TestGemmInterpret`
reruns every case with `interpret=True` on the CPU (CI). Integer products with unit scales are
compared exactly; the float epilogue (scales, bfloat16 output) within the tolerance below.
Shapes exercise the edges: sizes that are not multiples of the blocks, a reduction longer than
the int32 bound, flushes of the int32 accumulator, and K split into ranges whose partial
products XLA sums. Test tiles are int8-wgmma sized (M >= 64, K >= 32), as the production
ones. Every block configuration also lowers for CUDA on the CPU, so shape and tiling mistakes
surface without a GPU (tests/pallas/test_ptx.py compiles them on to PTX).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax.pallas import gemm, ptx
from tests.helpers import CompiledOrInterpreted

TOLERANCE = {
  jnp.float32: 1e-6,  # the same float32 products, maybe in another order
  jnp.bfloat16: 8e-3,  # one bfloat16 rounding of the result
}

SMALL = gemm.GemmBlockSizes(block_m=64, block_n=32, block_k=32, split_k=1)
SPLIT = gemm.GemmBlockSizes(block_m=64, block_n=32, block_k=32, split_k=3)


def _operands(m, k, n, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  a = jax.random.randint(keys[0], (m, k), -127, 128).astype(jnp.int8)
  b = jax.random.randint(keys[1], (k, n), -127, 128).astype(jnp.int8)
  rows = jax.random.uniform(keys[2], (m,), minval=0.5, maxval=2.0)
  cols = jax.random.uniform(keys[3], (n,), minval=0.5, maxval=2.0)
  return a, b, rows, cols


class TestGemm(CompiledOrInterpreted):
  def _run(self, *args, **kwargs):
    return gemm.int8_matmul(*args, interpret=self.interpret, **kwargs)

  @pytest.mark.parametrize("m, k, n", [(64, 64, 64), (70, 100, 40), (1, 33, 17), (96, 32, 130)])
  def test_integer_product_is_exact(self, m, k, n):
    a, b, _, _ = _operands(m, k, n)
    got = self._run(a, b, jnp.ones(m), jnp.ones(n), block_sizes=SMALL)
    want = jnp.dot(a, b, preferred_element_type=jnp.int32).astype(jnp.float32)
    np.testing.assert_array_equal(got, want)

  @pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
  def test_scaled_epilogue_matches_reference(self, out_dtype):
    a, b, rows, cols = _operands(50, 96, 72, seed=1)
    got = self._run(a, b, rows, cols, out_dtype=out_dtype, block_sizes=SMALL)
    want = gemm.int8_matmul_reference(a, b, rows, cols, out_dtype=out_dtype, block_sizes=SMALL)
    assert got.dtype == out_dtype
    np.testing.assert_allclose(
      np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=TOLERANCE[out_dtype]
    )

  def test_grouped_gemm_is_one_product_per_group(self):
    keys = jax.random.split(jax.random.key(4), 4)
    a = jax.random.randint(keys[0], (3, 40, 70), -127, 128).astype(jnp.int8)
    b = jax.random.randint(keys[1], (3, 70, 20), -127, 128).astype(jnp.int8)
    rows = jax.random.uniform(keys[2], (3, 40))
    cols = jax.random.uniform(keys[3], (3, 20))
    got = self._run(a, b, rows, cols, block_sizes=SMALL)
    for g in range(3):
      want = gemm.int8_matmul_reference(a[g], b[g], rows[g], cols[g], block_sizes=SMALL)
      np.testing.assert_allclose(got[g], want, rtol=TOLERANCE[jnp.float32])

  @pytest.mark.parametrize("split_k", [1, 2])
  def test_accumulator_flushes_keep_the_sum_exact(self, split_k):
    # max_reduction = 64 with block_k = 32: the int32 accumulator flushes every 2 steps.
    sizes = gemm.GemmBlockSizes(
      block_m=64, block_n=16, block_k=32, max_reduction=64, split_k=split_k
    )
    a, b, _, _ = _operands(20, 300, 24, seed=2)
    got = self._run(a, b, jnp.ones(20), jnp.ones(24), block_sizes=sizes)
    np.testing.assert_array_equal(got, jnp.dot(a, b, preferred_element_type=jnp.int32))

  @pytest.mark.parametrize("split_k", [1, 5])
  def test_reduction_longer_than_the_int32_bound(self, split_k):
    k = 140_000  # 127 * 127 * k > 2**31
    a = jnp.full((16, k), 127, jnp.int8)
    b = jnp.full((k, 16), 127, jnp.int8)
    sizes = gemm.GemmBlockSizes(block_m=64, block_n=16, block_k=512, split_k=split_k)
    got = self._run(a, b, jnp.ones(16), jnp.ones(16), block_sizes=sizes)
    np.testing.assert_allclose(got, np.full((16, 16), 127.0 * 127.0 * k), rtol=1e-7)

  @pytest.mark.parametrize("groups", [None, 2])
  def test_split_k_partials_sum_to_the_product(self, groups):
    a, b, rows, cols = _operands(70, 250, 40, seed=5)
    if groups:
      a, b = jnp.stack([a, -a]), jnp.stack([b, b])
      rows, cols = jnp.stack([rows, rows]), jnp.stack([cols, cols])
    got = self._run(a, b, rows, cols, block_sizes=SPLIT)
    want = gemm.int8_matmul_reference(a, b, rows, cols, block_sizes=SPLIT)
    # Each range's partial is scaled, then XLA sums them: a float32 rounding per partial, so
    # the error is relative to the partials' size, not to a sum that may cancel.
    scale = np.abs(np.asarray(want)).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=SPLIT.split_k * 1e-6 * scale)

  def test_nt_takes_b_k_major(self):
    a, b, rows, cols = _operands(64, 96, 48, seed=6)
    got = gemm.int8_matmul_nt(a, b.T, rows, cols, block_sizes=SMALL, interpret=self.interpret)
    np.testing.assert_array_equal(got, self._run(a, b, rows, cols, block_sizes=SMALL))


class TestGemmInterpret(TestGemm):
  interpret = True


@pytest.mark.parametrize(
  "sizes",
  [
    gemm.GemmBlockSizes(),
    gemm.GemmBlockSizes(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4),
    SMALL,
    SPLIT,
  ],
)
@pytest.mark.parametrize("groups", [None, 4])
def test_lowers_for_cuda_with_the_triton_backend(sizes, groups):
  a, b, rows, cols = _operands(200, 300, 100)
  if groups:
    a, b = jnp.stack([a] * groups), jnp.stack([b] * groups)
    rows, cols = jnp.stack([rows] * groups), jnp.stack([cols] * groups)
  lowered = ptx.lower_for_cuda(
    lambda *args: gemm.int8_matmul(*args, block_sizes=sizes), a, b, rows, cols
  )
  assert "xla.gpu.triton" in lowered.as_text()


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: gemm.GemmBlockSizes(block_m=96), "block_m=96 must be a power of two >= 64"),
    (lambda: gemm.GemmBlockSizes(block_k=16), "block_k=16 must be a power of two >= 32"),
    (lambda: gemm.GemmBlockSizes(block_k=64, max_reduction=32), "exceeds max_reduction"),
    (lambda: gemm.GemmBlockSizes(split_k=-1), "split_k=-1 must be >= 0"),
    (
      lambda: gemm.int8_matmul(jnp.ones((4, 4)), jnp.ones((4, 4)), jnp.ones(4), jnp.ones(4)),
      "takes int8 operands",
    ),
    (
      lambda: gemm.int8_matmul(
        jnp.ones((4, 5), jnp.int8), jnp.ones((4, 4), jnp.int8), jnp.ones(4), jnp.ones(4)
      ),
      r"must be \(M, K\) and \(K, N\)",
    ),
    (
      lambda: gemm.int8_matmul_nt(
        jnp.ones((4, 5), jnp.int8), jnp.ones((4, 4), jnp.int8), jnp.ones(4), jnp.ones(4)
      ),
      r"must be \(M, K\) and \(N, K\)",
    ),
  ],
)
def test_bad_input_names_the_problem(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize(
  "tiles, k_steps, want",
  [
    (500, 100, 1),  # enough tiles: no split
    (4, 6272, 66),  # ResNet-50 layer-1 wgrad (576 x 64 output, K = 401,408): 66 ranges
    (4, 8, 2),  # a short K: ranges of at least MIN_STEPS_PER_SPLIT steps
    (4, 3, 1),
  ],
)
def test_automatic_split_fills_the_gpu(tiles, k_steps, want):
  assert gemm.split_count(tiles, k_steps, gemm.GemmBlockSizes()) == want


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the compiled kernels run on a GPU")
def test_compiled_kernels_off_a_gpu_are_a_clear_error():
  a, b, rows, cols = _operands(64, 32, 32)
  with pytest.raises(
    ValueError, match="int8_matmul compiles its Pallas kernels for CUDA GPUs only"
  ):
    gemm.int8_matmul(a, b, rows, cols)
