"""Per-row dgrad scales (`dgrad_granularity="per_row"`): one g scale per output position.

Strategy: (1) the int8 GEMM + col2im dgrad equals the float `simulate` oracle bit for bit when
every row's and channel's max is a power of two, over the conv geometries of
test_conv_op (strided, dilated, grouped, depthwise, 1-D, 3-D), alone and mixed with the xla
forward and wgrad, and for dense layers on every implementation; (2) on Gaussian data its dX
is closer to the float one than DAQ's global scale, which is the reason the option exists;
(3) with stochastic rounding (`daq_sr_rows`) the same exactness holds for one key, and dX is
unbiased and far less noisy than with one global scale; (4) its three contractions are
int8 x int8 -> int32 in the lowered program; (5) the implementations that cannot factor the
scales out (xla's int8 convolution) are refused by name, and auto picks one that can; (6) bad
configs are one-line errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax import quant
from daq_jax.quant import backends, conv_op, gradient, lowering
from tests.helpers import cosine, pow2_tensor
from tests.quant.test_conv_op import GEOMETRIES, _cases, _float_vjp, _vjp
from tests.quant.test_dense_op import _vjp as _dense_vjp

ROWS = dict(dgrad_granularity="per_row")


def _rows_pow2(key, shape, exponent: int) -> jax.Array:
  """Integers in [-127, 127] times powers of two, every row (position) and every channel with
  a max of 127 times a power of two (rows differ by 2**-(row % 3)), so that both the per-row
  dgrad and the per-channel wgrad quantization of a g made so are exact."""
  q = jax.random.randint(key, shape, -127, 128).astype(jnp.float32).reshape(-1, shape[-1])
  q = q.at[:, 0].set(127.0).at[0].set(127.0)
  rows = 2.0 ** -(jnp.arange(q.shape[0]) % 3).astype(jnp.float32)
  return (q * rows[:, None] * 2.0**exponent).reshape(shape)


def _data(name, seed=0, exact=True):
  xs, ws, kw = GEOMETRIES[name]
  keys = jax.random.split(jax.random.key(seed), 3)
  spec = conv_op.make_spec(xs, ws, **kw)
  if exact:
    x, w = pow2_tensor(keys[0], xs, -3), pow2_tensor(keys[1], ws, -6)
  else:
    x, w = jax.random.normal(keys[0], xs), jax.random.normal(keys[1], ws) * 0.1
  out = jax.eval_shape(spec.float_conv, x, w).shape
  g = _rows_pow2(keys[2], out, -2) if exact else jax.random.normal(keys[2], out)
  return x, w, g, kw


# Every geometry on im2col; the xla forward and wgrad (what auto runs on the CPU) around it on
# a few, which is where the residuals differ.
@pytest.mark.parametrize(
  "name, impl",
  [(n, "im2col") for n in GEOMETRIES if n != "3d"]
  + [pytest.param("3d", "im2col", marks=pytest.mark.slow)]
  + [(n, "xla,im2col,xla") for n in ("2d", "grouped_dilated", "pointwise_strided")],
)
def test_int8_equals_simulate_exactly_with_power_of_two_scales(name, impl):
  x, w, g, kw = _data(name)
  cfg = quant.daq(impl=impl, **ROWS)
  got = _vjp(cfg, x, w, g, **kw)
  want = _vjp(cfg.replace(impl="simulate"), x, w, g, **kw)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  # The rows' scales differ, so a global scale would give another dx.
  global_dx = _vjp(quant.daq(impl=impl), x, w, g, **kw)[1]
  assert not np.array_equal(got[1], global_dx)


@pytest.mark.parametrize("name", ["2d", "strided", "depthwise_multiplier_strided", "1d"])
def test_per_row_dx_is_closer_to_float_than_one_global_scale(name):
  x, _, g, kw = _data(name, seed=1, exact=False)
  # An exactly quantized kernel leaves g's quantization the only error in dx.
  w = pow2_tensor(jax.random.key(6), GEOMETRIES[name][1], -6)
  # Rows (positions) whose magnitudes spread over six octaves, as a real g's do: the largest
  # sets the global scale, and the small rows lose most of their bits to it.
  octaves = jax.random.uniform(jax.random.key(5), g.shape[:-1] + (1,), minval=-6.0, maxval=0.0)
  g = g * 2.0**octaves
  _, dx_f, _ = _float_vjp(x, w, g, **kw)
  _, dx_rows, dw_rows, _ = _vjp(quant.daq(**ROWS), x, w, g, **kw)
  _, dx_daq, dw_daq, _ = _vjp(quant.daq(), x, w, g, **kw)
  err = lambda a: float(jnp.linalg.norm(a - dx_f) / jnp.linalg.norm(dx_f))
  assert err(dx_rows) < 0.5 * err(dx_daq), (err(dx_rows), err(dx_daq))
  np.testing.assert_array_equal(dw_rows, dw_daq)  # the wgrad path is not touched
  assert cosine(dx_rows, dx_f) > 0.999


@pytest.mark.parametrize("name", ["2d", "strided"])
def test_stochastic_per_row_equals_simulate_exactly_for_one_key(name):
  x, w, g, kw = _data(name)
  cfg = quant.preset("daq_sr_rows", impl="im2col")
  key = jax.random.key(3)
  got = _vjp(cfg, x, w, g, key=key, **kw)
  want = _vjp(cfg.replace(impl="simulate"), x, w, g, key=key, **kw)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def test_stochastic_per_row_dx_is_unbiased_and_less_noisy_than_one_global_scale():
  x, _, g, kw = _data("2d", seed=1, exact=False)
  w = pow2_tensor(jax.random.key(6), GEOMETRIES["2d"][1], -6)
  octaves = jax.random.uniform(jax.random.key(5), g.shape[:-1] + (1,), minval=-6.0, maxval=0.0)
  g = g * 2.0**octaves
  _, dx_f, _ = _float_vjp(x, w, g, **kw)
  err = lambda a: float(jnp.linalg.norm(a - dx_f) / jnp.linalg.norm(dx_f))
  keys = jax.random.split(jax.random.key(8), 16)
  # _vjp compiles once per config and geometry: the 16 keys reuse it.
  dx_per_key = lambda method: [_vjp(quant.preset(method), x, w, g, key=k, **kw)[1] for k in keys]
  rows, glob = dx_per_key("daq_sr_rows"), dx_per_key("daq_sr")
  single_rows, single_glob = np.mean([err(d) for d in rows]), np.mean([err(d) for d in glob])
  # The reason for the preset: a global scale gives the small rows rounding noise of the
  # large rows' step; one scale per row gives each row noise of its own size.
  assert single_rows < 0.5 * single_glob, (single_rows, single_glob)
  # Unbiased: the error of the mean over 16 keys falls as variance does, to about
  # 1/sqrt(16) = 0.25 of one key's (a bias would not fall: 0.4 leaves room for sampling).
  assert err(jnp.mean(jnp.stack(rows), axis=0)) < 0.4 * single_rows


@pytest.mark.parametrize("impl", ["xla", "im2col"])
def test_dense_per_row_equals_simulate_exactly(impl):
  keys = jax.random.split(jax.random.key(2), 3)
  x, w = pow2_tensor(keys[0], (3, 4, 16), -3), pow2_tensor(keys[1], (16, 8), -6)
  g = _rows_pow2(keys[2], (3, 4, 8), -2)
  cfg = quant.daq(impl=impl, **ROWS)
  got = _dense_vjp(cfg, x, w, g)
  want = _dense_vjp(cfg.replace(impl="simulate"), x, w, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  dx_float = jnp.einsum("bmn,kn->bmk", g, w, precision="highest")
  np.testing.assert_array_equal(got[1], dx_float)  # exact data: the float dx itself


@pytest.mark.parametrize("name", _cases(["2d", "strided", "3d"]))
def test_forward_dgrad_and_wgrad_are_int8_in_the_lowered_program(name):
  xs, ws, kw = GEOMETRIES[name]
  cfg = quant.daq(**ROWS)
  state = gradient.init_state(cfg, ws[-1])

  def loss(a, b, s):
    return jnp.sum(quant.conv_general(a, b, s, cfg=cfg, **kw) ** 2)

  fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
  args = (jnp.ones(xs), jnp.ones(ws), state)
  found = lowering.contractions(fn, *args)
  assert len(found) >= 3 and all(c.is_int8 for c in found), found
  hlo = lowering.hlo_contractions(fn, *args)
  assert all(ops == ("i8", "i8") and out == "i32" for _, ops, out in hlo), hlo


def test_the_int8_convolution_is_refused_and_auto_picks_one_that_takes_row_scales():
  spec = conv_op.make_spec((2, 8, 8, 4), (3, 3, 4, 6))
  with pytest.raises(ValueError, match=r"per-row g scales .* do not factor out of an int8 conv"):
    backends.plan(quant.daq(impl="xla", **ROWS), spec, platform="cpu")
  assert backends.plan(quant.daq(**ROWS), spec, platform="cpu").names == ("xla", "im2col", "xla")
  # On CUDA, the implicit-GEMM dgrad scales each tap's sum by its source rows' scales.
  plan = backends.plan(quant.daq(**ROWS), spec, platform="cuda")
  assert plan.dgrad_rows and plan.names[1] == "implicit"
  # Dense layers factor the row scales out of any implementation's dgrad.
  assert backends.plan(quant.daq(impl="xla", **ROWS)).names == ("xla", "xla", "xla")


def test_the_preset_and_bad_configs():
  cfg = quant.preset("daq_sr_wgrad_rows")
  assert (cfg.dgrad_granularity, cfg.dgrad_rounding, cfg.wgrad_rounding) == (
    "per_row",
    "nearest",
    "stochastic",
  )
  cfg = quant.preset("daq_sr_rows")
  assert (cfg.dgrad_granularity, cfg.dgrad_rounding, cfg.wgrad_rounding) == (
    "per_row",
    "stochastic",
    "stochastic",
  )
  assert (cfg.wgrad_granularity, cfg.wgrad_clip) == ("per_channel", "mcs")  # DAQ's wgrad
  assert quant.from_spec("daq(dgrad_granularity=per_row)").dgrad_granularity == "per_row"
  with pytest.raises(ValueError, match="dgrad_granularity='rows' is not one of"):
    quant.daq(dgrad_granularity="rows")
  with pytest.raises(ValueError, match=r"takes dgrad_clip='max'.*dgrad_clip='mcs'"):
    quant.daq(dgrad_granularity="per_row", dgrad_clip="mcs")


def test_state_and_statistics_keep_their_shapes():
  cfg = quant.daq(**ROWS)
  g = jax.random.normal(jax.random.key(4), (2, 5, 5, 6)).at[1, 2, 3].multiply(9.0)
  gq = gradient.quantize_gradient(g, gradient.init_state(cfg, 6), cfg)
  assert gq.dgrad_scale.shape == (2, 5, 5, 1)
  np.testing.assert_array_equal(gq.dgrad_scale[..., 0], jnp.max(jnp.abs(g), axis=-1))
  assert jax.tree.map(jnp.shape, gq.new_state) == {"dgrad_clip": (), "wgrad_clip": (6,)}
  np.testing.assert_array_equal(gq.new_state["dgrad_clip"], jnp.max(jnp.abs(g)))
  stats = gradient.statistics(gq, cfg)
  assert stats["dgrad_scale"].shape == () and float(stats["dgrad_scale"]) > 0
