"""Quantizing an unmodified flax.linen model by rules on its module paths.

    qmodel = daq_jax.quantize(model, [(r".*stem.*", None), (r".*", quant.daq())])
    variables = qmodel.init(key, x)               # params as model.init's, plus quant_state
    loss, grads, state = quant.value_and_grad(loss_fn)(...)   # with qmodel.apply inside

Every `nn.Conv` and `nn.Dense` the model calls is matched against the rules in order: the
first regex that matches its path ("block1/conv2", the path of `variables["params"]`) in
full gives its config, and None or no match keeps it float. A matched layer is the model's
own module with Flax's contraction hook (`conv_general_dilated_cls`, `dot_general_cls`) set
to daq_jax's op module for this application only, exactly as `QConv`/`QDense` set it: so
the parameter tree does not change (a float checkpoint loads), the layer's state lives in
`quant_state/<path>/quant` and its statistics in `quant_stats/<path>/quant`. Which config a
layer gets is decided by `daq_jax.quant.rules`. The interception is Flax's
`nn.intercept_methods`, active while `init` and `apply` run (and so while they are traced
under jit).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from daq_jax.nn.common import install_op
from daq_jax.nn.conv import QConv
from daq_jax.nn.dense import QDense
from daq_jax.nn.ops import QuantConvOp, QuantDotGeneralOp
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.rules import Rules

# The layers rules reach: their kind, their hook, the plain function the hook replaces, the op.
_HOOKS = (
  (nn.Conv, "conv", "conv_general_dilated_cls", "conv_general_dilated", QuantConvOp),
  (nn.Dense, "dense", "dot_general_cls", "dot_general", QuantDotGeneralOp),
)


def _hook(module: nn.Module):
  if isinstance(module, (QConv, QDense)):  # quantized (or not) by their own `quant`
    return None
  return next((h for h in _HOOKS if isinstance(module, h[0])), None)


class QuantizedModel:
  """A flax.linen model whose convs and dense layers run DAQ where the rules say so.

  `init` and `apply` take and return what the model's do; every other attribute is the
  model's. Build it with `daq_jax.quantize`.

  Attributes:
    model: the unmodified model.
    rules: the `daq_jax.quant.rules.Rules` that decide each layer's config.
  """

  def __init__(self, model: nn.Module, rules):
    if not isinstance(model, nn.Module):
      raise TypeError(f"quantize: {type(model).__name__} is not a flax.linen Module")
    self.model = model
    self.rules = Rules.of(rules)

  def _interceptor(self, seen: dict[str, str]):
    def intercept(next_fun, args, kwargs, context):
      hook = _hook(context.module) if context.method_name == "__call__" else None
      if hook is not None:
        module = context.module
        path = "/".join(module.path)
        seen[path] = hook[1]
        install_op(module, self.rules.decide(path)[1], *hook[2:])
      return next_fun(*args, **kwargs)

    return intercept

  def called(self, fn) -> tuple[dict[str, str], Any]:
    """({path: "conv" or "dense"} of every nn.Conv and nn.Dense the model calls while `fn()`
    runs, in call order; `fn`'s result as shapes), `fn` traced abstractly: nothing is
    computed."""
    seen: dict[str, str] = {}
    with nn.intercept_methods(self._interceptor(seen)):
      out = jax.eval_shape(fn)
    return seen, out

  def layers(self, *args, **kwargs) -> dict[str, tuple[str, QuantConfig | None]]:
    """{path: ("conv" or "dense", config or None)} of every nn.Conv and nn.Dense that
    `init(*args, **kwargs)` calls, in call order (traced abstractly: nothing is computed)."""
    seen, _ = self.called(lambda: self.model.init(*args, **kwargs))
    return {path: (kind, self.rules.decide(path)[1]) for path, kind in seen.items()}

  def init(self, *args, **kwargs):
    """`model.init`; every rule must match at least one conv or dense layer.

    Raises:
      ValueError: naming a rule that matches no layer, with the layers' paths.
    """
    seen: dict[str, str] = {}
    with nn.intercept_methods(self._interceptor(seen)):
      variables = self.model.init(*args, **kwargs)
    self.rules.assign(seen, what=f"nn.Conv or nn.Dense of {type(self.model).__name__}")
    return variables

  def apply(self, variables, *args, **kwargs):
    """`model.apply`, with the matched layers quantized."""
    with nn.intercept_methods(self._interceptor({})):
      return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name in ("model", "rules"):  # not set yet (copy, unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.model, name)


def quantize(model: nn.Module, rules) -> QuantizedModel:
  """The linen `model` with DAQ in every `nn.Conv`/`nn.Dense` whose path a rule matches.

  Args:
    model: any flax.linen Module, unmodified.
    rules: (regex, QuantConfig or None) pairs, a dict of them, or a
      `daq_jax.quant.rules.Rules`, in order; the first regex that matches a layer's whole
      path ("stage1/block0/conv1") decides, None keeps it float, and layers no rule matches
      stay float.

  Returns:
    A `QuantizedModel` with the model's `init` and `apply`.
  """
  return QuantizedModel(model, rules)
