"""flax.nnx layers with DAQ's int8 forward and backward passes: `QConv` and `QDense`, drop-ins
for `nnx.Conv` and `nnx.Linear`, and the quantized class of any contraction layer
(`quantized_class`: nnx.Conv, nnx.ConvTranspose, nnx.Linear, nnx.LinearGeneral, nnx.Einsum
and their subclasses), which `daq_jax.nnx.quantize` gives a model's layers in place.

A quantized layer is the nnx layer itself (its `kernel` and `bias` Params, its padding,
masking, batch dimensions and dtype promotion, a subclass's own methods) with the contraction
it calls swapped, for the length of one call, for the quantized op: its hook attribute
(`conv_general_dilated`, `dot_general`, `einsum_op`) where it has one, else the JAX function
it calls (`lax.conv_transpose`). Its gradient state is a `QuantState` Variable per entry
(`quant_wgrad_clip`, `quant_dgrad_clip`, ...): the forward pass reads it, and differentiating
with respect to `QuantState` as well as `Param` (`daq_jax.nnx.value_and_grad`) gives its next
value as the "gradient". What the quantizer saw in the step (`gradient.STATISTICS`) comes out
the same way, in `QuantStats` Variables of its own (`quant_inverted_t`, ...), kept apart from
the state. Stochastic rounding draws keys from the layer's own `quant_rngs` stream. A layer
called several times in one traced computation counts its calls (`quant.state.Site`): its new
state and statistics are the mean over them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref

from flax import nnx
from jax import lax

from daq_jax.quant import conv_op, general, gradient
from daq_jax.quant.config import QuantConfig, as_config
from daq_jax.quant.state import Site

STATE_PREFIX = "quant_"

# id(layer) -> (the traced state value of its first call in a trace, the trace's site).
_SITES: dict[int, tuple[weakref.ref, Site]] = {}


class QuantState(nnx.Variable):
  """A quantized layer's gradient state (MCS clip values, ...): not a parameter. Its next value
  comes out of the backward pass as its gradient; the optimizer never sees it."""


class QuantStats(nnx.Variable):
  """What a quantized layer's gradient quantizer saw in the last step, for logging: never read
  back. It comes out of the backward pass as its gradient, as `QuantState` does."""


def _entries(layer, kind: type) -> list[str]:
  return sorted(k for k, v in vars(layer).items() if isinstance(v, kind))


def init_quant(
  layer, quant: QuantConfig | str | None, features: int, rngs: nnx.Rngs | None
) -> None:
  """Gives `layer` its config (`quant`, or the method spec it names), its state Variables and,
  for stochastic rounding, its keys."""
  layer.quant = quant = as_config(quant, type(layer).__name__)
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
  """The layer's state, statistics input, PRNG key and site, read from its Variables (and
  counting this call)."""
  state, stats = (
    {name[len(STATE_PREFIX) :]: getattr(layer, name)[...] for name in _entries(layer, kind)}
    for kind in (QuantState, QuantStats)
  )
  first = next(iter(state.values()))
  seen = _SITES.get(id(layer))
  if seen is None or seen[0]() is not first:  # the first call in this computation
    seen = (weakref.ref(first), Site(getattr(layer, "quant_path", type(layer).__name__)))
    _SITES[id(layer)] = seen
  key = layer.quant_rngs.quant() if layer.quant.stochastic else None
  return state, stats, key, seen[1].applied()


def _kwargs(kwargs: dict) -> dict:
  """The keyword arguments of a hook call the quantized ops take (precision and sharding
  are not theirs to choose)."""
  return {k: v for k, v in kwargs.items() if k not in ("precision", "out_sharding")}


def _conv(lhs, rhs, window_strides, padding, *, inputs, cfg, **kwargs):
  state, stats, key, site = inputs
  return conv_op.conv_general(
    lhs,
    rhs,
    state,
    key,
    cfg=cfg,
    window_strides=window_strides,
    padding=padding,
    stats=stats,
    site=site,
    **_kwargs(kwargs),
  )


def _conv_transpose(lhs, rhs, strides, padding, *, inputs, cfg, **kwargs):
  state, stats, key, site = inputs
  kwargs = _kwargs(kwargs)
  kwargs.pop("preferred_element_type", None)  # refused before the call when set
  return general.conv_transpose(
    lhs,
    rhs,
    state,
    key,
    cfg=cfg,
    strides=strides,
    padding=padding,
    stats=stats,
    site=site,
    **kwargs,
  )


def _dot_general(lhs, rhs, dimension_numbers, *, inputs, cfg, **kwargs):
  state, stats, key, site = inputs
  return general.dot_general(
    lhs, rhs, dimension_numbers, state, key, cfg=cfg, stats=stats, site=site
  )


def _einsum(equation, lhs, rhs, *, inputs, cfg, **kwargs):
  state, stats, key, site = inputs
  return general.einsum(equation, lhs, rhs, state, key, cfg=cfg, stats=stats, site=site)


@dataclasses.dataclass(frozen=True)
class Layer:
  """How one nnx contraction layer type is quantized.

  Attributes:
    cls: the nnx class (its subclasses are matched too).
    hook: the attribute holding the function it calls, or None.
    function: (module, name) of the JAX function it calls where it has no hook.
    op: the quantized function that takes the call's place.
  """

  cls: type
  hook: str | None
  function: tuple[object, str] | None
  op: object


LAYERS = (
  Layer(nnx.Conv, "conv_general_dilated", None, _conv),
  Layer(nnx.ConvTranspose, None, (lax, "conv_transpose"), _conv_transpose),
  Layer(nnx.Linear, "dot_general", None, _dot_general),
  Layer(nnx.LinearGeneral, "dot_general", None, _dot_general),
  Layer(nnx.Einsum, "einsum_op", None, _einsum),
)


def kind_of(layer) -> Layer | None:
  """The `Layer` entry of an nnx layer (its first base that `LAYERS` lists), or None."""
  return next((entry for entry in LAYERS if isinstance(layer, entry.cls)), None)


def features(layer) -> int:
  """The width of a layer's per-output-channel state: its kernel's non-contracted elements."""
  kernel_shape = layer.kernel.shape
  if isinstance(layer, nnx.Einsum):
    return general.einsum_kernel_features(layer.einsum_str, kernel_shape)
  if isinstance(layer, nnx.LinearGeneral):
    return math.prod(layer.out_features)
  return layer.out_features


def unsupported(layer) -> str | None:
  """Why an nnx layer cannot be quantized (None when it can)."""
  if getattr(layer, "preferred_element_type", None) is not None:
    return "it sets preferred_element_type"
  if isinstance(layer, nnx.LinearGeneral):
    if layer.batch_axis:
      return (
        f"its kernel has batch axes {dict(layer.batch_axis)}: a batched GEMM, which the "
        "quantized dense op does not implement"
      )
    if layer.dot_general_cls is not None:
      return "it sets its own dot_general_cls"
  if isinstance(layer, nnx.Einsum):
    return general.unsupported_einsum_kernel(layer.einsum_str, layer.kernel.shape)
  return None


def _call_quantized(layer, base_call, *args, **kwargs):
  """`base_call(layer, ...)` with the layer's contraction swapped for the quantized op while it
  runs, so that nnx's graph never sees the traced state the op closes over."""
  entry = kind_of(layer)
  op = functools.partial(entry.op, inputs=_inputs(layer), cfg=layer.quant)
  if entry.hook:
    original = vars(layer)[entry.hook]
    vars(layer)[entry.hook] = op
    try:
      return base_call(layer, *args, **kwargs)
    finally:
      vars(layer)[entry.hook] = original
  module, name = entry.function
  original = getattr(module, name)
  setattr(module, name, op)
  try:
    return base_call(layer, *args, **kwargs)
  finally:
    setattr(module, name, original)


@functools.cache
def quantized_class(cls: type) -> type:
  """The quantized subclass of an nnx contraction layer class: `cls` itself, its `__call__`
  running the quantized op where `quant` is set."""
  base_call = cls.__call__

  def __call__(self, *args, **kwargs):
    if getattr(self, "quant", None) is None:
      return base_call(self, *args, **kwargs)
    return _call_quantized(self, base_call, *args, **kwargs)

  __call__.__doc__ = base_call.__doc__
  return type(f"Quantized{cls.__name__}", (cls,), {"__call__": __call__, "__module__": __name__})


class QConv(nnx.Conv):
  """`nnx.Conv` with DAQ int8 training; `quant=None` is `nnx.Conv` itself.

  Args:
    quant: the quantization config, a method spec (`"daq_sr_rows"`), or None for the float
      layer.
    (the rest as `nnx.Conv`)
  """

  def __init__(self, *args, quant: QuantConfig | str | None = None, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    init_quant(self, quant, self.out_features, rngs)

  def __call__(self, inputs, out_sharding=None):
    if self.quant is None:
      return nnx.Conv.__call__(self, inputs, out_sharding=out_sharding)
    return _call_quantized(self, nnx.Conv.__call__, inputs, out_sharding=out_sharding)


class QDense(nnx.Linear):
  """`nnx.Linear` with DAQ int8 training; `quant=None` is `nnx.Linear` itself.

  Args:
    quant: the quantization config, a method spec (`"daq_sr_rows"`), or None for the float
      layer.
    (the rest as `nnx.Linear`)
  """

  def __init__(self, *args, quant: QuantConfig | str | None = None, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    init_quant(self, quant, self.out_features, rngs)

  def __call__(self, inputs, out_sharding=None):
    if self.quant is None:
      return nnx.Linear.__call__(self, inputs, out_sharding=out_sharding)
    return _call_quantized(self, nnx.Linear.__call__, inputs, out_sharding=out_sharding)
