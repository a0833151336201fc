"""Real clients' models and training steps, written here in the style of flax's examples,
big_vision and the NNX tutorials (none of their code).

Strategy: (1) the contraction layers other than Conv and Dense (ConvTranspose, DenseGeneral /
LinearGeneral as attention projections, Einsum, a subclassed conv) are quantized by the rule
`.*` in linen and nnx: each product of each layer is int8 in the lowered step
(`lowering.layer_report`), and the only float contractions left are attention's products of
two activations; the mappings to the quantized ops (transposed conv, general dot, einsum)
equal the float functions exactly with power-of-two data under `simulate`. (2) A layer that
cannot be quantized is refused by name (strict) or left float with one logged line. (3) The
three ways to leave the state frozen fail with the fix: a plain `jax.value_and_grad` over
params (linen), a plain `nnx.value_and_grad`, the new state dropped between steps; nnx's
`value_and_grad` writes it back itself. (4) A layer applied twice gets the mean of its
applications' states: applied to x twice it is the layer applied once to [x; x], gradients
and state alike. (5) Rules as a string.
"""

import logging
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import daq_jax
import daq_jax.nnx as dnnx
from daq_jax import quant
from daq_jax.quant import general, gradient, lowering
from daq_jax.quant import state as quant_state
from tests.helpers import pow2_tensor

CFG = quant.daq()
X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


class StdConv(nn.Conv):
  """big_vision's style: a conv that standardizes its kernel (a subclass of nn.Conv)."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == "kernel":
      value = (value - value.mean(axis=(0, 1, 2))) / (value.std(axis=(0, 1, 2)) + 1e-5)
    return value


class LinenClient(nn.Module):
  """A small encoder-decoder: a standardized conv, attention over the positions (DenseGeneral
  projections), an Einsum mixer, a transposed-conv decoder, a dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(StdConv(16, (3, 3), strides=2, name="stem")(x))  # (2, 4, 4, 16)
    tokens = x.reshape(x.shape[0], -1, 16)
    tokens = tokens + nn.MultiHeadDotProductAttention(num_heads=2, name="attention")(tokens)
    tokens = nn.Einsum((16, 16), "btc,cd->btd", name="mixer")(tokens)
    x = tokens.reshape(x.shape)
    x = nn.relu(nn.ConvTranspose(8, (3, 3), strides=(2, 2), name="decoder")(x))
    return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


class NnxStdConv(nnx.Conv):
  def __call__(self, x, out_sharding=None):
    kernel = self.kernel[...]
    self.kernel[...] = (kernel - kernel.mean(axis=(0, 1, 2))) / (kernel.std(axis=(0, 1, 2)) + 1e-5)
    try:
      return super().__call__(x, out_sharding=out_sharding)
    finally:
      self.kernel[...] = kernel


class NnxClient(nnx.Module):
  """The same in nnx (nnx.MultiHeadAttention's projections are LinearGeneral)."""

  def __init__(self, rngs):
    self.stem = NnxStdConv(3, 16, (3, 3), strides=2, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(2, 16, decode=False, rngs=rngs)
    self.mixer = nnx.Einsum("btc,cd->btd", (16, 16), rngs=rngs)
    self.decoder = nnx.ConvTranspose(16, 8, (3, 3), strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 8, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    tokens = x.reshape(x.shape[0], -1, 16)
    tokens = tokens + self.attention(tokens)
    x = self.mixer(tokens).reshape(x.shape)
    x = nnx.relu(self.decoder(x))
    return self.head(x.reshape(x.shape[0], -1))


def _attention_contractions(n: int) -> int:
  """The contractions of attention's two products of activations, forward and backward."""

  def attend(q, k, v):
    return jnp.sum(nn.dot_product_attention(q, k, v))

  q = jnp.ones((2, 16, 2, 8))
  return n * len(lowering.contractions(jax.grad(attend, argnums=(0, 1, 2)), q, q, q))


def _linen_step(model, variables, check_state=True):
  def loss(params, state):
    return jnp.mean(model.apply({"params": params, "quant_state": state}, X) ** 2)

  return quant.value_and_grad(loss, check_state=check_state), variables


def _assert_every_layer_int8(report, layers):
  assert set(report.layers) == set(layers), report.table()
  for layer in layers:
    products = report.layers[layer]
    assert set(products) >= {"forward", "wgrad"}, (layer, report.table())
    assert all(p.is_int8 for p in products.values()), report.table()


def test_every_linen_contraction_layer_is_quantized_and_int8():
  model = daq_jax.quantize(LinenClient(), ".*:daq")  # rules as a string
  variables = model.init(jax.random.key(1), X)
  step, _ = _linen_step(model, variables)
  report = lowering.layer_report(step, variables["params"], variables["quant_state"])
  layers = ["stem", "decoder", "mixer", "head"] + [
    f"attention/{p}" for p in ("query", "key", "value", "out")
  ]
  _assert_every_layer_int8(report, layers)
  # what stays float is attention's products of two activations, by design
  floats = [c for c in report.outside if not c.is_int8]
  assert len(floats) == _attention_contractions(1), report.table()
  assert "attention/query: forward xla int8, dgrad xla int8, wgrad xla int8" in report.table()


def test_every_nnx_contraction_layer_is_quantized_and_int8():
  model = dnnx.quantize(NnxClient(nnx.Rngs(0)), [(".*", CFG)])
  assert type(model.stem).__name__ == "QuantizedNnxStdConv" and isinstance(model.stem, NnxStdConv)

  def step(model):
    return dnnx.value_and_grad(lambda m: jnp.mean(m(X) ** 2))(model)

  graph, state = nnx.split(model)
  report = lowering.layer_report(lambda s: step(nnx.merge(graph, s)), state)
  layers = ["stem", "decoder", "mixer", "head"] + [
    f"attention/{p}" for p in ("query", "key", "value", "out")
  ]
  _assert_every_layer_int8(report, layers)
  floats = [c for c in report.outside if not c.is_int8]
  assert len(floats) == _attention_contractions(1), report.table()


@pytest.mark.parametrize(
  "shapes, kw",
  [
    (((2, 5, 5, 4), (3, 3, 4, 6)), dict(strides=(2, 2), padding="SAME")),
    (((2, 5, 5, 4), (3, 3, 4, 6)), dict(strides=(2, 2), padding="VALID", transpose_kernel=True)),
    (((2, 5, 4), (4, 4, 6)), dict(strides=(3,), padding=((1, 2),), rhs_dilation=(2,))),
  ],
)
def test_conv_transpose_is_lax_conv_transpose_exactly(shapes, kw):
  xs, ws = shapes
  if kw.get("transpose_kernel"):
    ws = (*ws[:-2], ws[-1], ws[-2])  # (*k, out, in): flipped and swapped to (*k, in, out)
  keys = jax.random.split(jax.random.key(2), 2)
  x, w = pow2_tensor(keys[0], xs, -3), pow2_tensor(keys[1], ws, -6)
  want = jax.lax.conv_transpose(x, w, precision=jax.lax.Precision.HIGHEST, **kw)
  cfg = quant.daq(impl="simulate")
  features = ws[-2] if kw.get("transpose_kernel") else ws[-1]
  got = general.conv_transpose(x, w, gradient.init_state(cfg, features), cfg=cfg, **kw)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
  "equation, xs, ws",
  [
    ("btc,chd->bthd", (2, 3, 8), (8, 2, 4)),  # a query projection (DenseGeneral's)
    ("bthd,hdc->btc", (2, 3, 2, 4), (2, 4, 8)),  # an output projection
    ("...c,cd->...d", (2, 3, 8), (8, 4)),
    ("btc,dc->dbt", (2, 3, 8), (4, 8)),  # output axes in another order
  ],
)
def test_einsum_and_dot_general_are_the_float_functions_exactly(equation, xs, ws):
  keys = jax.random.split(jax.random.key(3), 2)
  x, w = pow2_tensor(keys[0], xs, -3), pow2_tensor(keys[1], ws, -6)
  cfg = quant.daq(impl="simulate")
  state = gradient.init_state(cfg, general.einsum_features(equation, xs, ws))
  got = general.einsum(equation, x, w, state, cfg=cfg)
  np.testing.assert_array_equal(got, jnp.einsum(equation, x, w, precision="highest"))


def test_a_layer_that_cannot_be_quantized_is_refused_or_left_float_with_a_word(caplog):
  class Local(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.ConvLocal(4, (3, 3), name="local")(nn.Conv(4, (3, 3), name="conv")(x))

  with pytest.raises(ValueError, match=r"layer local: nn.ConvLocal has a kernel per output"):
    daq_jax.quantize(Local(), [(".*", CFG)]).init(jax.random.key(0), X)
  with caplog.at_level(logging.WARNING, "daq_jax.quant"):
    model = daq_jax.quantize(Local(), [(".*", CFG)], strict=False)
    variables = model.init(jax.random.key(0), X)
  assert "quantized layer local stays float (strict=False): nn.ConvLocal" in caplog.text
  assert list(variables["quant_state"]) == ["conv"]  # only the conv is quantized

  class Batched(nn.Module):  # a DenseGeneral kernel with a batch axis: a batched GEMM
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral(4, axis=-1, batch_dims=(0,), name="batched")(x)

  with pytest.raises(ValueError, match=r"layer batched: kernel axes \(0,\) are batch axes"):
    daq_jax.quantize(Batched(), [(".*", CFG)]).init(jax.random.key(0), jnp.ones((2, 3, 8)))

  class NnxBatched(nnx.Module):
    def __init__(self, rngs):
      self.batched = nnx.LinearGeneral(8, 4, batch_axis={0: 2}, rngs=rngs)

  with pytest.raises(ValueError, match=r"layer batched \(LinearGeneral\) cannot be quantized"):
    dnnx.quantize(NnxBatched(nnx.Rngs(0)), [(".*", CFG)])


class _Small(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name="head")(nn.relu(nn.Conv(8, (3, 3), name="conv")(x)).mean((1, 2)))


def test_a_plain_jax_value_and_grad_over_params_fails_naming_the_fix():
  model = daq_jax.quantize(_Small(), [(".*", CFG)])
  v = model.init(jax.random.key(0), X)

  def loss(params):  # flax's examples' step: the state closed over, never differentiated
    return jnp.mean(model.apply({"params": params, "quant_state": v["quant_state"]}, X))

  with pytest.raises(ValueError, match=r"layer conv: the gradient is taken .* daq_jax\.quant\."):
    jax.value_and_grad(loss)(v["params"])


def test_a_plain_nnx_value_and_grad_fails_naming_the_fix():
  model = NnxClient(nnx.Rngs(0))
  dnnx.quantize(model, [(".*", CFG)])
  with pytest.raises(ValueError, match=r"layer stem: .* daq_jax\.nnx\.value_and_grad"):
    nnx.value_and_grad(lambda m: jnp.mean(m(X)))(model)


def _compiled_train_step(step, decay=0.0):  # one per scenario: each watches its own calls
  @jax.jit
  def train_step(params, state):
    _, grads, new_state = step(params, state)
    params = jax.tree.map(lambda p, g: p - 0.1 * g - decay * p, params, grads)
    return params, new_state

  return train_step


def test_dropping_the_new_state_fails_naming_the_fix():
  model = daq_jax.quantize(_Small(), [(".*", CFG)])
  v = model.init(jax.random.key(0), X)
  step, _ = _linen_step(model, v)
  train_step = _compiled_train_step(step)
  params = v["params"]
  for _ in range(quant_state.DROPPED_AFTER - 1):  # the new state dropped...
    params, _ = train_step(params, v["quant_state"])
  with pytest.raises(Exception, match=r"all 2 quantized layers .* no history .* Carry it"):
    jax.block_until_ready(train_step(params, v["quant_state"]))  # ... the start passed again
  # Carried, it trains on; and one step run again on one state and parameters (a benchmark)
  # is no mistake.
  train_step = _compiled_train_step(step)
  params, state = v["params"], v["quant_state"]
  for _ in range(quant_state.DROPPED_AFTER + 1):
    params, state = train_step(params, state)
  jax.block_until_ready(params)
  step_again = jax.jit(step)
  for _ in range(quant_state.DROPPED_AFTER + 1):
    jax.block_until_ready(step_again(v["params"], v["quant_state"]))


class _ZeroScaled(nn.Module):
  """A residual branch whose scale starts at zero (as ResNets' last BatchNorm of a block
  often does): its layers get no gradient in the first step."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), name="stem")(x)
    branch = nn.Conv(8, (3, 3), name="branch")(nn.relu(x))
    scale = self.param("scale", nn.initializers.zeros, (8,))
    return nn.Dense(4, name="head")((x + scale * branch).mean((1, 2)))


def test_a_layer_without_gradient_in_its_first_step_is_no_dropped_state():
  # Its state stays at 'no history' while its kernel moves (by weight decay); the other
  # layers' state moves, so the state was carried.
  model = daq_jax.quantize(_ZeroScaled(), [(".*", CFG)])
  v = model.init(jax.random.key(0), X)
  step, _ = _linen_step(model, v)
  train_step = _compiled_train_step(step, decay=1e-3)
  params, state = v["params"], v["quant_state"]
  params, state = train_step(params, state)
  assert float(state["branch"]["quant"]["dgrad_clip"]) == 0.0  # no gradient reached it
  assert float(state["head"]["quant"]["dgrad_clip"]) > 0.0
  for _ in range(quant_state.DROPPED_AFTER + 1):
    params, state = train_step(params, state)
  assert float(jax.block_until_ready(state)["branch"]["quant"]["dgrad_clip"]) > 0.0


def test_nnx_value_and_grad_writes_the_state_back():
  model = dnnx.quantize(NnxClient(nnx.Rngs(0)), [(".*", CFG)])
  before = model.head.quant_dgrad_clip[...]
  nnx.jit(dnnx.value_and_grad(lambda m: jnp.mean(m(X) ** 2)))(model)  # no nnx.update
  assert float(before) == 0.0 and float(model.head.quant_dgrad_clip[...]) > 0.0


class _Shared(nn.Module):
  @nn.compact
  def __call__(self, a, b):
    head = nn.Dense(4, name="head")  # one layer applied to two inputs (a shared head)
    return jnp.concatenate([head(a), head(b)])


class _Once(nn.Module):
  @nn.compact
  def __call__(self, a, b):
    return nn.Dense(4, name="head")(jnp.concatenate([a, b]))


def _grads_and_state(module, *inputs):
  model = daq_jax.quantize(module, [(".*", CFG)])
  v = model.init(jax.random.key(0), *inputs)

  def loss(params, state):
    y = model.apply({"params": params, "quant_state": state}, *inputs)
    return jnp.sum(y * jnp.arange(1.0, 1.0 + y.shape[-1]))

  _, grads, state = quant.value_and_grad(loss)(v["params"], v["quant_state"])
  return grads, state


def test_a_layer_applied_twice_is_the_layer_applied_once_to_both_inputs():
  x = pow2_tensor(jax.random.key(4), (3, 8), -2)
  shared = _grads_and_state(_Shared(), x, x)
  once = _grads_and_state(_Once(), x, x)
  for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(once), strict=True):
    np.testing.assert_array_equal(a, b)
  # With other inputs, its state is the mean of what each application alone would give.
  y = 4 * pow2_tensor(jax.random.key(5), (3, 8), -2)
  _, state = _grads_and_state(_Shared(), x, y)
  _, state_x = _grads_and_state(_Once(), x[:0], x)
  _, state_y = _grads_and_state(_Once(), y[:0], y)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, state_x, state_y)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(mean), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_an_nnx_layer_applied_twice_gets_the_mean_state():
  class Shared(nnx.Module):
    def __init__(self, rngs):
      self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, a, b):
      return jnp.concatenate([self.head(a), self.head(b)])

  x = pow2_tensor(jax.random.key(4), (3, 8), -2)
  model = dnnx.quantize(Shared(nnx.Rngs(0)), [(".*", CFG)])
  _, _, new_state = dnnx.value_and_grad(lambda m: jnp.sum(m(x, x) * jnp.arange(1.0, 5.0)))(model)
  alone = dnnx.quantize(Shared(nnx.Rngs(0)), [(".*", CFG)])
  _, _, want = dnnx.value_and_grad(lambda m: jnp.sum(m.head(x) * jnp.arange(1.0, 5.0)))(alone)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def test_rules_as_a_string_work_everywhere_rules_are_taken():
  model = daq_jax.quantize(_Small(), "conv:fp32;.*:daq(wgrad_rounding=stochastic)")
  layers = model.layers(jax.random.key(0), X)
  assert layers["conv"][1] is None and layers["head"][1].wgrad_rounding == "stochastic"
  with pytest.raises(ValueError, match=re.escape("rules 'conv;daq'") + ".*is not 'regex:method'"):
    daq_jax.quantize(_Small(), "conv;daq")
  nnx_model = dnnx.quantize(NnxClient(nnx.Rngs(0)), "stem:fp32;.*:daq")
  assert nnx_model.stem.__class__ is NnxStdConv and nnx_model.head.quant is not None
