"""Your own flax.nnx model trained with DAQ, as the NNX tutorials train one: BatchNorm, Dropout,
an Optax optimizer (`nnx.Optimizer`) and an `nnx.jit` step over a batch sharded across the
devices. Nothing of daq_jax is in the model; the step differentiates with
`daq_jax.nnx.value_and_grad`, which writes the quantizer's new state back into the model.

    python examples/your_model_nnx.py [--steps 20] [--devices 2]

Runs on the CPU with `--devices` host devices. docs/models.md walks through it; the test suite
runs it, so it cannot rot.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import daq_jax.nnx  # noqa: E402
from daq_jax import quant  # noqa: E402


# --- the user's model, as the NNX tutorials write it -----------------------------------------
class CNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(16, rngs=rngs)
    self.conv = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.bn2 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.stem(x)))
    x = nnx.relu(self.bn2(self.conv(x)))
    return self.head(self.dropout(x.mean(axis=(1, 2))))


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  # (was: nnx.value_and_grad(loss_fn)(model, x, y)); the new quantizer state is written back
  loss, grads, _ = daq_jax.nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)  # Params only
  return loss


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
  parser.add_argument("--batch", type=int, default=32, help="global, sharded over the devices")
  args = parser.parse_args(argv)
  if jax.device_count() < args.devices:
    raise SystemExit(f"error: --devices {args.devices}: JAX sees {jax.device_count()} device(s)")
  model = CNN(nnx.Rngs(0))
  # the stem float, the rest the recommended method; its stochastic rounding draws keys
  daq_jax.nnx.quantize(model, f"stem:fp32;.*:{quant.config.RECOMMENDED}", rngs=nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  # The batch is sharded over the devices, the model replicated: the gradients and the
  # quantizer's statistics (so its new state) are reduced over the whole batch by XLA.
  mesh = jax.sharding.Mesh(jax.devices()[: args.devices], ("batch",))  # Auto axes
  data = NamedSharding(mesh, P("batch"))
  nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(mesh, P())))
  losses = []
  for i in range(args.steps):
    x, y = synthetic(jax.random.key(i), args.batch)
    losses.append(
      float(train_step(model, optimizer, jax.device_put(x, data), jax.device_put(y, data)))
    )
  moved = bool(jnp.all(model.conv.quant_wgrad_clip[...] > 0))
  print(f"{args.devices} devices, {args.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  print(f"conv's clip state moved: {moved}")
  graph, state = nnx.split(model)
  report = quant.lowering.layer_report(
    lambda s: daq_jax.nnx.value_and_grad(loss_fn)(nnx.merge(graph, s), x, y), state
  )
  print(report.table())


if __name__ == "__main__":
  main()
