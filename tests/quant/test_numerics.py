"""The int8 quantizer of docs/method.md: levels, rounding, the zero-scale guard, NaN visibility,
per-channel broadcasting and stochastic rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax.quant import numerics


def test_levels_rounding_and_clipping():
  v = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0 / 254, 3.0 / 254, 1.0, 2.0])
  q = numerics.quantize_tensor(v, jnp.float32(1.0))
  assert q.dtype == jnp.int8
  # 0.5/254*... : 1/254 * 127 = 0.5 rounds to even (0); 3/254 * 127 = 1.5 rounds to 2.
  np.testing.assert_array_equal(q, [-127, -127, -64, 0, 32, 0, 2, 127, 127])
  np.testing.assert_array_equal(numerics.dequantize(q, 127.0), np.asarray(q, np.float32))


def test_zero_scale_gives_zeros_not_nan():
  v = jnp.zeros((4, 3))
  q = numerics.quantize_tensor(v, numerics.max_abs(v))
  np.testing.assert_array_equal(q, 0)
  assert not np.isnan(np.asarray(numerics.fake_quantize(v, numerics.max_abs(v)))).any()


def test_nan_and_inf_scales_stay_visible_after_dequantize():
  v = jnp.array([1.0, jnp.nan, 2.0])
  s = numerics.max_abs(v)
  assert np.isnan(np.asarray(s))
  assert np.isnan(np.asarray(numerics.fake_quantize(v, s))).all()
  w = jnp.array([1.0, jnp.inf])
  assert np.isnan(np.asarray(numerics.fake_quantize(w, numerics.max_abs(w)))).any()


def test_per_channel_scales_broadcast_on_the_last_axis():
  v = jnp.array([[1.0, 10.0], [-0.5, 5.0]])
  s = numerics.max_abs(v, axis=0)
  np.testing.assert_array_equal(numerics.quantize_tensor(v, s), [[127, 127], [-64, 64]])


def test_stochastic_rounding_needs_a_key_and_a_known_mode():
  v = jnp.full((8,), 0.3 / 127)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    numerics.quantize_tensor(v, 1.0, rounding="stochastic")
  with pytest.raises(ValueError, match=r"rounding='up' is not one of \('nearest', 'stochastic'\)"):
    numerics.quantize_tensor(v, 1.0, rounding="up")


# The mean of N = 2**20 roundings of a fraction f of a level has a standard deviation of at
# most 0.5 / 1024 levels: 0.002 is 4 of them. A rounder biased by more than that fails.
UNBIASED_TOL = 0.002
FRACTIONS = (0.003, 0.1, 0.3, 0.5, 0.77, 0.996)


def _mean_rounding(quantize, f: float) -> float:
  """The mean level of 2**20 roundings of 5 + f levels: 256 seeds x 4096 positions."""
  v = jnp.full((4096,), (5 + f) / 127)
  means = jax.vmap(lambda key: jnp.mean(quantize(v, key).astype(jnp.float32)))(
    jax.random.split(jax.random.key(0), 256)
  )
  return float(jnp.mean(means)) - 5


def _stochastic(v, key):
  return numerics.quantize_tensor(v, 1.0, rounding="stochastic", key=key)


def _four_bit_dither(v, key):  # a deliberately coarse rounder: u in multiples of 1/16
  u = jnp.floor(jax.random.uniform(key, v.shape) * 16) / 16
  return jnp.floor(v * 127 + u).astype(jnp.int8)


@pytest.mark.parametrize("f", FRACTIONS)
def test_stochastic_rounding_is_unbiased_to_well_below_a_level(f):
  assert abs(_mean_rounding(_stochastic, f) - f) < UNBIASED_TOL


def test_the_unbiasedness_check_catches_biased_rounders():
  nearest = lambda v, key: numerics.quantize_tensor(v, 1.0)
  assert max(abs(_mean_rounding(nearest, f) - f) for f in FRACTIONS) > 0.1
  assert max(abs(_mean_rounding(_four_bit_dither, f) - f) for f in FRACTIONS) > 4 * UNBIASED_TOL


def test_dither_is_uniform_and_uncorrelated_across_positions_and_seeds():
  index = numerics.flat_index((1024, 1024))
  u = np.asarray(numerics.dither(jnp.uint32(12345), index)).ravel()
  assert u.min() >= 0 and u.max() < 1
  counts = np.histogram(u, bins=64, range=(0, 1))[0]
  chi2 = float(np.sum((counts - u.size / 64) ** 2 / (u.size / 64)))
  assert chi2 < 120  # 63 degrees of freedom: p < 1e-5 above 120
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.005  # neighbours (4.9 sigma at 2**20)
  assert abs(np.corrcoef(u[:-1024], u[1024:])[0, 1]) < 0.005  # the next row
  other = np.asarray(numerics.dither(jnp.uint32(12346), index)).ravel()
  assert abs(np.corrcoef(u, other)[0, 1]) < 0.005  # seeds one apart


def test_flat_index_is_the_row_major_position():
  np.testing.assert_array_equal(
    numerics.flat_index((3, 4, 5)), np.arange(60, dtype=np.uint32).reshape(3, 4, 5)
  )


def test_overflow_bound():
  k = numerics.MAX_INT32_REDUCTION
  assert k == 133_144
  assert 127 * 127 * k <= 2**31 - 1 < 127 * 127 * (k + 1)
