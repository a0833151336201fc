"""QDense: `flax.linen.Dense` with DAQ int8 forward and backward passes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from daq_jax.nn.common import quant_inputs
from daq_jax.quant import dense_op
from daq_jax.quant.config import QuantConfig


class QDense(nn.Dense):
  """A drop-in for `flax.linen.Dense` whose product runs in int8, forward and backward.

  Same fields, defaults and parameter names (`kernel` (in, out), `bias`) as `nn.Dense`; with
  `quant=None` it is `nn.Dense`, bit for bit. With a `QuantConfig` the product is
  `daq_jax.quant.dense`, its per-feature gradient state lives in the `quant_state`
  collection, and stochastic rounding draws from the `quant` rng stream.

  Attributes:
    quant: the quantization config, or None for the float layer.
  """

  quant: QuantConfig | None = None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if self.quant is None:
      return super().__call__(inputs)
    if self.dot_general is not None or self.dot_general_cls is not None:
      raise ValueError("QDense with quant set replaces the product: leave dot_general unset")
    kernel = self.param(
      "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
    )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    state, key = quant_inputs(self, self.quant, self.features)
    y = dense_op.dense(inputs, kernel, state, key, cfg=self.quant)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y
