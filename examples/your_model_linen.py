"""Your own flax.linen model trained with DAQ, as flax's examples/imagenet trains one: a ResNet
with BatchNorm synchronised over the devices (`axis_name`), Dropout, an Optax optimizer and a
`jax.pmap`ped step. Nothing of daq_jax is in the model; four lines change in the step.

    python examples/your_model_linen.py [--steps 20] [--devices 2]

Runs on the CPU with `--devices` host devices (XLA's `--xla_force_host_platform_device_count`).
docs/models.md walks through it; the test suite runs it, so it cannot rot.
"""

from __future__ import annotations

import argparse
import os
import sys


def _devices_from_argv() -> int:
  for i, arg in enumerate(sys.argv):
    if arg == "--devices":
      return int(sys.argv[i + 1])
    if arg.startswith("--devices="):
      return int(arg.split("=", 1)[1])
  return 2


# Host devices have to be asked for before JAX starts.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={_devices_from_argv()}"
  )
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import daq_jax  # noqa: E402
from daq_jax import quant  # noqa: E402


# --- the user's model, as flax's examples write it ----------------------------------------
class ResNetBlock(nn.Module):
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, axis_name="batch", name=name
    )
    y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = nn.Conv(self.filters, (3, 3), use_bias=False, name="conv2")(y)
    y = norm("bn2")(y)
    if x.shape != y.shape:
      x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name="proj")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(16, (3, 3), use_bias=False, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, axis_name="batch", name="bn")(x))
    x = ResNetBlock(16, name="block1")(x, train)
    x = ResNetBlock(32, strides=2, name="block2")(x, train)
    x = nn.Dropout(0.1, deterministic=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(self.num_classes, name="head")(x)


# --- quantized by rules: the stem and the classifier float, the rest the recommended method
model = daq_jax.quantize(
  ResNet(), [("stem", None), ("head", None), (".*", quant.preset(quant.config.RECOMMENDED))]
)


def loss_fn(params, quant_state, batch_stats, x, y, rngs):
  variables = {"params": params, "batch_stats": batch_stats, "quant_state": quant_state}
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, updates["batch_stats"]


def train_step(state, x, y, key_data):
  params, quant_state, batch_stats, opt_state, step = state
  key = jax.random.wrap_key_data(key_data)
  # a key per step and device: dropout, and the quantizer's stochastic rounding
  key = jax.random.fold_in(jax.random.fold_in(key, step), jax.lax.axis_index("batch"))
  dropout, rounding = jax.random.split(key)
  rngs = {"dropout": dropout, "quant": rounding}
  # (was: jax.value_and_grad(loss_fn, has_aux=True)(params, ...))
  (loss, batch_stats), grads, quant_state = quant.value_and_grad(loss_fn, has_aux=True)(
    params, quant_state, batch_stats, x, y, rngs
  )
  # Each device's backward pass saw its own shard of the batch: average the gradients, and the
  # new quantizer state too, so that every replica carries the same state.
  grads, quant_state = jax.lax.pmean((grads, quant_state), axis_name="batch")
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return (params, quant_state, batch_stats, opt_state, step + 1), jax.lax.pmean(loss, "batch")


tx = optax.sgd(0.1, momentum=0.9)


def synthetic(key, n: int):
  """Which quadrant of a 16x16 image holds a bright square (4 classes)."""
  k1, k2 = jax.random.split(key)
  y = jax.random.randint(k1, (n,), 0, 4)
  x = 0.1 * jax.random.normal(k2, (n, 16, 16, 3))
  rows, cols = jnp.arange(16)[None, :, None], jnp.arange(16)[None, None, :]
  top, left = ((y // 2) * 8)[:, None, None], ((y % 2) * 8)[:, None, None]
  mask = (rows >= top) & (rows < top + 6) & (cols >= left) & (cols < left + 6)
  return x + mask[..., None], y


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--devices", type=int, default=2)
  parser.add_argument("--batch", type=int, default=32, help="global, split over the devices")
  args = parser.parse_args(argv)
  n = args.devices
  if jax.local_device_count() < n:
    raise SystemExit(f"error: --devices {n}: JAX sees {jax.local_device_count()} device(s)")
  key = jax.random.key(0)
  x, y = synthetic(key, args.batch)
  variables = model.init({"params": key, "dropout": key}, x, train=False)
  state = (
    variables["params"],
    variables["quant_state"],
    variables["batch_stats"],
    tx.init(variables["params"]),
    jnp.zeros((), jnp.int32),
  )
  replicate = lambda tree: jax.tree.map(lambda v: jnp.broadcast_to(v, (n, *v.shape)), tree)
  state = replicate(state)  # one copy per device: pmap's leading axis
  step = jax.pmap(train_step, axis_name="batch", devices=jax.local_devices()[:n])
  keys = replicate(jax.random.key_data(key))
  losses = []
  for i in range(args.steps):
    x, y = synthetic(jax.random.fold_in(key, i), args.batch)
    state, loss = step(state, x.reshape(n, -1, *x.shape[1:]), y.reshape(n, -1), keys)
    losses.append(float(loss[0]))
  clip = state[1]["block1"]["conv1"]["quant"]["wgrad_clip"]
  same = bool(jnp.all(clip[0] == clip[1:])) if n > 1 else True
  print(f"{n} devices, {args.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  moved = bool(jnp.all(clip[0] > 0))
  print(f"block1/conv1's clip state moved: {moved}, the same on every device: {same}")


if __name__ == "__main__":
  main()
