"""Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=4 (test_state.py does):
one training step of a small quantized net on 1 device and with the batch sharded over 4,
printing the largest differences of gradients and new quantization state as JSON."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import daq_jax.nn as qnn
from daq_jax import quant


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    cfg = quant.daq()
    x = nn.relu(qnn.QConv(8, (3, 3), quant=cfg)(x))
    x = nn.relu(qnn.QConv(8, (3, 3), strides=2, quant=cfg)(x))
    return qnn.QDense(10, quant=cfg)(x.mean((1, 2)))


def main():
  assert jax.device_count() == 4, jax.devices()
  net = Net()
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  y = jnp.arange(8) % 10
  v = net.init(jax.random.key(1), x)

  def loss(params, state, x, y):
    logits = net.apply({"params": params, "quant_state": state}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  step = jax.jit(quant.value_and_grad(loss))
  # Warm the state up with a step, so the second step exercises the MCS recursion.
  _, _, state = step(v["params"], v["quant_state"], x, y)
  single = step(v["params"], state, x, y)

  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  args = (
    jax.device_put(v["params"], replicated),
    jax.device_put(state, replicated),
    jax.device_put(x, batch),
    jax.device_put(y, batch),
  )
  sharded = step(*args)
  assert len(sharded[2]["QConv_0"]["quant"]["wgrad_clip"].sharding.device_set) == 4

  def diff(a, b):
    return max(
      float(np.max(np.abs(np.asarray(p) - np.asarray(q)) / (np.max(np.abs(np.asarray(q))) + 1e-30)))
      for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )

  print(
    json.dumps(
      {
        "loss": diff(sharded[0], single[0]),
        "grads": diff(sharded[1], single[1]),
        "state": diff(sharded[2], single[2]),
      }
    )
  )


if __name__ == "__main__":
  main()
