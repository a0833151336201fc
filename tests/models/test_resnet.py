"""ResNet-18/50: parameter counts equal the published architectures (torchvision's
resnet18/resnet50), and a training step runs with float and with DAQ layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import models, quant

PUBLISHED_PARAMS = {"ResNet18": 11_689_512, "ResNet50": 25_557_032}


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_parameter_count_matches_the_published_model(name):
  model = getattr(models, name)(num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
  assert count == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("method", ["fp32", "daq"])
def test_a_training_step_runs(method):
  cfg = quant.preset(method)
  model = models.ResNet(
    stage_sizes=(1, 1),
    block_cls=models.resnet.Bottleneck,
    num_filters=8,
    num_classes=5,
    conv=functools.partial(qnn.QConv, quant=cfg),
    dense=functools.partial(qnn.QDense, quant=cfg),
  )
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  v = model.init(jax.random.key(1), x)

  def loss(params, state):
    logits, _ = model.apply(
      {"params": params, "batch_stats": v["batch_stats"], "quant_state": state},
      x,
      mutable=["batch_stats"],
    )
    return jnp.mean(nn.log_softmax(logits)[:, 0])

  value, grads, state = jax.jit(quant.value_and_grad(loss))(v["params"], v.get("quant_state", {}))
  assert np.isfinite(float(value))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert jax.tree.structure(state) == jax.tree.structure(v.get("quant_state", {}))
