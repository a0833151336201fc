"""QConv: `flax.linen.Conv` with DAQ int8 forward and backward passes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from daq_jax.nn.common import quant_inputs
from daq_jax.quant import conv_op
from daq_jax.quant.config import QuantConfig


def _per_dim(value, n: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


class QConv(nn.Conv):
  """A drop-in for `flax.linen.Conv` whose convolution runs in int8, forward and backward.

  It has all of `nn.Conv`'s fields, defaults, layouts (channels last, kernel (*spatial, C_in /
  groups, C_out)) and parameter names (`kernel`, `bias`). With `quant=None` it is `nn.Conv`,
  bit for bit. With a `QuantConfig` the convolution is `daq_jax.quant.conv_general`; the bias,
  the mask and the dtype promotion stay as in `nn.Conv`, `precision` is not used (int8 products
  are exact), and the layer's per-channel gradient state lives in the `quant_state`
  collection. Stochastic gradient rounding draws from the `quant` rng stream.

  Attributes:
    quant: the quantization config, or None for the float layer.
  """

  quant: QuantConfig | None = None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if self.quant is None:
      return super().__call__(inputs)
    if self.conv_general_dilated is not None or self.conv_general_dilated_cls is not None:
      raise ValueError(
        "QConv with quant set replaces the convolution: leave conv_general_dilated unset"
      )
    kernel_size = (
      (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )
    n = len(kernel_size)
    if inputs.ndim < n + 1:
      raise ValueError(
        f"QConv {self.path}: input of shape {inputs.shape} has too few dims for a "
        f"{n}-D kernel {kernel_size}"
      )
    # Like nn.Conv: flatten several batch dims into one, add one where there is none.
    batch_shape = inputs.shape[: inputs.ndim - (n + 1)]
    inputs = inputs.reshape((-1,) + inputs.shape[len(batch_shape) :])
    strides = _per_dim(self.strides, n)
    input_dilation = _per_dim(self.input_dilation, n)
    kernel_dilation = _per_dim(self.kernel_dilation, n)

    padding = canonicalize_padding(self.padding, n)
    if padding in ("CIRCULAR", "REFLECT"):
      dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
      pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
      inputs = jnp.pad(inputs, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
      padding = "VALID"
    elif padding == "CAUSAL":
      if n != 1:
        raise ValueError("Causal padding is only implemented for 1D convolutions.")
      inputs = jnp.pad(inputs, [(0, 0), (kernel_dilation[0] * (kernel_size[0] - 1), 0), (0, 0)])
      padding = "VALID"

    in_features = inputs.shape[-1]
    if in_features % self.feature_group_count:
      raise ValueError(
        f"QConv {self.path}: {in_features} input features are not divisible by "
        f"feature_group_count={self.feature_group_count}"
      )
    kernel_shape = kernel_size + (in_features // self.feature_group_count, self.features)
    if self.mask is not None and self.mask.shape != kernel_shape:
      raise ValueError(
        f"Mask needs to have the same shape as weights. Shapes are: {self.mask.shape}, "
        f"{kernel_shape}"
      )
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    if self.mask is not None:
      kernel *= self.mask
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

    state, key = quant_inputs(self, self.quant, self.features)
    y = conv_op.conv_general(
      inputs,
      kernel,
      state,
      key,
      cfg=self.quant,
      window_strides=strides,
      padding=padding,
      lhs_dilation=input_dilation,
      rhs_dilation=kernel_dilation,
      feature_group_count=self.feature_group_count,
    )
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y.reshape(batch_shape + y.shape[1:]) if len(batch_shape) != 1 else y
