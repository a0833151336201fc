"""QConv and QDense as drop-ins for flax.linen.Conv and Dense.

Strategy: with quant=None the layers must be nn.Conv / nn.Dense bit for bit (parameters,
outputs, gradients) over the options users set; with a config they must create the same
parameters and stay close to the float layer; a training step through them must be int8 in
the lowered program for 2-D, depthwise, strided, 1-D and 3-D convs and for dense layers.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.quant import gradient, lowering
from tests.helpers import cosine

TOLERANCE = {"cosine_vs_float": 0.999}  # N(0, 1) inputs, default Flax init

CONV_CASES = {
  "default": ((2, 8, 8, 4), dict(features=6, kernel_size=(3, 3))),
  "strided_valid": ((2, 9, 9, 4), dict(features=6, kernel_size=3, strides=2, padding="VALID")),
  "circular": ((2, 8, 8, 4), dict(features=6, kernel_size=(3, 3), padding="CIRCULAR")),
  "reflect_dilated": (
    (2, 8, 8, 4),
    dict(features=6, kernel_size=(3, 3), padding="REFLECT", kernel_dilation=2),
  ),
  "input_dilation": (
    (2, 5, 5, 4),
    dict(features=6, kernel_size=(3, 3), input_dilation=2, padding=((1, 2), (2, 1))),
  ),
  "grouped_nobias": (
    (2, 8, 8, 4),
    dict(features=6, kernel_size=(3, 3), feature_group_count=2, use_bias=False),
  ),
  "depthwise": ((2, 8, 8, 4), dict(features=4, kernel_size=(3, 3), feature_group_count=4)),
  "bf16": ((2, 8, 8, 4), dict(features=6, kernel_size=(3, 3), dtype=jnp.bfloat16)),
  "causal_1d": ((2, 9, 4), dict(features=6, kernel_size=(3,), padding="CAUSAL")),
  "3d": ((2, 4, 5, 6, 3), dict(features=4, kernel_size=(3, 3, 3), strides=(1, 2, 2))),
  "two_batch_dims": ((2, 3, 6, 6, 4), dict(features=5, kernel_size=(3, 3))),
  "no_batch_dim": ((6, 6, 4), dict(features=5, kernel_size=(3, 3))),
  "int_padding": ((2, 6, 6, 4), dict(features=5, kernel_size=(3, 3), padding=2)),
}

DENSE_CASES = {
  "default": ((4, 16), dict(features=8)),
  "batch_dims": ((2, 3, 16), dict(features=8, use_bias=False)),
  "bf16": ((4, 16), dict(features=8, dtype=jnp.bfloat16)),
}


def _run(layer, x, variables=None, rng_seed=0):
  # Jitted: one compilation per call instead of one per eager op (cold caches stay cheap).
  if variables is None:
    variables = jax.jit(layer.init)(jax.random.key(rng_seed), x)

  def loss(params, state, inputs):
    v = {"params": params, **({"quant_state": state} if state is not None else {})}
    return jnp.sum(layer.apply(v, inputs).astype(jnp.float32) ** 2)

  state = variables.get("quant_state")
  out = jax.jit(layer.apply)(variables, x)
  # the state too: a gradient through the kernel but not the state is an error (it would
  # never move)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(variables["params"], state, x)
  return variables, out, (grads[0], grads[2])


def _pairs(cases):
  return [(name, *case) for name, case in cases.items()]


@pytest.mark.parametrize("name, shape, kw", _pairs(CONV_CASES) + [("mask", (2, 6, 6, 4), None)])
def test_qconv_without_quant_is_flax_conv_bit_for_bit(name, shape, kw):
  if kw is None:  # a mask must match the kernel
    kw = dict(features=3, kernel_size=(3, 3), mask=jnp.tril(jnp.ones((3, 3, 4, 3))))
  x = jax.random.normal(jax.random.key(1), shape)
  v_f, y_f, g_f = _run(nn.Conv(**kw), x)
  v_q, y_q, g_q = _run(qnn.QConv(**kw, quant=None), x)
  for a, b in zip(jax.tree.leaves((v_f, y_f, g_f)), jax.tree.leaves((v_q, y_q, g_q)), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, shape, kw", _pairs(DENSE_CASES))
def test_qdense_without_quant_is_flax_dense_bit_for_bit(name, shape, kw):
  x = jax.random.normal(jax.random.key(1), shape)
  f, q = _run(nn.Dense(**kw), x), _run(qnn.QDense(**kw, quant=None), x)
  for a, b in zip(jax.tree.leaves(f), jax.tree.leaves(q), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
  "layer_cls, flax_cls, name, shape, kw",
  [(qnn.QConv, nn.Conv, *c) for c in _pairs(CONV_CASES)]
  + [(qnn.QDense, nn.Dense, *c) for c in _pairs(DENSE_CASES)],
)
def test_quantized_layer_has_flax_params_and_stays_close(layer_cls, flax_cls, name, shape, kw):
  x = jax.random.normal(jax.random.key(1), shape)
  v_f, y_f, (dp_f, dx_f) = _run(flax_cls(**kw), x)
  v_q, y_q, (dp_q, dx_q) = _run(layer_cls(**kw, quant=quant.daq()), x)
  for a, b in zip(jax.tree.leaves(v_f["params"]), jax.tree.leaves(v_q["params"]), strict=True):
    np.testing.assert_array_equal(a, b)  # same names, shapes, initial values
  assert jax.tree.map(jnp.shape, v_q["quant_state"]) == {
    "quant": {"dgrad_clip": (), "wgrad_clip": (kw["features"],)}
  }
  assert jax.tree.map(jnp.shape, v_q["quant_stats"]) == {
    "quant": dict.fromkeys(gradient.STATISTICS, ())
  }
  assert y_q.dtype == y_f.dtype and y_q.shape == y_f.shape
  floor = TOLERANCE["cosine_vs_float"] if "bf16" not in name else 0.99  # bf16 rounding on top
  assert cosine(y_q, y_f) > floor
  assert cosine(dx_q, dx_f) > floor
  assert cosine(dp_q["kernel"], dp_f["kernel"]) > floor


class _Net(nn.Module):
  conv: dict
  quant: object

  @nn.compact
  def __call__(self, x):
    x = nn.relu(qnn.QConv(**self.conv, quant=self.quant)(x))
    x = x.reshape(x.shape[0], -1)
    return qnn.QDense(3, quant=self.quant)(x)


@pytest.mark.parametrize(
  "name, shape, conv",
  [
    ("2d", (2, 6, 6, 4), dict(features=8, kernel_size=(3, 3))),
    ("depthwise", (2, 6, 6, 4), dict(features=8, kernel_size=(3, 3), feature_group_count=4)),
    ("strided", (2, 8, 8, 4), dict(features=8, kernel_size=(3, 3), strides=2)),
    ("1d", (2, 9, 4), dict(features=8, kernel_size=(3,))),
    ("3d", (2, 4, 4, 4, 3), dict(features=4, kernel_size=(3, 3, 3))),
  ],
)
def test_training_step_through_layers_is_int8(name, shape, conv):
  net = _Net(conv, quant.daq())
  x = jnp.ones(shape)
  v = net.init(jax.random.key(0), x)

  def loss(params, state, inputs):
    return jnp.sum(net.apply({"params": params, "quant_state": state}, inputs) ** 2)

  # Differentiating the input too keeps the first layer's dgrad in the program (XLA drops it
  # from an ordinary training step, where nothing needs dL/dx).
  step = jax.value_and_grad(loss, argnums=(0, 1, 2))
  found = lowering.contractions(step, v["params"], v["quant_state"], x)
  assert len(found) >= 6 and all(c.is_int8 for c in found), found  # 3 per layer at least
  hlo = lowering.hlo_contractions(step, v["params"], v["quant_state"], x)
  assert all(ops == ("i8", "i8") and out == "i32" for _, ops, out in hlo), hlo
  assert len(hlo) >= 6  # forward, dgrad and wgrad of both layers survive in the program


def test_missing_quant_state_is_a_clear_error():
  layer = qnn.QConv(4, (3, 3), quant=quant.daq())
  x = jnp.ones((1, 5, 5, 2))
  v = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="need the 'quant_state' collection"):
    layer.apply({"params": v["params"]}, x)


def test_stochastic_rounding_without_rng_is_a_clear_error():
  layer = qnn.QDense(4, quant=quant.ui8())
  x = jnp.ones((2, 3))
  v = layer.init(jax.random.key(0), x)
  layer.apply(v, x)  # the forward pass needs no key

  def loss(params, state, rngs=None):
    return layer.apply({"params": params, "quant_state": state}, x, rngs=rngs).sum()

  with pytest.raises(ValueError, match=r"pass rngs=\{'quant': key\}"):
    quant.value_and_grad(loss)(v["params"], v["quant_state"])
  rngs = {"quant": jax.random.key(1)}
  _, grads, _ = quant.value_and_grad(loss)(v["params"], v["quant_state"], rngs)
  assert np.isfinite(np.asarray(grads["kernel"])).all()


def test_quantized_layers_are_flax_layers_with_the_hook_set():
  conv = qnn.QConv(4, (3, 3), quant=quant.daq())
  assert isinstance(conv, nn.Conv) and isinstance(conv.conv_general_dilated_cls(), qnn.QuantConvOp)
  dense = qnn.QDense(4, quant=quant.daq())
  assert isinstance(dense.dot_general_cls(), qnn.QuantDotGeneralOp)
  assert qnn.QConv(4, (3, 3)).conv_general_dilated_cls is None  # quant=None: nn.Conv itself
  assert conv.clone(quant=None).conv_general_dilated_cls is None
  with pytest.raises(ValueError, match="leave conv_general_dilated and conv_general_dilated_cls"):
    qnn.QConv(4, (3, 3), quant=quant.daq(), conv_general_dilated=jax.lax.conv_general_dilated)
  with pytest.raises(ValueError, match="leave dot_general and dot_general_cls unset"):
    qnn.QDense(4, quant=quant.daq(), dot_general=jax.lax.dot_general)


def test_a_method_spec_names_the_layers_config():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  by_name = qnn.QConv(4, (3, 3), quant="daq(wgrad_rounding=stochastic)")
  assert by_name.quant == quant.daq(wgrad_rounding="stochastic")
  assert by_name.quant == by_name.clone().quant  # the parsed config, not the text
  by_config = qnn.QConv(4, (3, 3), quant=quant.daq(wgrad_rounding="stochastic"))
  rngs = {"params": jax.random.key(1), qnn.RNG_STREAM: jax.random.key(2)}
  v = by_name.init(rngs, x)
  np.testing.assert_array_equal(by_name.apply(v, x), by_config.apply(v, x))
  assert qnn.QDense(4, quant="fp32").dot_general_cls is None  # fp32: the float layer
  with pytest.raises(ValueError, match=r"method spec 'dqa'.*unknown quantization method"):
    qnn.QDense(4, quant="dqa")
  with pytest.raises(TypeError, match=r"QConv quant=8: expected a QuantConfig, a method spec"):
    qnn.QConv(4, (3, 3), quant=8)


def test_a_float_checkpoint_loads_into_the_quantized_model():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))

  class Net(nn.Module):
    conv: Any = nn.Conv
    dense: Any = nn.Dense

    @nn.compact
    def __call__(self, x):
      # Named layers, as the zoo's: auto names would differ (Conv_0 against QConv_0).
      x = nn.relu(self.conv(8, (3, 3), padding="CIRCULAR", name="conv")(x))
      return self.dense(5, name="head")(x.reshape(x.shape[0], -1))

  float_params = Net().init(jax.random.key(1), x)["params"]
  cfg = quant.daq()
  qnet = Net(
    conv=functools.partial(qnn.QConv, quant=cfg), dense=functools.partial(qnn.QDense, quant=cfg)
  )
  q_vars = qnet.init(jax.random.key(2), x)
  assert jax.tree.structure(q_vars["params"]) == jax.tree.structure(float_params)
  y = qnet.apply({"params": float_params, "quant_state": q_vars["quant_state"]}, x)
  assert cosine(y, Net().apply({"params": float_params}, x)) > TOLERANCE["cosine_vs_float"]
