"""The Pallas gradient-quantizer kernels against the jnp quantizer (their reference).

Strategy: `TestGradQuant` runs compiled (skipped without a GPU); `TestGradQuantInterpret`
reruns it in the Pallas interpreter on the CPU. The int8 outputs, max|g| and the fraction
above sigma must be identical to the jnp quantizer; the clip values and the MCS state agree to
float32 rounding (the kernels sum in another order than XLA's reductions).
Stochastic rounding draws the same counter-based bits in the kernel as the jnp quantizer, so
its codes are identical too. Shapes that are not whole blocks, ties in rounding, all-zero and
NaN channels are covered, and the kernels lower for CUDA on the CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax import quant
from daq_jax.pallas import grad_quant, ptx
from daq_jax.quant import backends, gradient
from tests.helpers import CompiledOrInterpreted

SCALE_RTOL = 1e-6  # one float32 rounding in the MCS recursion
SMALL = grad_quant.GradQuantBlockSizes(block_m=64, block_c=16)


def _mixed(rows, channels, seed=0):
  keys = jax.random.split(jax.random.key(seed), 2)
  half = channels // 2
  return 1e-3 * jnp.concatenate(
    [
      jax.random.normal(keys[0], (rows, half)),
      jax.random.laplace(keys[1], (rows, channels - half)),
    ],
    axis=1,
  )


class TestGradQuant(CompiledOrInterpreted):
  def _compare(self, g, state, cfg, sizes=SMALL, key=None):
    got = grad_quant.quantize_gradient(
      g, state, cfg, key, block_sizes=sizes, interpret=self.interpret
    )
    want = gradient.quantize_gradient(g, state, cfg, key)
    np.testing.assert_allclose(got.wgrad_scale, want.wgrad_scale, rtol=SCALE_RTOL)
    np.testing.assert_allclose(
      got.new_state["wgrad_clip"], want.new_state["wgrad_clip"], rtol=SCALE_RTOL
    )
    for a, b in [
      (got.dgrad_q, want.dgrad_q),
      (got.dgrad_scale, want.dgrad_scale),
      (got.new_state["dgrad_clip"], want.new_state["dgrad_clip"]),
      (got.wgrad_stats.gmax, want.wgrad_stats.gmax),
      (got.wgrad_stats.above_sigma, want.wgrad_stats.above_sigma),
    ]:
      np.testing.assert_array_equal(a, b)
    if np.array_equal(np.asarray(got.wgrad_scale), np.asarray(want.wgrad_scale)):
      np.testing.assert_array_equal(got.wgrad_q, want.wgrad_q)
    else:  # a clip one ulp apart may move a value across a rounding boundary
      assert np.abs(np.asarray(got.wgrad_q, int) - np.asarray(want.wgrad_q, int)).max() <= 1
    return got

  @pytest.mark.parametrize("method", ["daq", "gvq"])
  @pytest.mark.parametrize("shape", [(4, 10, 25, 40), (1000, 7), (64, 16)])
  def test_matches_the_jnp_quantizer(self, method, shape):
    cfg = quant.preset(method)
    g = _mixed(int(np.prod(shape[:-1])), shape[-1]).reshape(shape)
    state = {
      "wgrad_clip": jnp.linspace(0.0, 5e-3, shape[-1]),  # some channels without history
      "dgrad_clip": jnp.float32(0),
    }
    got = self._compare(g, state, cfg)
    assert got.dgrad_q.shape == shape and got.wgrad_q.shape == (g.size // shape[-1], shape[-1])

  @pytest.mark.parametrize("method", ["daq_sr", "daq_sr_wgrad"])
  @pytest.mark.parametrize("shape", [(4, 10, 25, 40), (1000, 7)])
  def test_stochastic_rounding_matches_the_jnp_quantizer(self, method, shape):
    cfg = quant.preset(method)
    g = _mixed(int(np.prod(shape[:-1])), shape[-1], seed=3).reshape(shape)
    state = gradient.init_state(cfg, shape[-1])
    got = self._compare(g, state, cfg, key=jax.random.key(11))
    nearest = grad_quant.quantize_gradient(
      g, state, quant.daq(), block_sizes=SMALL, interpret=self.interpret
    )
    assert np.mean(np.asarray(got.wgrad_q) != np.asarray(nearest.wgrad_q)) > 0.2
    with pytest.raises(ValueError, match="needs a PRNG key"):
      grad_quant.quantize_gradient(g, state, cfg, interpret=self.interpret)

  def test_ties_round_to_even(self):
    # With max|g| = 127 per channel, g * 127 / 127 = g: the halves must round to even.
    g = jnp.array([[0.5, 1.5], [2.5, -0.5], [-1.5, -2.5], [127.0, 127.0]] * 16)
    got = self._compare(g, gradient.init_state(quant.gvq(), 2), quant.gvq())
    np.testing.assert_array_equal(got.wgrad_q[:3], [[0, 2], [2, 0], [-2, -2]])

  def test_zero_and_nan_channels(self):
    cfg = quant.daq()
    g = _mixed(200, 4).at[:, 0].set(0.0)
    got = self._compare(g, gradient.init_state(cfg, 4), cfg)
    assert float(got.wgrad_scale[0]) == 0.0 and not np.isnan(np.asarray(got.wgrad_scale)).any()
    bad = g.at[3, 2].set(jnp.nan)
    out = grad_quant.quantize_gradient(
      bad, gradient.init_state(cfg, 4), cfg, block_sizes=SMALL, interpret=self.interpret
    )
    assert np.isnan(np.asarray(out.dgrad_scale)) and np.isnan(np.asarray(out.wgrad_scale[2]))
    assert np.isfinite(np.asarray(out.wgrad_scale[1]))


class TestGradQuantInterpret(TestGradQuant):
  interpret = True


@pytest.mark.parametrize("method", ["daq", "daq_sr"])
def test_lowers_for_cuda_with_the_triton_backend(method):
  cfg = quant.preset(method)
  g = _mixed(1000, 40)
  state = gradient.init_state(cfg, 40)
  lowered = ptx.lower_for_cuda(
    lambda g, s, k: grad_quant.quantize_gradient(g, s, cfg, k), g, state, jax.random.key(0)
  )
  assert lowered.as_text().count("xla.gpu.triton") == 4  # 3 statistics kernels, 1 quantize


def test_other_configs_use_the_jnp_quantizer_and_direct_calls_are_refused():
  g = _mixed(64, 4)
  cfg = quant.ui8()
  state = gradient.init_state(cfg, 4)
  out = backends.get("pallas").quantize_gradient(g, state, cfg, jax.random.key(0))
  want = gradient.quantize_gradient(g, state, cfg, jax.random.key(0))
  np.testing.assert_array_equal(out.wgrad_q, want.wgrad_q)
  with pytest.raises(ValueError, match="does not implement config"):
    grad_quant.quantize_gradient(g, state, cfg)
  with pytest.raises(ValueError, match="block_c=24 must be a power of two"):
    grad_quant.GradQuantBlockSizes(block_c=24)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the compiled kernels run on a GPU")
def test_compiled_kernels_off_a_gpu_are_a_clear_error():
  cfg = quant.daq()
  with pytest.raises(ValueError, match="quantize_gradient compiles its Pallas kernels for CUDA"):
    grad_quant.quantize_gradient(jnp.ones((64, 16)), gradient.init_state(cfg, 16), cfg)
