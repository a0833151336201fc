"""Quantizing a flax.nnx model in place by rules on its module paths, and the training-step
helper that hands the quantization state back.

    daq_jax.nnx.quantize(model, [(r"stem", None), (r".*", quant.daq())])
    loss, grads, new_state = daq_jax.nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)             # Params only
    nnx.update(model, new_state)               # the next step's quantization state

Every `nnx.Conv` and `nnx.Linear` of the model is matched against the rules in order: the
first regex that matches its path ("blocks/0/conv1", as `nnx.iter_graph` spells it) in full
gives its config; None or no match keeps it float. A matched layer becomes, in place, the
`daq_jax.nnx.QConv`/`QDense` it would have been built as: the same object with the same
Params (a float checkpoint loads), plus its `QuantState` Variables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from daq_jax.nnx.layers import QConv, QDense, QuantState, QuantStats, init_quant
from daq_jax.quant.rules import Rules

_SWAPS = ((nnx.Conv, QConv), (nnx.Linear, QDense))


def quantize(model: nnx.Module, rules, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Quantizes, in place, every `nnx.Conv`/`nnx.Linear` of `model` whose path a rule matches.

  Args:
    model: any flax.nnx Module.
    rules: (regex, QuantConfig or None) pairs, a dict of them, or a
      `daq_jax.quant.rules.Rules`; the first full match wins.
    rngs: keys for configs that round stochastically (ui8).

  Returns:
    `model` itself.

  Raises:
    ValueError: naming a rule that matches no layer (with the layers' paths), or a layer that
      cannot be quantized.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"quantize: {type(model).__name__} is not a flax.nnx Module")
  layers = {
    "/".join(str(p) for p in path): node
    for path, node in nnx.iter_graph(model)
    if type(node) in dict(_SWAPS)
  }
  assigned = Rules.of(rules).assign(
    layers, what=f"nnx.Conv or nnx.Linear of {type(model).__name__}"
  )
  for path, layer in layers.items():
    cfg = assigned[path]
    if cfg is None:
      continue
    if getattr(layer, "preferred_element_type", None) is not None:
      raise ValueError(f"quantize: layer {path} sets preferred_element_type; cannot quantize")
    layer.__class__ = dict(_SWAPS)[type(layer)]
    init_quant(layer, cfg, layer.out_features, rngs)
  return model


def value_and_grad(
  loss_fn: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, nnx.State, nnx.State]]:
  """Like `nnx.value_and_grad(loss_fn)` for `loss_fn(model, *args)`, differentiating with
  respect to the Params, the `QuantState` and the `QuantStats` of the model at once.

  Returns:
    A function of `loss_fn`'s arguments returning `(value, param_grads, new_quant_state)`;
    `new_quant_state` is not a gradient: `nnx.update(model, new_quant_state)` carries it to
    the next step (the `QuantState`) and keeps what the quantizer saw in this one (the
    `QuantStats`).
  """
  quant = nnx.Any(QuantState, QuantStats)
  inner = nnx.value_and_grad(
    loss_fn, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, quant)), has_aux=has_aux
  )

  def wrapped(model, *args, **kwargs):
    value, grads = inner(model, *args, **kwargs)
    param_grads, new_state = nnx.split_state(grads, nnx.Param, quant)
    return value, param_grads, new_state

  return wrapped
