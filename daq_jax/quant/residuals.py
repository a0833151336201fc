"""What the quantized ops keep from the forward pass for the backward pass."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Residuals:
  """The residuals of a quantized op: int8 operands with their scales, the layer's state and
  PRNG key, and the primal operands' static shapes and dtypes.

  Attributes:
    kernel: what the dgrad implementation keeps of the kernel (`Backend.*_keep_kernel`).
    inputs: what the wgrad implementation keeps of the input (`Backend.*_keep_input`).
    state: the layer's quantization state, read by the gradient quantizer.
    key: the PRNG key for stochastic rounding, or None.
    statistics: the names of the statistics the backward pass hands out (`gradient.STATISTICS`).
  """

  kernel: Any
  inputs: Any
  state: Any
  key: Any
  lhs_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  lhs_dtype: Any = dataclasses.field(metadata=dict(static=True))
  rhs_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  rhs_dtype: Any = dataclasses.field(metadata=dict(static=True))
  statistics: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def of(cls, kernel, inputs, state, stats, key, lhs, rhs) -> Residuals:
    shapes = (lhs.shape, lhs.dtype, rhs.shape, rhs.dtype)
    return cls(kernel, inputs, state, key, *shapes, tuple(stats))
