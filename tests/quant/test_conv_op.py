"""The quantized convolution op.

Strategy: (1) the int8 `xla` and `im2col` implementations (alone and mixed per contraction)
equal the float `simulate` oracle bit for bit when every scale is a power of two, for
outputs, both gradients and the new state, over 1-D/2-D/3-D,
strided, dilated, grouped and depthwise geometries; (2) for every method on Gaussian data the
two paths agree to float rounding and both stay close to the float convolution; (3) the
lowered program's forward, dgrad and wgrad contractions are int8 x int8 -> int32; (4) long
reductions do not overflow; zeros give no NaN, NaN stays visible; bad input names the problem.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from daq_jax import quant
from daq_jax.quant import backends, contract, conv_op, gradient, lowering
from tests.helpers import assert_close, cosine, pow2_tensor

TOLERANCE = {
  # xla vs simulate with arbitrary scales: same int8 values, rescaled in another order.
  "xla_vs_simulate_rtol": 1e-5,
  # int8 training vs the float conv on N(0, 1) data, per method (cosine similarity floor).
  "cosine_vs_float": 0.999,
}

GEOMETRIES = {
  "2d": ((2, 8, 8, 4), (3, 3, 4, 6), {}),
  "strided": ((2, 9, 9, 4), (3, 3, 4, 6), dict(window_strides=2)),
  "depthwise": ((2, 8, 8, 6), (3, 3, 1, 6), dict(feature_group_count=6)),
  "depthwise_multiplier_strided": (
    (2, 9, 9, 4),
    (3, 3, 1, 8),
    dict(feature_group_count=4, window_strides=2),
  ),
  "grouped_dilated": (
    (2, 9, 9, 4),
    (3, 3, 2, 6),
    dict(
      window_strides=(2, 1),
      feature_group_count=2,
      rhs_dilation=2,
      lhs_dilation=(1, 2),
      padding=((1, 2), (0, 1)),
    ),
  ),
  "pointwise": ((2, 8, 8, 4), (1, 1, 4, 8), dict(padding="VALID")),
  # Strided input gradients run per output phase; these have phases with no kernel taps.
  "pointwise_strided": ((2, 9, 8, 4), (1, 1, 4, 8), dict(window_strides=2)),
  "stride3_valid": ((2, 10, 11, 4), (2, 2, 4, 6), dict(window_strides=3, padding="VALID")),
  "strided_asymmetric_padding": (
    (2, 7, 8, 4),
    (3, 3, 4, 40),
    dict(window_strides=(2, 3), padding=((2, 0), (0, 2))),
  ),
  "1d": ((2, 9, 4), (3, 4, 8), dict(padding="VALID")),
  "3d": ((2, 5, 6, 7, 4), (3, 3, 3, 4, 8), dict(window_strides=2)),
}

METHODS = ["daq", "gvq", "mcs", "per_tensor", "ui8"]


def _cases(names):
  """`names` as parameters, the 3-D case (20-35 s each with an empty cache) in the slow set."""
  return [pytest.param(n, marks=pytest.mark.slow) if n == "3d" else n for n in names]


# The helpers jit what they run: one compilation per case instead of one per eager op keeps
# the suite fast on a cold compilation cache.


# The config and the geometry are static, so calls that differ only in their arrays (another
# key, say) reuse one compilation.
@functools.partial(jax.jit, static_argnames=("cfg", "geometry"))
def _vjp_jit(x, w, state, g, key, *, cfg, geometry):
  kw = dict(geometry)
  y, vjp = jax.vjp(lambda a, b, s: quant.conv_general(a, b, s, key, cfg=cfg, **kw), x, w, state)
  return (y, *vjp(g))


def _vjp(cfg, x, w, g, state=None, key=None, **kw):
  state = gradient.init_state(cfg, w.shape[-1]) if state is None else state
  key = jax.random.key(7) if cfg.stochastic and key is None else key
  return _vjp_jit(x, w, state, g, key, cfg=cfg, geometry=tuple(sorted(kw.items())))


def _float_vjp(x, w, g, **kw):
  spec = conv_op.make_spec(x.shape, w.shape, **kw)

  @jax.jit
  def run(x, w, g):
    y, vjp = jax.vjp(spec.float_conv, x, w)
    return (y, *vjp(g))

  return run(x, w, g)


@pytest.mark.parametrize("impl", ["xla", "im2col", "xla,im2col,xla"])
@pytest.mark.parametrize("name", _cases(GEOMETRIES))
def test_int8_equals_simulate_exactly_with_power_of_two_scales(name, impl):
  xs, ws, kw = GEOMETRIES[name]
  keys = jax.random.split(jax.random.key(0), 3)
  x, w = pow2_tensor(keys[0], xs, -3), pow2_tensor(keys[1], ws, -6)
  spec = conv_op.make_spec(xs, ws, **kw)
  out_shape = jax.eval_shape(spec.float_conv, x, w).shape
  g = pow2_tensor(keys[2], out_shape, -2, per_channel_max=True)
  cfg = quant.daq(impl=impl)
  got = _vjp(cfg, x, w, g, **kw)
  want = _vjp(cfg.replace(impl="simulate"), x, w, g, **kw)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  # Exact data also makes the quantized forward equal to the float conv.
  np.testing.assert_array_equal(got[0], spec.float_conv(x, w))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", _cases(["2d", "depthwise_multiplier_strided", "3d"]))
def test_every_method_matches_simulate_and_stays_close_to_float(method, name):
  xs, ws, kw = GEOMETRIES[name]
  keys = jax.random.split(jax.random.key(1), 3)
  x, w = jax.random.normal(keys[0], xs), jax.random.normal(keys[1], ws) * 0.1
  cfg = quant.preset(method)
  spec = conv_op.make_spec(xs, ws, **kw)
  g = jax.random.normal(keys[2], jax.eval_shape(spec.float_conv, x, w).shape)
  y_f, dx_f, dw_f = _float_vjp(x, w, g, **kw)
  got = _vjp(cfg, x, w, g, **kw)
  want = _vjp(cfg.replace(impl="simulate"), x, w, g, **kw)
  for a, b in zip(got[:3], want[:3], strict=True):
    assert_close(a, b, TOLERANCE["xla_vs_simulate_rtol"])
  for a, b in zip(jax.tree.leaves(got[3]), jax.tree.leaves(want[3]), strict=True):
    np.testing.assert_array_equal(a, b)  # the state comes from the same g: identical
  for a, b in zip(got[:3], (y_f, dx_f, dw_f), strict=True):
    assert cosine(a, b) > TOLERANCE["cosine_vs_float"]


def _assert_int8_program(fn, *args, at_least: int):
  found = lowering.contractions(fn, *args)
  assert len(found) >= at_least and all(c.is_int8 for c in found), found
  hlo = lowering.hlo_contractions(fn, *args)
  assert len(hlo) >= at_least, hlo
  assert all(ops == ("i8", "i8") and out == "i32" for _, ops, out in hlo), hlo


@pytest.mark.parametrize(
  "name, impl", [(name, "xla") for name in GEOMETRIES] + [("strided", "im2col"), ("3d", "im2col")]
)
def test_forward_dgrad_and_wgrad_are_int8_in_the_lowered_program(name, impl):
  xs, ws, kw = GEOMETRIES[name]
  cfg = quant.daq(impl=impl)
  x, w = jnp.ones(xs), jnp.ones(ws)
  state = gradient.init_state(cfg, ws[-1])

  def loss(a, b, s):
    return jnp.sum(quant.conv_general(a, b, s, cfg=cfg, **kw) ** 2)

  # xla: forward and dgrad are convolutions (or im2col dots for narrow ones); wgrad is one dot
  # per kernel tap: at least 1 + 1 + taps contractions. im2col: a GEMM each (a strided dgrad:
  # one per output phase). Every one is
  # int8 x int8 -> int32.
  taps = int(np.prod(ws[:-2]))
  at_least = 2 + taps if impl == "xla" else 3
  _assert_int8_program(jax.value_and_grad(loss, argnums=(0, 1, 2)), x, w, state, at_least=at_least)


def test_residuals_are_int8():
  cfg = quant.daq()
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
  spec = conv_op.make_spec(x.shape, w.shape)
  plan = backends.plan(cfg, spec)
  state = gradient.init_state(cfg, 8)
  _, res = conv_op._forward(plan, spec, quant.state.Site(), x, w, state, {}, None)
  x_t, w_d = res.inputs, res.kernel  # the xla implementation keeps x channels first
  assert x_t.q.dtype == w_d.q.dtype == jnp.int8 and x_t.q.shape == (4, 2, 8, 8)
  assert x_t.scale.dtype == w_d.scale.dtype == jnp.float32
  assert x_t.scale.shape == w_d.scale.shape == ()


def test_wgrad_longer_than_the_int32_bound_is_exact():
  cfg = quant.daq()
  positions = 200_000  # > 133,144 terms of 127 * 127 per weight-gradient element
  x = jnp.ones((1, 500, 400, 1))
  w = jnp.ones((1, 1, 1, 1))
  g = jnp.ones((1, 500, 400, 1))
  _, dx, dw, _ = _vjp(cfg, x, w, g, padding="VALID")
  np.testing.assert_allclose(dw.ravel(), [positions], rtol=1e-6)
  np.testing.assert_allclose(dx, 1.0, rtol=1e-6)
  # The trap this guards against: one int32 accumulation wraps around.
  q = jnp.full((1, positions), 127, jnp.int8)
  naive = lax.dot_general(q, q.T, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  assert int(naive[0, 0]) < 0


def test_chunked_contractions_equal_unchunked_ones():
  keys = jax.random.split(jax.random.key(3), 4)
  a = jax.random.randint(keys[0], (5, 1000), -127, 128).astype(jnp.int8)
  b = jax.random.randint(keys[1], (1000, 3), -127, 128).astype(jnp.int8)
  nn = (((1,), (0,)), ((), ()))
  np.testing.assert_array_equal(
    contract.int8_dot_general(a, b, nn, max_reduction=300), contract.int8_dot_general(a, b, nn)
  )
  x = jax.random.randint(keys[2], (2, 6, 6, 40), -127, 128).astype(jnp.int8)
  w = jax.random.randint(keys[3], (3, 3, 40, 5), -127, 128).astype(jnp.int8)
  kw = dict(
    window_strides=(1, 1),
    padding="SAME",
    lhs_dilation=(1, 1),
    rhs_dilation=(1, 1),
    feature_group_count=1,
  )
  np.testing.assert_array_equal(
    contract.int8_conv(x, w, max_reduction=100, **kw), contract.int8_conv(x, w, **kw)
  )


def test_zeros_give_zeros_without_nan():
  cfg = quant.daq()
  xs, ws = (2, 6, 6, 3), (3, 3, 3, 4)
  ones_x, ones_w, ones_g = jnp.ones(xs), jnp.ones(ws), jnp.ones((2, 6, 6, 4))
  for x, w, g in [
    (jnp.zeros(xs), ones_w, ones_g),
    (ones_x, jnp.zeros(ws), ones_g),
    (ones_x, ones_w, jnp.zeros((2, 6, 6, 4))),
  ]:
    for leaf in jax.tree.leaves(_vjp(cfg, x, w, g)):
      assert np.isfinite(np.asarray(leaf)).all()


def test_nan_in_the_incoming_gradient_stays_visible():
  cfg = quant.daq()
  x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
  g = jnp.ones((2, 6, 6, 4)).at[0, 1, 1, 2].set(jnp.nan)
  _, dx, dw, _ = _vjp(cfg, x, w, g)
  assert np.isnan(np.asarray(dx)).any()
  assert np.isnan(np.asarray(dw[..., 2])).all() and np.isfinite(np.asarray(dw[..., 0])).all()
  g_inf = jnp.ones((2, 6, 6, 4)).at[0, 1, 1, 2].set(jnp.inf)
  _, dx, dw, _ = _vjp(cfg, x, w, g_inf)
  assert not np.isfinite(np.asarray(dx)).all() and not np.isfinite(np.asarray(dw)).all()
  y = quant.conv_general(x.at[0, 0, 0, 0].set(jnp.nan), w, gradient.init_state(cfg, 4), cfg=cfg)
  assert np.isnan(np.asarray(y)).any()


@pytest.mark.parametrize(
  "xs, ws, kw, match",
  [
    ((2, 8, 8, 4), (3, 3, 5, 6), {}, "has 5 input channels per group"),
    ((8, 4), (4, 6), {}, "must both be rank 3, 4 or 5"),
    ((2, 8, 8, 4), (3, 3, 4, 6), dict(window_strides=(1, 1, 1)), "one entry per spatial dim"),
    ((2, 8, 8, 4), (3, 3, 4, 6), dict(padding=((1, 1),)), r"must be 2 \(low, high\) pairs"),
    ((2, 8, 8, 4), (3, 3, 4, 6), dict(padding="FULL"), "padding='FULL'"),
    ((2, 8, 8, 4), (3, 3, 2, 6), dict(feature_group_count=3), "feature_group_count=3"),
    ((2, 2, 2, 4), (3, 3, 4, 6), dict(padding="VALID"), "empty output"),
    (
      (2, 4, 8, 8),
      (6, 4, 3, 3),
      dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
      "are not supported; the quantized conv is channels last",
    ),
    ((2, 8, 8, 4), (3, 3, 4, 6), dict(dimension_numbers=("NHWC", "HWIO")), "are not valid"),
  ],
)
def test_bad_shapes_name_the_problem(xs, ws, kw, match):
  cfg = quant.daq()
  with pytest.raises(ValueError, match=match):
    quant.conv_general(jnp.ones(xs), jnp.ones(ws), gradient.init_state(cfg, ws[-1]), cfg=cfg, **kw)


def test_channels_last_dimension_numbers_are_accepted():
  cfg = quant.daq()
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
  state = gradient.init_state(cfg, 3)
  want = quant.conv_general(x, w, state, cfg=cfg)
  got = quant.conv_general(x, w, state, cfg=cfg, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_array_equal(got, want)


def test_state_of_the_wrong_shape_is_refused():
  cfg = quant.daq()
  with pytest.raises(ValueError, match="quantization state has shapes"):
    quant.conv_general(
      jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3)), gradient.init_state(cfg, 5), cfg=cfg
    )
