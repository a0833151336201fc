"""flax.nnx layers: `QConv` and `QDense`, drop-ins for `nnx.Conv` and `nnx.Linear` whose
contraction runs DAQ's int8 forward and backward passes.

A quantized layer is the nnx layer itself (its `kernel` and `bias` Params, its padding,
masking, batch dimensions and dtype promotion) with the contraction it calls swapped, for the
length of one call, for `daq_jax.quant.conv_general` / `daq_jax.quant.dense`. Its gradient
state is a `QuantState` Variable per entry (`quant_wgrad_clip`, `quant_dgrad_clip`, ...): the
forward pass reads it, and differentiating with respect to `QuantState` as well as `Param`
(`daq_jax.nnx.value_and_grad`) gives its next value as the "gradient". What the quantizer saw
in the step (`gradient.STATISTICS`) comes out the same way, in `QuantStats` Variables of its
own (`quant_inverted_t`, ...), kept apart from the state. Stochastic rounding draws keys from
the layer's own `quant_rngs` stream.
"""

from __future__ import annotations

import functools
import weakref

import jax
from flax import nnx

from daq_jax.nn.ops import check_dense_call
from daq_jax.quant import conv_op, dense_op, gradient
from daq_jax.quant.config import QuantConfig

STATE_PREFIX = "quant_"

# id(layer) -> the traced state value of its last call, to refuse a second call of one layer
# in one traced computation (its state would become the sum of two updates).
_TRACED: dict[int, weakref.ref] = {}


class QuantState(nnx.Variable):
  """A quantized layer's gradient state (MCS clip values, ...): not a parameter. Its next value
  comes out of the backward pass as its gradient; the optimizer never sees it."""


class QuantStats(nnx.Variable):
  """What a quantized layer's gradient quantizer saw in the last step, for logging: never read
  back. It comes out of the backward pass as its gradient, as `QuantState` does."""


def _entries(layer, kind: type) -> list[str]:
  return sorted(k for k, v in vars(layer).items() if isinstance(v, kind))


def init_quant(layer, quant: QuantConfig | None, features: int, rngs: nnx.Rngs | None) -> None:
  """Gives `layer` its config, its state Variables and, for stochastic rounding, its keys."""
  layer.quant = quant
  if quant is None:
    return
  for name, value in gradient.init_state(quant, features).items():
    setattr(layer, STATE_PREFIX + name, QuantState(value))
  for name, value in gradient.init_statistics().items():
    setattr(layer, STATE_PREFIX + name, QuantStats(value))
  if quant.stochastic:
    if rngs is None:
      raise ValueError(
        f"quant config {quant.name!r} rounds stochastically: the layer needs rngs for its keys"
      )
    layer.quant_rngs = nnx.Rngs(quant=rngs.params())


def _inputs(layer):
  """The layer's state, statistics input and PRNG key, read from its Variables."""
  state, stats = (
    {name[len(STATE_PREFIX) :]: getattr(layer, name)[...] for name in _entries(layer, kind)}
    for kind in (QuantState, QuantStats)
  )
  first = next(iter(state.values()))
  if isinstance(first, jax.core.Tracer):
    seen = _TRACED.get(id(layer))
    if seen is not None and seen() is first:
      raise ValueError(
        f"quantized {type(layer).__name__} called twice in one traced computation: its "
        "quantization state would become the sum of two updates. Give each call site its own "
        "quantized layer (share parameters, not quantized layers)"
      )
    _TRACED[id(layer)] = weakref.ref(first)
  key = layer.quant_rngs.quant() if layer.quant.stochastic else None
  return state, stats, key


def _conv_hook(lhs, rhs, window_strides, padding, *, state, stats, key, cfg, **kwargs):
  kwargs.pop("precision", None)  # int8 products are exact
  kwargs.pop("out_sharding", None)
  if kwargs.pop("preferred_element_type", None) is not None:
    raise ValueError("quantized nnx.Conv: preferred_element_type is not supported")
  return conv_op.conv_general(
    lhs,
    rhs,
    state,
    key,
    cfg=cfg,
    window_strides=window_strides,
    padding=padding,
    stats=stats,
    **kwargs,
  )


def _dense_hook(lhs, rhs, dimension_numbers, *, state, stats, key, cfg, **kwargs):
  check_dense_call("nnx.Linear", lhs, rhs, dimension_numbers, kwargs.get("preferred_element_type"))
  return dense_op.dense(lhs, rhs, state, key, cfg=cfg, stats=stats)


def _call_with(layer, attr: str, hook, base_call, *args, **kwargs):
  """`base_call(layer, ...)` with `layer.<attr>` swapped for `hook` during the call only, so
  that nnx's graph never sees the traced state the hook closes over."""
  state, stats, key = _inputs(layer)
  original = vars(layer)[attr]
  vars(layer)[attr] = functools.partial(hook, state=state, stats=stats, key=key, cfg=layer.quant)
  try:
    return base_call(layer, *args, **kwargs)
  finally:
    vars(layer)[attr] = original


def _quantized_call(layer, base: type, attr: str, hook, inputs, out_sharding):
  """`base.__call__`, or with `quant` set, the same with the contraction swapped for `hook`."""
  if layer.quant is None:
    return base.__call__(layer, inputs, out_sharding=out_sharding)
  return _call_with(layer, attr, hook, base.__call__, inputs, out_sharding)


class QConv(nnx.Conv):
  """`nnx.Conv` with DAQ int8 training; `quant=None` is `nnx.Conv` itself.

  Args:
    quant: the quantization config, or None for the float layer.
    (the rest as `nnx.Conv`)
  """

  def __init__(self, *args, quant: QuantConfig | None = None, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    init_quant(self, quant, self.out_features, rngs)

  def __call__(self, inputs, out_sharding=None):
    return _quantized_call(self, nnx.Conv, "conv_general_dilated", _conv_hook, inputs, out_sharding)


class QDense(nnx.Linear):
  """`nnx.Linear` with DAQ int8 training; `quant=None` is `nnx.Linear` itself.

  Args:
    quant: the quantization config, or None for the float layer.
    (the rest as `nnx.Linear`)
  """

  def __init__(self, *args, quant: QuantConfig | None = None, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    init_quant(self, quant, self.out_features, rngs)

  def __call__(self, inputs, out_sharding=None):
    return _quantized_call(self, nnx.Linear, "dot_general", _dense_hook, inputs, out_sharding)
