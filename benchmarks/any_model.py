"""The cost of quantizing a model you did not write for daq_jax: one training step (forward,
backward, SGD) of the same CNN built four ways, timed in one run.

    python -m benchmarks.any_model [--batch 128] [--repeats 7] [--out PATH]

- float: flax.linen with nn.Conv/nn.Dense, no quantization (the reference);
- zoo: the project's way, QConv/QDense module fields with a DAQ config;
- linen rules: the float linen model, unmodified, through `daq_jax.quantize(model, rules)`;
- nnx rules: the same network in flax.nnx, quantized in place by `daq_jax.nnx.quantize`.
Every conv and dense is DAQ in the three quantized variants. The network is the CIFAR
ResNet-20 for the linen variants, and a 3-conv CNN for the nnx-against-linen comparison
(written in both APIs). Writes benchmarks/results/any_model_<backend>.json.
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import daq_jax
import daq_jax.nn as qnn
import daq_jax.nnx as dnnx
from benchmarks.common import environment, median_ms, write_json
from daq_jax import models, quant

CFG = quant.daq()


def _linen_step(model, variables, x, y):
  tx = optax.sgd(0.01)

  def step(params, state, opt_state, x, y):
    def loss_fn(p, s):
      out, _ = model.apply(
        {"params": p, "batch_stats": variables.get("batch_stats", {}), "quant_state": s},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    loss, grads, state = quant.value_and_grad(loss_fn)(params, state)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state, loss

  params = variables["params"]
  args = (params, variables.get("quant_state", {}), tx.init(params), x, y)
  return jax.jit(step), args


def resnet20_rows(x, y, repeats):
  key = jax.random.key(0)
  variants = {
    "float": models.create("resnet20", num_classes=10),
    "zoo": models.create(
      "resnet20",
      num_classes=10,
      conv=functools.partial(qnn.QConv, quant=CFG),
      dense=functools.partial(qnn.QDense, quant=CFG),
    ),
    "linen_rules": daq_jax.quantize(models.create("resnet20", num_classes=10), [(".*", CFG)]),
  }
  rows = {}
  for name, model in variants.items():
    variables = model.init(key, x, train=False)
    step, args = _linen_step(model, variables, x, y)
    rows[name] = median_ms(step, *args, repeats=repeats)
  return rows


class LinenCNN(nn.Module):
  conv: object = nn.Conv
  dense: object = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i, width in enumerate((32, 64, 64)):
      x = nn.relu(self.conv(width, (3, 3), strides=1 + (i > 0), name=f"conv{i}")(x))
    return self.dense(10, name="head")(x.mean((1, 2)))


class NnxCNN(nnx.Module):
  def __init__(self, rngs):
    self.convs = nnx.List(
      [
        nnx.Conv(c_in, c_out, (3, 3), strides=1 + (i > 0), rngs=rngs)
        for i, (c_in, c_out) in enumerate(((3, 32), (32, 64), (64, 64)))
      ]
    )
    self.head = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = nnx.relu(conv(x))
    return self.head(x.mean((1, 2)))


def cnn_rows(x, y, repeats):
  key = jax.random.key(0)
  rows = {}
  zoo = LinenCNN(
    conv=functools.partial(qnn.QConv, quant=CFG), dense=functools.partial(qnn.QDense, quant=CFG)
  )
  for name, model in (("float", LinenCNN()), ("zoo", zoo)):
    step, args = _linen_step(model, model.init(key, x), x, y)
    rows[name] = median_ms(step, *args, repeats=repeats)

  model = dnnx.quantize(NnxCNN(nnx.Rngs(0)), [(".*", CFG)])
  optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads, new_state = dnnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    nnx.update(model, new_state)
    return loss

  rows["nnx_rules"] = median_ms(step, model, optimizer, x, y, repeats=repeats)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 3))
  y = jnp.arange(args.batch) % 10
  result = environment("benchmarks.any_model")
  result["batch"] = args.batch
  result["resnet20_ms"] = resnet20_rows(x, y, args.repeats)
  result["cnn_ms"] = cnn_rows(x, y, args.repeats)
  print(f"training step, batch {args.batch}, {jax.default_backend()}, medians of {args.repeats}")
  for table in ("resnet20_ms", "cnn_ms"):
    rows = result[table]
    print(f"{table[:-3]:<10} " + "  ".join(f"{k} {v:.1f} ms" for k, v in rows.items()))
    print(" " * 11 + "  ".join(f"{k}/zoo {v / rows['zoo']:.2f}" for k, v in rows.items()))
  out = args.out or f"benchmarks/results/any_model_{jax.default_backend()}.json"
  print(f"wrote {write_json(out, result)}")


if __name__ == "__main__":
  main()
