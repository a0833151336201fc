"""Unmodified Flax models, linen and nnx, quantized by rules on their module paths.

Strategy: one small CNN written three ways (a plain linen model with nn.Conv/nn.Dense, the
zoo's way with QConv/QDense fields, and flax.nnx) with the same weights: the rule-quantized
linen and nnx models give the zoo model's loss, gradients and new state; their lowered step
is int8 x int8 -> int32 exactly for the matched layers (the float stem's two contractions
stay float); a float checkpoint loads; a rule that matches nothing is a clear error. (Every
other layer type, shared layers and the state's checks: test_clients.py.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import daq_jax
import daq_jax.nn as qnn
import daq_jax.nnx as dnnx
from daq_jax import quant
from daq_jax.quant import gradient, lowering

CFG = quant.daq()
RULES = [("stem", None), (".*", CFG)]  # the stem float, the rest DAQ
X = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
Y = jnp.array([0, 1, 2, 3])


class Plain(nn.Module):
  """A user's linen model: nn.Conv and nn.Dense, nothing of daq_jax."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv")(x))
    return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


class Zoo(nn.Module):
  """The same model the zoo's way."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(qnn.QConv(8, (3, 3), quant=None, name="stem")(x))
    x = nn.relu(qnn.QConv(8, (3, 3), strides=2, quant=CFG, name="conv")(x))
    return qnn.QDense(4, quant=CFG, name="head")(x.reshape(x.shape[0], -1))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.conv = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(128, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    x = nnx.relu(self.conv(x))
    return self.head(x.reshape(x.shape[0], -1))


def _loss(logits):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), Y[:, None], 1))


def _linen_step(model):
  def loss_fn(params, state):
    return _loss(model.apply({"params": params, "quant_state": state}, X))

  return jax.jit(quant.value_and_grad(loss_fn))


@pytest.fixture(scope="module")
def zoo():
  variables = Zoo().init(jax.random.key(1), X)
  return variables, _linen_step(Zoo())(variables["params"], variables["quant_state"])


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)


def test_linen_model_quantized_by_rules_is_the_zoo_model(zoo):
  variables, want = zoo
  qmodel = daq_jax.quantize(Plain(), RULES)
  q_vars = qmodel.init(jax.random.key(1), X)
  assert jax.tree.map(jnp.shape, q_vars) == jax.tree.map(jnp.shape, variables)
  # The parameter tree is the float model's: a float checkpoint loads.
  float_params = Plain().init(jax.random.key(1), X)["params"]
  assert jax.tree.structure(float_params) == jax.tree.structure(q_vars["params"])
  _assert_same(_linen_step(qmodel)(float_params, q_vars["quant_state"]), want)


def test_linen_rules_quantize_exactly_the_matched_layers(zoo):
  variables, _ = zoo
  step = quant.value_and_grad(
    lambda p, s: _loss(daq_jax.quantize(Plain(), RULES).apply({"params": p, "quant_state": s}, X))
  )
  found = lowering.hlo_contractions(step, variables["params"], variables["quant_state"])
  floats = [c for c in found if c[1] != ("i8", "i8")]
  ints = [c for c in found if c[1] == ("i8", "i8")]
  # stem: forward conv and wgrad in float (its input needs no gradient); conv and head: int8
  # forward, dgrad and wgrad (one dot per tap of the 3x3 conv's wgrad).
  assert len(floats) == 2 and all(c[1] == ("f32", "f32") for c in floats), found
  assert len(ints) >= 6 and all(c[2] == "i32" for c in ints), found


def test_a_rule_matching_nothing_is_named():
  with pytest.raises(ValueError, match=r"rule\(s\) \['blocks/.\*'\] match no contraction"):
    daq_jax.quantize(Plain(), [("blocks/.*", CFG), (".*", CFG)]).init(jax.random.key(1), X)
  with pytest.raises(ValueError, match=r"rule\(s\) \['blocks/.\*'\] match no contraction"):
    dnnx.quantize(NnxNet(nnx.Rngs(0)), [("blocks/.*", CFG)])
  with pytest.raises(ValueError, match="not a regex"):
    daq_jax.quantize(Plain(), [("(", CFG)])


def _nnx_from_linen(params) -> NnxNet:
  model = NnxNet(nnx.Rngs(0))
  for name in ("stem", "conv", "head"):
    getattr(model, name).kernel[...] = params[name]["kernel"]
    getattr(model, name).bias[...] = params[name]["bias"]
  return model


def test_nnx_model_quantized_by_rules_is_the_zoo_model(zoo):
  variables, (want_loss, want_grads, want_state) = zoo
  model = daq_jax.quantize(_nnx_from_linen(variables["params"]), RULES)  # nnx: in place
  assert type(model.stem) is nnx.Conv  # float by rule
  assert isinstance(model.conv, nnx.Conv) and type(model.conv).__name__ == "QuantizedConv"
  loss, grads, new_state = nnx.jit(dnnx.value_and_grad(lambda m: _loss(m(X))))(model)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for name in ("stem", "conv", "head"):
    for p in ("kernel", "bias"):
      np.testing.assert_allclose(grads[name][p][...], want_grads[name][p], rtol=1e-6, atol=1e-9)
  for name in ("conv", "head"):
    for entry in ("wgrad_clip", "dgrad_clip"):
      got = new_state[name][f"quant_{entry}"][...]
      np.testing.assert_allclose(got, want_state[name]["quant"][entry], rtol=1e-6)


def test_the_statistics_come_out_of_their_own_collection_in_linen_and_nnx(zoo):
  variables, (_, _, want_state) = zoo

  def loss_fn(params, quant_variables):
    return _loss(Zoo().apply({"params": params, **quant_variables}, X))

  quant_variables = {k: variables[k] for k in ("quant_state", "quant_stats")}
  _, _, new = jax.jit(quant.value_and_grad(loss_fn))(variables["params"], quant_variables)
  _assert_same(new["quant_state"], want_state)  # the state is the one made without them
  stats = new["quant_stats"]
  assert set(stats) == {"conv", "head"}
  assert all(float(stats[name]["quant"]["dgrad_scale"]) > 0 for name in stats)
  model = daq_jax.quantize(_nnx_from_linen(variables["params"]), RULES)
  _, _, nnx_new = nnx.jit(dnnx.value_and_grad(lambda m: _loss(m(X))))(model)
  for name in ("conv", "head"):
    for stat in gradient.STATISTICS:
      got = nnx_new[name][f"quant_{stat}"]
      assert type(got) is dnnx.QuantStats  # a Variable type of its own, not QuantState
      np.testing.assert_allclose(got[...], stats[name]["quant"][stat], rtol=1e-6)


def test_nnx_step_lowers_to_int8_for_the_matched_layers_only(zoo):
  variables, _ = zoo
  model = dnnx.quantize(_nnx_from_linen(variables["params"]), RULES)
  graphdef, state = nnx.split(model)

  def step(state):
    return dnnx.value_and_grad(lambda m: _loss(m(X)))(nnx.merge(graphdef, state))

  found = lowering.hlo_contractions(step, state)
  assert sum(c[1] == ("f32", "f32") for c in found) == 2, found
  assert sum(c[1] == ("i8", "i8") and c[2] == "i32" for c in found) >= 6, found


def test_nnx_training_step_with_optax_carries_the_state():
  import optax

  model = dnnx.quantize(NnxNet(nnx.Rngs(0)), RULES)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads, new_state = dnnx.value_and_grad(lambda m: _loss(m(X)))(model)
    optimizer.update(model, grads)
    nnx.update(model, new_state)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(3)]
  assert losses[-1] < losses[0]
  assert float(jnp.min(model.conv.quant_wgrad_clip[...])) > 0  # set by the backward passes


def test_nnx_drop_ins_without_quant_are_the_nnx_layers():
  a = dnnx.QConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
  b = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(a(X), b(X))
  a = dnnx.QDense(3, 4, rngs=nnx.Rngs(0))
  b = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(a(X), b(X))


def test_nnx_drop_ins_take_a_method_spec():
  a = dnnx.QConv(3, 4, (3, 3), quant="daq(impl=xla)", rngs=nnx.Rngs(0))
  b = dnnx.QConv(3, 4, (3, 3), quant=quant.daq(impl="xla"), rngs=nnx.Rngs(0))
  assert a.quant == b.quant
  np.testing.assert_array_equal(a(X), b(X))
  assert dnnx.QDense(3, 4, quant="fp32", rngs=nnx.Rngs(0)).quant is None
  with pytest.raises(TypeError, match=r"QDense quant=1\.0: expected a QuantConfig"):
    dnnx.QDense(3, 4, quant=1.0, rngs=nnx.Rngs(0))


def test_nnx_stochastic_rounding_needs_rngs_and_then_trains():
  with pytest.raises(ValueError, match="rounds stochastically: the layer needs rngs"):
    dnnx.quantize(NnxNet(nnx.Rngs(0)), [(".*", quant.ui8())])
  model = dnnx.quantize(NnxNet(nnx.Rngs(0)), [(".*", quant.ui8())], rngs=nnx.Rngs(3))
  _, _, new_state = nnx.jit(dnnx.value_and_grad(lambda m: _loss(m(X))))(model)
  assert float(new_state["conv"]["quant_deviation"][...]) > 0
