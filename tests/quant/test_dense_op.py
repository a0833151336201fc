"""The quantized dense op: xla equals simulate (exactly with power-of-two scales), stays close
to float for every method, is int8 in the lowered program, handles long reductions, leading
batch dims, zeros, NaN and bad shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax import quant
from daq_jax.quant import gradient, lowering
from daq_jax.quant.backends.simulate import float_dense
from tests.helpers import assert_close, cosine, pow2_tensor

TOLERANCE = {
  "xla_vs_simulate_rtol": 1e-5,  # same int8 values, rescaled in another order
  "cosine_vs_float": 0.999,  # N(0, 1) data, K = 64
}


def _vjp(cfg, x, w, g, state=None):
  state = gradient.init_state(cfg, w.shape[-1]) if state is None else state
  key = jax.random.key(3) if cfg.stochastic else None

  @jax.jit  # one compilation per case, not one per eager op
  def run(x, w, state, g, key):
    y, vjp = jax.vjp(lambda a, b, s: quant.dense(a, b, s, key, cfg=cfg), x, w, state)
    return (y, *vjp(g))

  return run(x, w, state, g, key)


def test_xla_equals_simulate_exactly_with_power_of_two_scales():
  keys = jax.random.split(jax.random.key(0), 3)
  x = pow2_tensor(keys[0], (3, 5, 32), -4)
  w = pow2_tensor(keys[1], (32, 12), -7)
  g = pow2_tensor(keys[2], (3, 5, 12), -1, per_channel_max=True)
  got = _vjp(quant.daq(), x, w, g)
  want = _vjp(quant.daq(impl="simulate"), x, w, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got[0], float_dense(x, w))


@pytest.mark.parametrize("method", ["daq", "gvq", "mcs", "per_tensor", "ui8"])
def test_every_method_matches_simulate_and_stays_close_to_float(method):
  keys = jax.random.split(jax.random.key(1), 3)
  x, w = jax.random.normal(keys[0], (16, 64)), jax.random.normal(keys[1], (64, 10))
  g = jax.random.normal(keys[2], (16, 10))
  cfg = quant.preset(method)
  y_f, vjp_f = jax.vjp(float_dense, x, w)
  got, want = _vjp(cfg, x, w, g), _vjp(cfg.replace(impl="simulate"), x, w, g)
  for a, b in zip(got[:3], want[:3], strict=True):
    assert_close(a, b, TOLERANCE["xla_vs_simulate_rtol"])
  for a, b in zip(got[:3], (y_f, *vjp_f(g)), strict=True):
    assert cosine(a, b) > TOLERANCE["cosine_vs_float"]


def test_all_three_products_are_int8_in_the_lowered_program():
  cfg = quant.daq()
  x, w = jnp.ones((4, 7, 16)), jnp.ones((16, 8))
  state = gradient.init_state(cfg, 8)
  fn = jax.value_and_grad(
    lambda a, b, s: jnp.sum(quant.dense(a, b, s, cfg=cfg) ** 2), argnums=(0, 1, 2)
  )
  found = lowering.contractions(fn, x, w, state)
  assert len(found) == 3 and all(c.is_int8 for c in found), found
  hlo = lowering.hlo_contractions(fn, x, w, state)
  assert len(hlo) == 3 and all(ops == ("i8", "i8") and out == "i32" for _, ops, out in hlo)


def test_wgrad_over_a_batch_longer_than_the_int32_bound_is_exact():
  n = 200_000
  _, dx, dw, _ = _vjp(quant.daq(), jnp.ones((n, 2)), jnp.ones((2, 3)), jnp.ones((n, 3)))
  np.testing.assert_allclose(dw, np.full((2, 3), n), rtol=1e-6)
  np.testing.assert_allclose(dx, 3.0, rtol=1e-6)


def test_zeros_and_nan():
  cfg = quant.daq()
  for leaf in jax.tree.leaves(_vjp(cfg, jnp.zeros((4, 8)), jnp.zeros((8, 3)), jnp.zeros((4, 3)))):
    assert np.isfinite(np.asarray(leaf)).all()
  g = jnp.ones((4, 3)).at[1, 1].set(jnp.nan)
  _, dx, dw, _ = _vjp(cfg, jnp.ones((4, 8)), jnp.ones((8, 3)), g)
  assert np.isnan(np.asarray(dx)).all() and np.isnan(np.asarray(dw[:, 1])).all()


def test_bad_shapes_name_the_problem():
  cfg = quant.daq()
  with pytest.raises(ValueError, match=r"x \(4, 8\) and w \(7, 3\) do not fit"):
    quant.dense(jnp.ones((4, 8)), jnp.ones((7, 3)), gradient.init_state(cfg, 3), cfg=cfg)
  with pytest.raises(ValueError, match="quantization state has shapes"):
    quant.dense(jnp.ones((4, 8)), jnp.ones((8, 3)), gradient.init_state(cfg, 2), cfg=cfg)
