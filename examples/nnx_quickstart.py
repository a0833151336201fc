"""DAQ INT8 training of a flax.nnx model that was written without daq_jax, in a few seconds.

    python examples/nnx_quickstart.py [--steps 30]

The model is plain nnx (nnx.Conv, nnx.Linear). `daq_jax.nnx.quantize` turns its layers into
int8 ones in place by rules on their paths (here: all but the first conv), and
`daq_jax.nnx.value_and_grad` differentiates with respect to the Params and the layers'
`QuantState` at once: the optimizer gets the parameter gradients, `nnx.update` carries the
new quantization state to the next step, as `quant.value_and_grad` does for linen. The data
is the quickstart's synthetic task (which quadrant holds a bright square).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import daq_jax.nnx as dnnx
from daq_jax import quant


class CNN(nnx.Module):
  """A user's model: nothing of daq_jax in it."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 32, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    x = nnx.relu(self.conv(x))
    return self.head(x.reshape(x.shape[0], -1))


def batch(key, size: int = 64):
  """Noise with a bright 6x6 square in one of four quadrants; the label is the quadrant."""
  k_noise, k_label = jax.random.split(key)
  labels = jax.random.randint(k_label, (size,), 0, 4)
  images = 0.3 * jax.random.normal(k_noise, (size, 16, 16, 1))
  rows, cols = (labels // 2) * 8 + 1, (labels % 2) * 8 + 1
  yy, xx = jnp.arange(16)[None, :, None], jnp.arange(16)[None, None, :]
  square = (yy >= rows[:, None, None]) & (yy < rows[:, None, None] + 6)
  square &= (xx >= cols[:, None, None]) & (xx < cols[:, None, None] + 6)
  return images + square[..., None].astype(jnp.float32), labels


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  args = parser.parse_args()

  model = dnnx.quantize(CNN(nnx.Rngs(0)), [("stem", None), (".*", quant.daq())])
  optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads, new_state = dnnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # Params only
    nnx.update(model, new_state)  # the next step's per-channel clip values
    return loss

  for step in range(args.steps):
    loss = train_step(model, optimizer, *batch(jax.random.key(step)))
    if step % 10 == 0 or step == args.steps - 1:
      print(f"step {step:3d}  loss {float(loss):.4f}")
  x, y = batch(jax.random.key(10_000), 512)
  print(f"accuracy on 512 fresh images: {float(jnp.mean(jnp.argmax(model(x), -1) == y)):.3f}")
  print(f"conv's MCS clip values after training: {model.conv.quant_wgrad_clip[...][:4]} ...")


if __name__ == "__main__":
  main()
