"""What the quantized ops keep from the forward pass for the backward pass."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Residuals:
  """The residuals of a quantized op: arrays (int8 operands, scales, the layer's state, the
  PRNG key) plus the primal operands' static shapes and dtypes.

  Attributes:
    saved: a tuple of arrays specific to the op and its `impl`.
    state: the layer's quantization state, read by the gradient quantizer.
    key: the PRNG key for stochastic rounding, or None.
  """

  saved: tuple
  state: Any
  key: Any
  lhs_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  lhs_dtype: Any = dataclasses.field(metadata=dict(static=True))
  rhs_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  rhs_dtype: Any = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def of(cls, saved, state, key, lhs, rhs) -> Residuals:
    return cls(saved, state, key, lhs.shape, lhs.dtype, rhs.shape, rhs.dtype)
