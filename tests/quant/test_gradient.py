"""The gradient quantizer on hand-built gradients: the distribution test separates Gaussian
from Laplace channels, the clip rules follow docs/method.md exactly, the state is carried, and
degenerate inputs (zeros, NaN) behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax import quant
from daq_jax.quant import gradient, numerics

# A realistic channel: ResNet-20's last stage at batch 128 has 128 * 8 * 8 positions.
POSITIONS = 128 * 8 * 8


def _channels(kind: str, n: int, seed: int) -> jax.Array:
  key = jax.random.key(seed)
  if kind == "gaussian":
    return jax.random.normal(key, (POSITIONS, n)) * 1e-3
  return jax.random.laplace(key, (POSITIONS, n)) * 1e-3


def test_classifier_separates_gaussian_from_laplace_channels():
  cfg = quant.daq()
  bell_g = gradient.clip_stats(_channels("gaussian", 64, 0)).is_bell(cfg)
  bell_l = gradient.clip_stats(_channels("laplace", 64, 1)).is_bell(cfg)
  assert int(bell_g.sum()) == 64
  assert int(bell_l.sum()) == 0
  r = gradient.clip_stats(_channels("gaussian", 64, 2)).above_sigma
  np.testing.assert_allclose(float(r.mean()), 0.317, atol=0.005)  # docs/method.md: 0.317 exact


def test_daq_clip_rule_and_state_update():
  cfg = quant.daq()
  g = jnp.concatenate([_channels("gaussian", 1, 3), _channels("laplace", 1, 4)], axis=1)
  gmax = np.asarray(numerics.max_abs(g, axis=0))
  prev = jnp.array([5e-3, 7e-3])
  out = gradient.quantize_gradient(g, {"wgrad_clip": prev, "dgrad_clip": jnp.float32(0)}, cfg)
  ema = 0.2 * np.asarray(prev) + 0.8 * gmax
  # Bell-shaped channel: s = max|g|. Inverted-T channel: s = 0.2 s_prev + 0.8 max|g|.
  np.testing.assert_allclose(out.wgrad_scale, [gmax[0], ema[1]], rtol=1e-6)
  # The state tracks the recursion for every channel (a channel may change type later).
  np.testing.assert_allclose(out.new_state["wgrad_clip"], ema, rtol=1e-6)
  # dgrad: one global max-abs scale.
  np.testing.assert_allclose(out.dgrad_scale, gmax.max(), rtol=0)
  assert out.dgrad_q.dtype == out.wgrad_q.dtype == jnp.int8


def test_first_step_starts_the_recursion_at_the_channel_max():
  cfg = quant.daq()
  g = _channels("laplace", 3, 5)
  out = gradient.quantize_gradient(g, gradient.init_state(cfg, 3), cfg)
  np.testing.assert_allclose(out.wgrad_scale, numerics.max_abs(g, axis=0), rtol=0)
  np.testing.assert_allclose(out.new_state["wgrad_clip"], numerics.max_abs(g, axis=0), rtol=0)


def test_inverted_t_channels_get_clipped_as_max_falls():
  cfg = quant.daq()
  g = _channels("laplace", 2, 6)
  state = gradient.init_state(cfg, 2)
  for _ in range(3):
    state = gradient.quantize_gradient(g, state, cfg).new_state
  small = g * 0.25  # the max drops: the recursion lags behind it, so values above s clip
  out = gradient.quantize_gradient(small, state, cfg)
  assert bool(jnp.all(out.wgrad_scale > numerics.max_abs(small, axis=0)))
  np.testing.assert_allclose(
    out.wgrad_scale, 0.2 * state["wgrad_clip"] + 0.8 * numerics.max_abs(small, axis=0), rtol=1e-6
  )


def test_per_tensor_mcs_uses_one_scale():
  cfg = quant.mcs()
  g = _channels("laplace", 4, 7)
  prev = {"wgrad_clip": jnp.float32(1e-2), "dgrad_clip": jnp.float32(0)}
  out = gradient.quantize_gradient(g, prev, cfg)
  assert out.wgrad_scale.shape == ()
  np.testing.assert_allclose(out.wgrad_scale, 0.2 * 1e-2 + 0.8 * numerics.max_abs(g), rtol=1e-6)


def test_per_tensor_and_ui8_share_one_quantized_gradient():
  g = _channels("gaussian", 4, 8).reshape(8, 32, 32, 4)
  for cfg in (quant.per_tensor(), quant.ui8()):
    key = jax.random.key(0) if cfg.stochastic else None
    out = gradient.quantize_gradient(g, gradient.init_state(cfg, 4), cfg, key)
    np.testing.assert_array_equal(out.wgrad_q, out.dgrad_q.reshape(-1, 4))
    assert out.wgrad_scale == out.dgrad_scale


def test_dsgc_picks_the_ratio_with_the_smallest_cosine_distance():
  cfg = quant.ui8(grad_rounding="nearest", dsgc_ratios=(0.05, 0.5, 1.0))
  g = _channels("laplace", 1, 9)
  out = gradient.quantize_gradient(g, gradient.init_state(cfg, 1), cfg)
  gmax = float(numerics.max_abs(g))
  distances = [
    float(gradient.cosine_distance(g, numerics.fake_quantize(g, r * gmax)))
    for r in (0.05, 0.5, 1.0)
  ]
  best = int(np.argmin(distances))
  np.testing.assert_allclose(out.wgrad_scale, (0.05, 0.5, 1.0)[best] * gmax, rtol=1e-6)
  # float32 cancellation in 1 - cos: distances near 1e-4 agree to about 1e-6.
  np.testing.assert_allclose(out.new_state["deviation"], distances[best], atol=1e-6)


def test_per_channel_dsgc_clips_each_channel_and_reports_one_deviation():
  cfg = quant.QuantConfig(wgrad_granularity="per_channel", wgrad_clip="dsgc")
  g = jnp.concatenate([_channels("laplace", 2, 12), _channels("gaussian", 2, 13)], axis=1)
  out = gradient.quantize_gradient(g, gradient.init_state(cfg, 4), cfg)
  assert out.wgrad_scale.shape == (4,) and out.new_state["deviation"].shape == ()
  ratios = np.asarray(out.wgrad_scale / numerics.max_abs(g, axis=0))
  assert all(any(abs(r - c) < 1e-5 for c in cfg.dsgc_ratios) for r in ratios), ratios


def test_all_zero_gradient_gives_zeros_and_no_nan():
  for cfg in (quant.daq(), quant.mcs(), quant.ui8(), quant.per_tensor()):
    g = jnp.zeros((64, 3))
    state = gradient.init_state(cfg, 3)
    out = gradient.quantize_gradient(g, state, cfg, jax.random.key(0))
    for leaf in jax.tree.leaves(out):
      assert not np.isnan(np.asarray(leaf, np.float32)).any()
    np.testing.assert_array_equal(out.wgrad_q, 0)
    np.testing.assert_array_equal(out.dgrad_q, 0)


def test_nan_in_gradient_reaches_the_scales():
  cfg = quant.daq()
  g = _channels("gaussian", 3, 10).at[5, 1].set(jnp.nan)
  out = gradient.quantize_gradient(g, gradient.init_state(cfg, 3), cfg)
  assert np.isnan(np.asarray(out.dgrad_scale))
  assert np.isnan(np.asarray(out.wgrad_scale[1])) and not np.isnan(np.asarray(out.wgrad_scale[0]))
  # After a non-finite step the recursion restarts from the next max instead of staying NaN.
  out2 = gradient.quantize_gradient(_channels("laplace", 3, 11), out.new_state, cfg)
  assert np.isfinite(np.asarray(out2.new_state["wgrad_clip"])).all()


def test_stochastic_config_needs_a_key_and_state_must_fit():
  g = jnp.ones((8, 2))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    gradient.quantize_gradient(g, gradient.init_state(quant.ui8(), 2), quant.ui8())
  with pytest.raises(ValueError, match="quantization state has shapes"):
    gradient.check_state(gradient.init_state(quant.mcs(), 2), quant.daq(), 2)


def test_ui8_deviation_is_that_of_the_stochastically_rounded_gradient():
  # docs/method.md: the learning rate is scaled by the deviation of the gradient the layer used.
  cfg = quant.ui8()
  g = jax.random.laplace(jax.random.key(4), (4096, 16)) * 1e-3
  out = gradient.quantize_gradient(g, gradient.init_state(cfg, 16), cfg, jax.random.key(5))
  used = numerics.dequantize(out.wgrad_q, out.wgrad_scale)
  np.testing.assert_allclose(
    out.new_state["deviation"], gradient.cosine_distance(g, used), rtol=1e-5
  )
  nearest = gradient.cosine_distance(g, numerics.fake_quantize(g, out.wgrad_scale))
  assert out.new_state["deviation"] > 1.5 * nearest  # stochastic rounding adds about as much


def test_the_statistics_say_what_the_quantizer_saw_and_stay_out_of_the_state():
  cfg = quant.daq()
  # Two bell-shaped channels, three inverted-T ones and a dead one.
  g = jnp.concatenate(
    [_channels("gaussian", 2, 7), _channels("laplace", 3, 8), jnp.zeros((POSITIONS, 1))], axis=1
  )
  prev = gradient.quantize_gradient(2 * g, gradient.init_state(cfg, 6), cfg).new_state
  out = gradient.quantize_gradient(g, prev, cfg)
  assert set(out.new_state) == set(prev) == {"wgrad_clip", "dgrad_clip"}
  stats = gradient.statistics(out, cfg)
  gmax = np.asarray(numerics.max_abs(g, axis=0))
  clip = np.asarray(out.wgrad_scale)
  assert float(stats["inverted_t"]) == pytest.approx(3 / 5)  # of the live ones
  np.testing.assert_allclose(stats["clip_ratio"], np.mean(clip[:5] / gmax[:5]))
  assert float(stats["dgrad_scale"]) == float(out.dgrad_scale)
  assert float(stats["clip_ratio"]) > 1  # the recursion lags the halved max
  assert gradient.statistics(out, cfg, ("clip_ratio",)) == {"clip_ratio": stats["clip_ratio"]}
  assert gradient.statistics(out, cfg, ()) == {}


def test_rounding_is_chosen_per_path_with_daqs_scales_kept():
  g = jnp.concatenate([_channels("gaussian", 3, 14), _channels("laplace", 3, 15)], axis=1)
  key = jax.random.key(6)
  daq = gradient.quantize_gradient(g, gradient.init_state(quant.daq(), 6), quant.daq())
  runs = {
    cfg.name: gradient.quantize_gradient(g, gradient.init_state(cfg, 6), cfg, key)
    for cfg in (quant.daq_sr(), quant.daq_sr_wgrad())
  }
  for out in runs.values():  # the same scales and state: only the rounding differs
    np.testing.assert_array_equal(out.wgrad_scale, daq.wgrad_scale)
    np.testing.assert_array_equal(out.dgrad_scale, daq.dgrad_scale)
    np.testing.assert_array_equal(out.new_state["wgrad_clip"], daq.new_state["wgrad_clip"])
    assert np.mean(np.asarray(out.wgrad_q) != np.asarray(daq.wgrad_q)) > 0.2
  np.testing.assert_array_equal(runs["daq_sr_wgrad"].dgrad_q, daq.dgrad_q)  # nearest there
  assert np.mean(np.asarray(runs["daq_sr"].dgrad_q) != np.asarray(daq.dgrad_q)) > 0.2
  # The two paths draw independent bits.
  assert not np.array_equal(runs["daq_sr"].wgrad_q.reshape(g.shape), runs["daq_sr"].dgrad_q)


def test_stochastic_wgrad_path_is_unbiased_where_nearest_zeroes_small_entries():
  # Mostly small entries under a few large ones, as in early layers: nearest rounding sets
  # most of them to zero, and their coherent sum (the weight gradient's reduction) is lost.
  small = jax.random.uniform(jax.random.key(16), (4096, 4)) * 3e-3  # < half a level
  g = small.at[0].set(1.0)  # max 1: one level is 1/127, every small entry rounds to 0
  cfg = quant.daq_sr()
  state = gradient.init_state(cfg, 4)

  def column_sums(key):
    out = gradient.quantize_gradient(g, state, cfg, key)
    return jnp.sum(numerics.dequantize(out.wgrad_q, out.wgrad_scale)[1:], axis=0)

  want = jnp.sum(g[1:], axis=0)
  nearest = gradient.quantize_gradient(g, state, quant.daq())
  assert float(jnp.max(jnp.abs(nearest.wgrad_q[1:]))) == 0  # all lost
  sums = jax.vmap(column_sums)(jax.random.split(jax.random.key(17), 64))
  np.testing.assert_allclose(jnp.mean(sums, axis=0), want, rtol=0.03)
