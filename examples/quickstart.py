"""DAQ INT8 training of a small CNN, end to end, in about a minute on 2 CPU cores.

    python examples/quickstart.py [--method daq|per_tensor|ui8|gvq|mcs|fp32] [--steps 60]

The data is synthetic but learnable (which of four quadrants holds a bright square, on noise),
so the loss must fall. The script shows the three things a user of daq_jax does: build a
model with QConv/QDense, carry the quantization state out of the backward pass with
`daq_jax.quant.value_and_grad`, and check what the quantizer did (`inspect_gradients`) and
that the training step really runs int8 contractions (`lowering.hlo_contractions`).
"""

from __future__ import annotations

import argparse
import collections
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.analysis import layer_reports
from daq_jax.quant import lowering


class SmallCNN(nn.Module):
  """Three convs and a classifier; `conv`/`dense` choose float or quantized layers."""

  conv: type = nn.Conv
  dense: type = nn.Dense
  num_classes: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.conv(16, (3, 3))(x))
    x = nn.relu(self.conv(32, (3, 3), strides=2)(x))
    x = nn.relu(self.conv(32, (3, 3), strides=2)(x))
    return self.dense(self.num_classes)(x.reshape(x.shape[0], -1))  # keeps where things are


def make_batch(key, batch: int = 64, size: int = 16):
  k_label, k_noise = jax.random.split(key)
  labels = jax.random.randint(k_label, (batch,), 0, 4)
  half = size // 2
  rows = jnp.arange(size)[:, None]
  cols = jnp.arange(size)[None, :]
  top, left = (labels // 2)[:, None, None] * half, (labels % 2)[:, None, None] * half
  square = (
    (rows >= top + 2) & (rows < top + half - 2) & (cols >= left + 2) & (cols < left + half - 2)
  )
  images = 0.5 * jax.random.normal(k_noise, (batch, size, size, 1)) + square[..., None]
  return images, labels


def cross_entropy(logits, labels):
  return jnp.mean(
    jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", default="daq", choices=quant.METHODS)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--lr", type=float, default=0.1)
  args = parser.parse_args()

  cfg = quant.preset(args.method)
  model = SmallCNN(
    conv=functools.partial(qnn.QConv, quant=cfg), dense=functools.partial(qnn.QDense, quant=cfg)
  )
  x, y = make_batch(jax.random.key(0))
  variables = model.init(jax.random.key(1), x)
  params, state = variables["params"], variables.get("quant_state", {})

  def loss_fn(params, state, x, y, key):
    logits = model.apply({"params": params, "quant_state": state}, x, rngs={"quant": key})
    return cross_entropy(logits, y)

  @jax.jit
  def train_step(params, state, x, y, key):
    loss, grads, state = quant.value_and_grad(loss_fn)(params, state, x, y, key)
    params = jax.tree.map(lambda p, g: p - args.lr * g, params, grads)
    return params, state, loss

  print(f"method={args.method}: {cfg}")
  contractions = lowering.hlo_contractions(
    quant.value_and_grad(loss_fn), params, state, x, y, jax.random.key(0)
  )
  kinds = collections.Counter(f"{op} {'x'.join(ops)}->{out}" for op, ops, out in contractions)
  print("contractions in the lowered training step:", dict(kinds))

  start = time.perf_counter()
  for step in range(args.steps):
    x, y = make_batch(jax.random.key(100 + step))
    params, state, loss = train_step(params, state, x, y, jax.random.key(step))
    if step % 10 == 0 or step == args.steps - 1:
      print(f"step {step:3d}  loss {float(loss):.4f}")
  print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")

  x, y = make_batch(jax.random.key(10_000), batch=512)
  logits = model.apply({"params": params, "quant_state": state}, x)
  print(f"accuracy on 512 fresh images: {float(jnp.mean(jnp.argmax(logits, -1) == y)):.3f}")
  x, y = x[:64], y[:64]  # the training batch size: the clip state is on that gradient scale
  if cfg is not None:
    reports = layer_reports.inspect_gradients(
      model, {"params": params, "quant_state": state}, lambda out: cross_entropy(out, y), x
    )
    print(layer_reports.format_reports(reports))


if __name__ == "__main__":
  main()
