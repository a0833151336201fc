"""A user's own flax.linen model in train.py: imported by its dotted path, quantized by rules.

`--config.model.name=my_pkg.models.MyNet` imports `MyNet` (a flax.linen Module class) and
builds it with `num_classes` and `dtype` where it has such fields. `--config.quant.rules`
quantizes it with `daq_jax.quantize`: "regex:method" pairs separated by ";" (the first regex
that matches a conv or dense layer's whole path decides; `fp32` keeps it float). Without
rules every `nn.Conv` and `nn.Dense` is quantized with `quant.method`, except the first conv
and the last dense called when `quant.quantize_first_conv` / `quantize_last_dense` are False.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from daq_jax.nn.rules import QuantizedModel, compile_rules, quantize
from daq_jax.quant import config as quant_config


def is_import_path(name: str) -> bool:
  return "." in name


def import_model_class(path: str) -> type[nn.Module]:
  """The linen Module class at `path` ("package.module.Class").

  Raises:
    ValueError: one line naming the path, when it does not import or is not a linen Module.
  """
  module_name, _, class_name = path.rpartition(".")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # any error of the user's module is reported the same way
    raise ValueError(
      f"config model.name={path!r}: module {module_name!r} does not import: {type(e).__name__}: {e}"
    ) from None
  cls = getattr(module, class_name, None)
  if cls is None:
    raise ValueError(f"config model.name={path!r}: module {module_name!r} has no {class_name!r}")
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(
      f"config model.name={path!r}: {class_name} is a {type(cls).__name__}, not a "
      "flax.linen Module class"
    )
  return cls


def parse_rules(text: str, impl: str) -> list[tuple[str, quant_config.QuantConfig | None]]:
  """ "regex:spec;regex:spec" -> [(regex, config or None)] (`fp32` is None); a spec is a
  method with optional options, "daq(wgrad_rounding=stochastic)" (`quant.config.parse_spec`).

  Raises:
    ValueError: naming the rule that is malformed, has a bad regex, an unknown method or a
      bad option.
  """
  rules = []
  for item in filter(None, (part.strip() for part in text.split(";"))):
    match = _RULE.fullmatch(item)
    if not match or not match["pattern"]:
      raise ValueError(f"config quant.rules: {item!r} is not 'regex:method' or 'regex:method(...)'")
    pattern, spec = match["pattern"], match["spec"]
    try:
      cfg = quant_config.from_spec(spec)
    except ValueError as e:
      raise ValueError(f"config quant.rules: {item!r}: {e}") from None
    rules.append((pattern, None if cfg is None else cfg.replace(impl=impl)))
  try:
    compile_rules(rules)  # a bad regex
  except ValueError as e:
    raise ValueError(f"config quant.rules: {e}") from None
  return rules


# "regex:spec": the spec is a name with optional (options) at the end, so the regex may hold
# colons and parentheses of its own.
_RULE = re.compile(r"(?P<pattern>.*):\s*(?P<spec>[A-Za-z_]\w*\s*(?:\(.*\))?)\s*", re.S)


def build(cls: type[nn.Module], num_classes: int, dtype) -> nn.Module:
  """`cls` with `num_classes` and `dtype` where it has those fields."""
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = {"num_classes": num_classes, "dtype": dtype}
  return cls(**{k: v for k, v in kwargs.items() if k in fields})


def default_rules(
  model: nn.Module,
  layer_cfg: quant_config.QuantConfig | None,
  input_shape,
  *,
  first_conv: bool,
  last_dense: bool,
) -> list[tuple[str, quant_config.QuantConfig | None]]:
  """Every conv and dense quantized with `layer_cfg`, the first conv and the last dense called
  kept float unless `first_conv` / `last_dense`."""
  probe = TrainingModel(quantize(model, [(".*", None)]))
  dummy = jnp.zeros((2, *input_shape), jnp.float32)
  called = probe.layers({"params": jax.random.key(0)}, dummy, train=False)
  convs = [p for p, (kind, _) in called.items() if kind is nn.Conv]
  denses = [p for p, (kind, _) in called.items() if kind is nn.Dense]
  rules = []
  if convs and not first_conv:
    rules.append((re.escape(convs[0]), None))
  if denses and not last_dense:
    rules.append((re.escape(denses[-1]), None))
  return [*rules, (".*", layer_cfg)]


def check_outputs(model, name: str, input_shape, num_classes: int) -> None:
  """Refuses, before anything compiles, a model whose logits are not (batch, num_classes).

  Raises:
    ValueError: naming the model and the shapes.
  """
  dummy = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)

  def logits(x):
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    out = model.apply(variables, x, train=False)
    return out[0] if isinstance(out, tuple) else out

  shape = tuple(jax.eval_shape(logits, dummy).shape)
  if shape != (2, num_classes):
    raise ValueError(
      f"config model.name={name!r}: the model maps images {(2, *input_shape)} to {shape}, "
      f"not to (2, {num_classes}) logits for the data's {num_classes} classes"
    )


class TrainingModel:
  """The `init`/`apply` the training steps call, for a `QuantizedModel` of a user's module:
  the `train` keyword is passed only where the module's `__call__` takes it."""

  def __init__(self, quantized: QuantizedModel):
    self.quantized = quantized
    self.takes_train = "train" in inspect.signature(quantized.model.__call__).parameters

  def _kwargs(self, kwargs):
    if not self.takes_train:
      kwargs.pop("train", None)
    return kwargs

  def init(self, *args, **kwargs):
    return self.quantized.init(*args, **self._kwargs(kwargs))

  def apply(self, variables, *args, **kwargs):
    return self.quantized.apply(variables, *args, **self._kwargs(kwargs))

  def layers(self, *args, **kwargs) -> dict:
    """`QuantizedModel.layers`, with the `train` keyword handled as `init` does."""
    return self.quantized.layers(*args, **self._kwargs(kwargs))
