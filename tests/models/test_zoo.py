"""The model zoo: every model's parameter count equals the published architecture's (counted
as PyTorch does: weights, biases, BN scales and offsets), and every model runs a training step
(value, gradients, new quantization state) with float layers and with DAQ layers, at a small
input size and batch so that the suite stays fast."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import models, quant

# name, fields, input size, parameters (source).
PUBLISHED = [
  ("resnet20", {"num_classes": 10}, 32, 269_722),  # He et al. 2016, Table 6: 0.27M
  ("resnet56", {"num_classes": 10}, 32, 853_018),  # He et al. 2016, Table 6: 0.85M
  ("resnet18", {}, 224, 11_689_512),  # torchvision resnet18
  ("resnet50", {}, 224, 25_557_032),  # torchvision resnet50
  ("mobilenetv2", {}, 224, 3_504_872),  # torchvision mobilenet_v2
  # The same weights with a 10-way classifier: 3,504,872 - 1280*990 - 990.
  ("mobilenetv2_cifar", {"num_classes": 10}, 32, 2_236_682),
  ("vgg16", {}, 224, 138_365_992),  # torchvision vgg16_bn
  # torchvision's 13 conv-BN layers (14,723,136) and a 512x10 classifier.
  ("vgg16_cifar", {"num_classes": 10}, 32, 14_728_266),
  ("alexnet", {}, 224, 61_100_840),  # torchvision alexnet
  ("inceptionv3", {}, 299, 23_834_568),  # torchvision inception_v3 without AuxLogits
  ("inceptionv3", {"aux_logits": True}, 299, 27_161_264),  # torchvision inception_v3
]

# name, fields, input size for the step test: the smallest sizes the architectures accept.
STEP = [
  ("small_cnn", {"num_classes": 10}, 8),
  ("resnet20", {"num_classes": 10}, 32),
  ("resnet56", {"num_classes": 10}, 32),
  ("mobilenetv2_cifar", {"num_classes": 10, "width_multiplier": 0.25}, 32),
  ("vgg16_cifar", {"num_classes": 10}, 32),
  ("resnet18", {"num_classes": 10, "num_filters": 16}, 32),
  ("resnet50", {"num_classes": 10, "num_filters": 8}, 32),
  ("mobilenetv2", {"num_classes": 10, "width_multiplier": 0.25}, 32),
  ("vgg16", {"num_classes": 10}, 32),
  ("alexnet", {"num_classes": 10}, 63),
  ("inceptionv3", {"num_classes": 10}, 75),  # the aux head needs 299: see the tests below
]


def _count(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(("name", "fields", "size", "expected"), PUBLISHED)
def test_parameter_count_matches_the_published_model(name, fields, size, expected):
  model = models.create(name, **fields)
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.ones((1, size, size, 3))
  )
  assert _count(shapes["params"]) == expected


def test_unknown_model_names_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown name 'resnet21'.*resnet20"):
    models.create("resnet21")


# Compiling a step of the larger models takes 20-150 s each with an empty cache: those are in
# the slow set (`pytest -m slow`), which CI runs too.
FAST_STEPS = ("small_cnn", "resnet20")


@pytest.mark.parametrize("method", ["fp32", "daq"])
@pytest.mark.parametrize(
  ("name", "fields", "size"),
  [s if s[0] in FAST_STEPS else pytest.param(*s, marks=pytest.mark.slow) for s in STEP],
  ids=[s[0] for s in STEP],
)
def test_a_training_step_runs(name, fields, size, method):
  cfg = quant.preset(method)
  model = models.create(
    name,
    conv=functools.partial(qnn.QConv, quant=cfg),
    dense=functools.partial(qnn.QDense, quant=cfg),
    **fields,
  )
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3 if name != "small_cnn" else 1))
  y = jnp.arange(2)
  # unsafe_rbg: its initializers compile in about two thirds of threefry's time.
  rngs = {"params": jax.random.key(1, impl="unsafe_rbg"), "dropout": jax.random.key(2)}
  variables = jax.jit(functools.partial(model.init, train=False))(rngs, x)
  state = variables.get("quant_state", {})

  def loss_fn(params, state):
    out, _ = model.apply(
      {**variables, "params": params, "quant_state": state},
      x,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(3), "quant": jax.random.key(4)},
    )
    logits = out[0] if isinstance(out, tuple) else out
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1))

  loss, grads, new_state = jax.jit(quant.value_and_grad(loss_fn))(variables["params"], state)
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  if method == "daq":
    clips = [np.asarray(c) for c in jax.tree.leaves(new_state)]
    assert clips, "no quantized layer got a state"
    assert all(np.isfinite(c).all() for c in clips)
    assert all(c.min() >= 0 for c in clips)
    # Not every layer: zero-initialised BN scales (ImageNet ResNets) zero g at step 0.
    assert any(c.max() > 0 for c in clips)


def test_mobilenet_depthwise_convs_are_grouped():
  model = models.MobileNetV2(num_classes=10, cifar=True)
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.ones((1, 32, 32, 3))
  )
  kernel = shapes["params"]["InvertedResidual_1"]["depthwise"]["kernel"]
  assert kernel.shape == (3, 3, 1, 96)


def test_inception_aux_logits_only_in_training():
  model = models.InceptionV3(num_classes=4, aux_logits=True, conv=nn.Conv)
  x = jnp.ones((1, 299, 299, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0), x)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (1, 4)
  logits, aux = jax.eval_shape(
    lambda v: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
    )[0],
    variables,
  )
  assert logits.shape == aux.shape == (1, 4)


def test_inception_aux_logits_on_small_inputs_is_a_clear_error():
  model = models.InceptionV3(num_classes=4, aux_logits=True)
  with pytest.raises(ValueError, match=r"aux_logits needs inputs of 299x299"):
    jax.eval_shape(
      functools.partial(model.init, train=True), jax.random.key(0), jnp.ones((1, 75, 75, 3))
    )
