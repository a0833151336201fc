"""The op modules QConv and QDense hand to Flax's own hooks (`nn.Conv(conv_general_dilated_cls=
...)`, `nn.Dense(dot_general_cls=...)`), as Flax's fp8 ops do: a small module that replaces
the layer's contraction and owns its quantization state.

The state lives in the `quant_state` collection under the layer's path, in a child named
`quant` (`quant_state/<layer>/quant/wgrad_clip`). The forward pass never changes it: the new
state is the cotangent of these variables under `jax.grad` (see `daq_jax.quant.value_and_grad`).
What the quantizer saw in the step (`gradient.STATISTICS`: the share of inverted-T channels,
the clip ratio, the dgrad scale) comes out the same way from a collection of its own,
`quant_stats`, of zeros: apply the model with it and differentiate with respect to it too to
get them; without it they are not computed. Stochastic gradient rounding draws from the
`quant` rng stream.
"""

from __future__ import annotations

import dataclasses
import weakref

import flax.linen as nn
import jax

from daq_jax.quant import conv_op, dense_op, gradient
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.state import STATE_COLLECTION, STATS_COLLECTION

RNG_STREAM = "quant"
OP_NAME = "quant"

# Per model application (its root scope): the quantized layers already applied in it.
_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_path(module: nn.Module) -> str:
  return "/".join(module.path[:-1]) or "<root>"


def quant_inputs(module: nn.Module, cfg: QuantConfig, features: int):
  """The layer's quantization state (created at init), its statistics input (zeros; empty
  when the variables passed to apply have no `quant_stats`) and its PRNG key for stochastic
  rounding.

  Raises:
    ValueError: when the variables lack the `quant_state` collection, or when the layer was
      already applied in this call of the model (its state would get the sum of two updates).
  """
  applied = _APPLIED.setdefault(module.scope.root, set())
  if module.path in applied:
    raise ValueError(
      f"quantized layer {_layer_path(module)} was applied twice in one call of the model: its "
      "quantization state would become the sum of two updates. Give each call site its own "
      "quantized layer (share parameters, not quantized layers)"
    )
  applied.add(module.path)
  init = gradient.init_state(cfg, features)
  if not module.is_initializing() and not module.has_variable(STATE_COLLECTION, next(iter(init))):
    raise ValueError(
      f"quantized layer {_layer_path(module)}: quantized layers need the '{STATE_COLLECTION}' "
      "collection in the variables passed to apply (take it from model.init)"
    )
  state = {
    name: module.variable(STATE_COLLECTION, name, lambda v=value: v).value
    for name, value in init.items()
  }
  stats = {}
  if module.is_initializing() or module.has_variable(STATS_COLLECTION, gradient.STATISTICS[0]):
    stats = {
      name: module.variable(STATS_COLLECTION, name, lambda v=value: v).value
      for name, value in gradient.init_statistics().items()
    }
  key = module.make_rng(RNG_STREAM) if cfg.stochastic and module.has_rng(RNG_STREAM) else None
  return state, stats, key


def check_dense_call(where: str, lhs, rhs, dimension_numbers, preferred_element_type) -> None:
  """Refuses a dot_general call that is not x (..., K) @ w (K, N), the quantized dense op's."""
  (lc, rc), (lb, rb) = dimension_numbers
  if (
    tuple(lc) != (lhs.ndim - 1,)
    or tuple(rc) != (0,)
    or lb
    or rb
    or rhs.ndim != 2
    or preferred_element_type is not None
  ):
    raise ValueError(
      f"quantized dense {where}: only x (..., K) @ w (K, N) is supported, got x {lhs.shape}, "
      f"w {rhs.shape}, dimension_numbers={dimension_numbers}, "
      f"preferred_element_type={preferred_element_type}"
    )


class QuantOp(nn.Module):
  """What both op modules are: a contraction with a quantization config and the layer's state.

  Attributes:
    quant: the quantization config.
  """

  quant: QuantConfig


class QuantConvOp(QuantOp):
  """`lax.conv_general_dilated`'s signature over `quant.conv_general`, with the layer's state."""

  @nn.compact
  def __call__(
    self,
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides=None,
    padding="SAME",
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,  # int8 products are exact: there is no precision to choose
    preferred_element_type=None,
  ) -> jax.Array:
    del precision
    if batch_group_count != 1 or preferred_element_type is not None:
      raise ValueError(
        f"quantized conv {_layer_path(self)}: batch_group_count and preferred_element_type "
        "are not supported"
      )
    state, stats, key = quant_inputs(self, self.quant, rhs.shape[-1])
    return conv_op.conv_general(
      lhs,
      rhs,
      state,
      key,
      cfg=self.quant,
      window_strides=window_strides,
      padding=padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      feature_group_count=feature_group_count,
      dimension_numbers=dimension_numbers,
      stats=stats,
    )


class QuantDotGeneralOp(QuantOp):
  """`lax.dot_general`'s signature over `quant.dense` (x (..., K) contracting its last axis
  with w (K, N)), with the layer's state."""

  @nn.compact
  def __call__(
    self,
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
  ) -> jax.Array:
    del precision
    check_dense_call(_layer_path(self), lhs, rhs, dimension_numbers, preferred_element_type)
    state, stats, key = quant_inputs(self, self.quant, rhs.shape[-1])
    return dense_op.dense(lhs, rhs, state, key, cfg=self.quant, stats=stats)


@dataclasses.dataclass(frozen=True)
class OpFactory:
  """What a Flax layer's `*_cls` hook calls: a hashable maker of one op module per call."""

  op: type[QuantOp]
  quant: QuantConfig

  def __call__(self) -> QuantOp:
    return self.op(quant=self.quant, name=OP_NAME)
