"""ReLU and ReLU6 whose backward pass keeps their masks as bits.

`jax.nn.relu`'s derivative keeps a bool per element (one byte) between the passes; these keep
the same mask packed eight to a byte (`jnp.packbits` along the last axis), and give the same
values and gradients bit for bit (the gradient passes where 0 < x, and x < 6 for ReLU6, as
JAX's). With `memory="int8"` the masks are what a step keeps beside its int8 operands
(`daq_jax.quant.memory`), so a bit each instead of a byte each is an eighth of that half.
The model zoo uses them; a model of one's own with `nn.relu` keeps bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from daq_jax.quant.memory import name_residual


def _pack(mask: jax.Array) -> jax.Array:
  return name_residual(jnp.packbits(mask, axis=-1))


def _unpack(bits: jax.Array, width: int) -> jax.Array:
  return jnp.unpackbits(bits, axis=-1, count=width).astype(bool)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0), its mask kept as bits."""
  return jnp.maximum(x, 0)


def _relu_fwd(x):
  return relu(x), _pack(x > 0)


def _relu_bwd(bits, g):
  return (jnp.where(_unpack(bits, g.shape[-1]), g, jnp.zeros_like(g)),)


relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def relu6(x: jax.Array) -> jax.Array:
  """min(max(x, 0), 6), its mask kept as bits."""
  return jnp.minimum(jnp.maximum(x, 0), 6)


def _relu6_fwd(x):
  return relu6(x), _pack((x > 0) & (x < 6))


relu6.defvjp(_relu6_fwd, _relu_bwd)
