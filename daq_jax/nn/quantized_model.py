"""Quantizing an unmodified flax.linen model by rules on its module paths.

    qmodel = daq_jax.quantize(model, [(r".*stem.*", None), (r".*", quant.daq())])
    variables = qmodel.init(key, x)               # params as model.init's, plus quant_state
    loss, grads, state = quant.value_and_grad(loss_fn)(...)   # with qmodel.apply inside

Every contraction layer the model calls (`LAYERS`: nn.Conv, nn.ConvTranspose, nn.Dense,
nn.DenseGeneral, nn.Einsum and their subclasses) is matched against the rules in order: the
first regex that matches its path ("block1/conv2", the path of `variables["params"]`) in
full gives its config, and None or no match keeps it float. A matched layer is the model's
own module whose contraction runs daq_jax's op module (`daq_jax.nn.ops`) for this
application only: through Flax's hook where the layer has one (`conv_general_dilated_cls`,
`dot_general_cls`, exactly as `QConv`/`QDense` set it), else with the JAX function it calls
(`lax.conv_transpose`, `jnp.einsum`) replaced while that one layer runs. So the parameter
tree does not change (a float checkpoint loads), the layer's state lives in
`quant_state/<path>/quant` and its statistics in `quant_stats/<path>/quant`. Which config a
layer gets is decided by `daq_jax.quant.rules`. The interception is Flax's
`nn.intercept_methods`, active while `init` and `apply` run (and so while they are traced
under jit); the replaced functions are replaced for the whole process while the layer runs,
so do not trace two models on two threads at once.

A layer matched by a config that the quantized ops cannot compute (nn.ConvLocal's kernel per
output position; a DenseGeneral kernel with batch axes; ...) is an error naming it and the
reason (`strict=True`, the default), or stays float with one logged line (`strict=False`).
Attention's products of two activations (`nn.dot_product_attention`'s einsums) are not
layers: they stay float by design, and the int8 report (`quant.lowering.layer_report`) lists
them as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.nn import ops
from daq_jax.nn.common import install_op
from daq_jax.nn.conv import QConv
from daq_jax.nn.dense import QDense
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.rules import Rules


@dataclasses.dataclass(frozen=True)
class Layer:
  """How one Flax contraction layer type is quantized.

  Attributes:
    cls: the flax.linen class (its subclasses are matched too).
    kind: "conv" or "dense", for the default rules (first conv, last dense).
    op: the op module its contraction runs, None when it is refused.
    hook: (hook field, plain-function field) where Flax has a hook for the op.
    function: (module, name) of the JAX function to replace while the layer runs, where not.
    refused: why the layer cannot be quantized.
  """

  cls: type
  kind: str
  op: type | None = None
  hook: tuple[str, str] | None = None
  function: tuple[object, str] | None = None
  refused: str | None = None


LAYERS = (
  Layer(
    nn.Conv, "conv", ops.QuantConvOp, hook=("conv_general_dilated_cls", "conv_general_dilated")
  ),
  Layer(nn.ConvTranspose, "conv", ops.QuantConvTransposeOp, function=(lax, "conv_transpose")),
  Layer(
    nn.ConvLocal,
    "conv",
    refused="nn.ConvLocal has a kernel per output position: its products are batched GEMMs "
    "that the quantized ops do not implement",
  ),
  Layer(nn.Dense, "dense", ops.QuantDotGeneralOp, hook=("dot_general_cls", "dot_general")),
  Layer(nn.DenseGeneral, "dense", ops.QuantDotGeneralOp, hook=("dot_general_cls", "dot_general")),
  Layer(nn.Einsum, "dense", ops.QuantEinsumOp, function=(jnp, "einsum")),
)


def _layer(module: nn.Module) -> Layer | None:
  if isinstance(module, (QConv, QDense)):  # quantized (or not) by their own `quant`
    return None
  return next((layer for layer in LAYERS if isinstance(module, layer.cls)), None)


@contextlib.contextmanager
def _replaced(function: tuple[object, str], replacement):
  """`module.name` replaced by `replacement` while the block runs."""
  module, name = function
  original = getattr(module, name)
  setattr(module, name, replacement)
  try:
    yield
  finally:
    setattr(module, name, original)


class QuantizedModel:
  """A flax.linen model whose convs and dense layers run DAQ where the rules say so.

  `init` and `apply` take and return what the model's do; every other attribute is the
  model's. Build it with `daq_jax.quantize`.

  Attributes:
    model: the unmodified model.
    rules: the `daq_jax.quant.rules.Rules` that decide each layer's config.
  """

  def __init__(self, model: nn.Module, rules, *, strict: bool = True):
    if not isinstance(model, nn.Module):
      raise TypeError(f"quantize: {type(model).__name__} is not a flax.linen Module")
    self.model = model
    self.rules = Rules.of(rules)
    self.strict = strict

  def _interceptor(self, seen: dict[str, str]):
    def intercept(next_fun, args, kwargs, context):
      layer = _layer(context.module) if context.method_name == "__call__" else None
      if layer is None:
        return next_fun(*args, **kwargs)
      module = context.module
      path = "/".join(module.path)
      seen[path] = layer.kind
      cfg = self.rules.decide(path)[1]
      if cfg is None:
        if layer.hook:
          install_op(module, None, *layer.hook, layer.op)
        return next_fun(*args, **kwargs)
      if layer.refused:
        if self.strict:
          raise ValueError(
            f"quantized layer {path}: {layer.refused} (quantize(..., strict=False) keeps it "
            "float, or give it a None rule)"
          )
        ops.log_float(path, layer.refused)
        return next_fun(*args, **kwargs)
      factory = ops.OpFactory(layer.op, cfg, self.strict)
      if layer.hook:
        install_op(module, cfg, *layer.hook, layer.op, strict=self.strict)
        return next_fun(*args, **kwargs)
      with _replaced(layer.function, lambda *a, **kw: factory()(*a, **kw)):
        return next_fun(*args, **kwargs)

    return intercept

  def called(self, fn) -> tuple[dict[str, str], Any]:
    """({path: "conv" or "dense"} of every contraction layer (`LAYERS`) the model calls while
    `fn()` runs, in call order; `fn`'s result as shapes), `fn` traced abstractly: nothing is
    computed."""
    seen: dict[str, str] = {}
    with nn.intercept_methods(self._interceptor(seen)):
      out = jax.eval_shape(fn)
    return seen, out

  def layers(self, *args, **kwargs) -> dict[str, tuple[str, QuantConfig | None]]:
    """{path: ("conv" or "dense", config or None)} of every contraction layer that
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
    self.rules.assign(seen, what=f"contraction layer of {type(self.model).__name__}")
    return variables

  def apply(self, variables, *args, **kwargs):
    """`model.apply`, with the matched layers quantized."""
    with nn.intercept_methods(self._interceptor({})):
      return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name in ("model", "rules", "strict"):  # not set yet (copy, unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.model, name)


def quantize(model: nn.Module, rules, *, strict: bool = True) -> QuantizedModel:
  """The linen `model` with DAQ in every contraction layer whose path a rule matches.

  Args:
    model: any flax.linen Module, unmodified.
    rules: (regex, QuantConfig or None) pairs, a dict of them, a `daq_jax.quant.rules.
      Rules`, or a string "regex:method;regex:method(options)" (`quant.rules.parse`), in
      order; the first regex that matches a layer's whole path ("stage1/block0/conv1")
      decides, None (`fp32`) keeps it float, and layers no rule matches stay float.
    strict: a matched layer that cannot be quantized is an error naming it (True), or stays
      float with one logged line (False).

  Returns:
    A `QuantizedModel` with the model's `init` and `apply`.
  """
  return QuantizedModel(model, rules, strict=strict)
