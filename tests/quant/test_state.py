"""The quantization state flows out of the backward pass: through `value_and_grad`, under
jit, across steps, under nn.remat, and with the batch sharded over 4 CPU devices (the
statistics are then global, so the state equals the single-device one)."""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.quant import gradient

# Sharded vs single device: the int8 sums are exact, float reductions may reorder.
SHARDED_RTOL = 1e-5


def _layer_and_vars(cfg, shape=(4, 8, 8, 3), features=5):
  layer = qnn.QConv(features, (3, 3), quant=cfg)
  x = jax.random.normal(jax.random.key(0), shape)
  return layer, x, layer.init(jax.random.key(1), x)


def test_new_state_is_what_the_quantizer_makes_of_g_and_carries_across_steps():
  cfg = quant.daq()
  layer, x, v = _layer_and_vars(cfg)
  g1 = jax.random.laplace(jax.random.key(2), (4, 8, 8, 5))
  g2 = 0.5 * jax.random.laplace(jax.random.key(3), (4, 8, 8, 5))

  @jax.jit
  def step(params, state, g):
    # d(sum(y * g))/dy = g: the layer's backward pass sees exactly g.
    return quant.value_and_grad(
      lambda p, s: jnp.sum(layer.apply({"params": p, "quant_state": s}, x) * g)
    )(params, state)

  _, _, s1 = step(v["params"], v["quant_state"], g1)
  s1 = s1["quant"]  # the state lives in the layer's op module, `quant`
  want1 = gradient.quantize_gradient(g1, v["quant_state"]["quant"], cfg).new_state
  _, grads, s2 = step(v["params"], {"quant": s1}, g2)
  s2 = s2["quant"]
  want2 = gradient.quantize_gradient(g2, want1, cfg).new_state
  for got, want in ((s1, want1), (s2, want2)):
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  assert set(grads) == {"kernel", "bias"}
  # A Laplace channel's state follows the recursion, not the max of step 2.
  assert not np.allclose(s2["wgrad_clip"], gradient.clip_stats(g2.reshape(-1, 5)).gmax)


def test_the_statistics_are_the_cotangent_of_their_collection_and_optional():
  cfg = quant.daq()
  layer, x, v = _layer_and_vars(cfg)
  g = jax.random.laplace(jax.random.key(2), (4, 8, 8, 5))
  want = gradient.quantize_gradient(g, v["quant_state"]["quant"], cfg)

  def new(collections):
    return jax.grad(lambda c: jnp.sum(layer.apply({"params": v["params"], **c}, x) * g))(
      {name: v[name] for name in collections}
    )

  both = new(("quant_state", "quant_stats"))
  for name, value in gradient.statistics(want, cfg).items():
    np.testing.assert_allclose(both["quant_stats"]["quant"][name], value, rtol=1e-6)
  # Without the collection the layer computes none, and its state is the same.
  alone = new(("quant_state",))
  assert set(alone) == {"quant_state"}
  for name in want.new_state:
    np.testing.assert_array_equal(
      alone["quant_state"]["quant"][name], both["quant_state"]["quant"][name]
    )


def test_split_grads_separates_params_from_state():
  cfg = quant.daq()
  layer, x, v = _layer_and_vars(cfg)
  grads = jax.grad(lambda var: jnp.sum(layer.apply(var, x) ** 2))(v)
  rest, state, stats = quant.split_grads(grads)
  assert set(rest) == {"params"}
  assert set(state["quant"]) == {"dgrad_clip", "wgrad_clip"}
  assert set(stats["quant"]) == set(gradient.STATISTICS)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    cfg = quant.daq()
    return qnn.QConv(4, (3, 3), quant=cfg)(nn.relu(qnn.QConv(4, (3, 3), quant=cfg)(x)))


def test_remat_gives_the_same_gradients_and_state():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  plain, remat = _Block(), nn.remat(_Block)()
  v = plain.init(jax.random.key(1), x)
  results = []
  for model in (plain, remat):
    fn = quant.value_and_grad(
      lambda p, s, m=model: jnp.sum(m.apply({"params": p, "quant_state": s}, x) ** 2)
    )
    results.append(jax.jit(fn)(v["params"], v["quant_state"]))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.slow
def test_sharded_batch_gives_the_single_device_state_and_gradients():
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "tests.quant.sharded_step"],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  diffs = json.loads(proc.stdout.strip().splitlines()[-1])
  assert all(v <= SHARDED_RTOL for v in diffs.values()), diffs
