"""Quantizing a flax.nnx model in place by rules on its module paths, and the training-step
helper that hands the quantization state back.

    daq_jax.nnx.quantize(model, [(r"stem", None), (r".*", quant.daq())])
    loss, grads, new_state = daq_jax.nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)             # Params only (the state is written back)

Every contraction layer of the model (nnx.Conv, nnx.ConvTranspose, nnx.Linear,
nnx.LinearGeneral, nnx.Einsum, and subclasses) is matched against the rules in order: the
first regex that matches its path ("blocks/0/conv1", as `nnx.iter_graph` spells it) in full
gives its config; None or no match keeps it float. A matched layer becomes, in place, its
class's quantized subclass (`layers.quantized_class`): the same object with the same Params
(a float checkpoint loads) and its own methods, plus its `QuantState` Variables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flax import nnx

from daq_jax.nnx import layers as qlayers
from daq_jax.nnx.layers import QuantState, QuantStats, init_quant
from daq_jax.quant.rules import Rules

log = logging.getLogger("daq_jax.quant")


def quantize(
  model: nnx.Module, rules, *, rngs: nnx.Rngs | None = None, strict: bool = True
) -> nnx.Module:
  """Quantizes, in place, every contraction layer of `model` (`layers.LAYERS`: nnx.Conv,
  nnx.ConvTranspose, nnx.Linear, nnx.LinearGeneral, nnx.Einsum and their subclasses) whose
  path a rule matches.

  Args:
    model: any flax.nnx Module.
    rules: (regex, QuantConfig or None) pairs, a dict of them, a `daq_jax.quant.rules.
      Rules`, or a string "regex:method;..." (`quant.rules.parse`); the first full match wins.
    rngs: keys for configs that round stochastically.
    strict: a matched layer that cannot be quantized is an error naming it (True), or stays
      float with one logged line (False).

  Returns:
    `model` itself.

  Raises:
    ValueError: naming a rule that matches no layer (with the layers' paths), or (strict) a
      layer that cannot be quantized and why.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"quantize: {type(model).__name__} is not a flax.nnx Module")
  layers = {
    "/".join(str(p) for p in path): node
    for path, node in nnx.iter_graph(model)
    if qlayers.kind_of(node) is not None and not isinstance(node, (qlayers.QConv, qlayers.QDense))
  }
  assigned = Rules.of(rules).assign(layers, what=f"contraction layer of {type(model).__name__}")
  for path, layer in layers.items():
    cfg = assigned[path]
    if cfg is None:
      continue
    reason = qlayers.unsupported(layer)
    if reason:
      if strict:
        raise ValueError(
          f"quantize: layer {path} ({type(layer).__name__}) cannot be quantized: {reason} "
          "(strict=False keeps it float, or give it a None rule)"
        )
      log.warning("quantized layer %s stays float (strict=False): %s", path, reason)
      continue
    layer.__class__ = qlayers.quantized_class(type(layer))
    layer.quant_path = path
    init_quant(layer, cfg, qlayers.features(layer), rngs)
  return model


def value_and_grad(
  loss_fn: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, nnx.State, nnx.State]]:
  """Like `nnx.value_and_grad(loss_fn)` for `loss_fn(model, *args)`, differentiating with
  respect to the Params, the `QuantState` and the `QuantStats` of the model at once.

  Returns:
    A function of `loss_fn`'s arguments returning `(value, param_grads, new_quant_state)`;
    `new_quant_state` is not a gradient: it is written back into the model before the
    function returns (its `QuantState`, for the next step, and its `QuantStats`, what the
    quantizer saw in this one), so it cannot be dropped; it is returned too, for logging.
  """
  quant = nnx.Any(QuantState, QuantStats)
  inner = nnx.value_and_grad(
    loss_fn, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, quant)), has_aux=has_aux
  )

  def wrapped(model, *args, **kwargs):
    value, grads = inner(model, *args, **kwargs)
    param_grads, new_state = nnx.split_state(grads, nnx.Param, quant)
    nnx.update(model, new_state)
    return value, param_grads, new_state

  return wrapped
