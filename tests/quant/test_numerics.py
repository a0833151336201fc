"""The int8 quantizer of METHOD.md: levels, rounding, the zero-scale guard, NaN visibility,
per-channel broadcasting and stochastic rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax.quant import numerics


def test_levels_rounding_and_clipping():
  v = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0 / 254, 3.0 / 254, 1.0, 2.0])
  q = numerics.quantize(v, jnp.float32(1.0))
  assert q.dtype == jnp.int8
  # 0.5/254*... : 1/254 * 127 = 0.5 rounds to even (0); 3/254 * 127 = 1.5 rounds to 2.
  np.testing.assert_array_equal(q, [-127, -127, -64, 0, 32, 0, 2, 127, 127])
  np.testing.assert_array_equal(numerics.dequantize(q, 127.0), np.asarray(q, np.float32))


def test_zero_scale_gives_zeros_not_nan():
  v = jnp.zeros((4, 3))
  q = numerics.quantize(v, numerics.max_abs(v))
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
  np.testing.assert_array_equal(numerics.quantize(v, s), [[127, 127], [-64, 64]])


def test_stochastic_rounding_is_unbiased_and_needs_a_key():
  v = jnp.full((200_000,), 0.3 / 127)  # 0.3 of one level
  q = numerics.quantize(v, 1.0, rounding="stochastic", key=jax.random.key(0))
  assert set(np.unique(np.asarray(q))) <= {0, 1}
  assert abs(float(jnp.mean(q.astype(jnp.float32))) - 0.3) < 0.01
  with pytest.raises(ValueError, match="needs a PRNG key"):
    numerics.quantize(v, 1.0, rounding="stochastic")
  with pytest.raises(ValueError, match="rounding='up'"):
    numerics.quantize(v, 1.0, rounding="up")


def test_overflow_bound():
  k = numerics.MAX_INT32_REDUCTION
  assert k == 133_144
  assert 127 * 127 * k <= 2**31 - 1 < 127 * 127 * (k + 1)
