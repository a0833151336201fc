"""Which layer is quantized how: ordered rules on layer paths, the first full match deciding.

    rules = Rules.of([(r".*stem_conv", None), (r".*", quant.daq())])
    rules.decide("stage1/block0/conv1")        # (1, daq)

This is the one place that decides a layer's config. Every path that builds quantized layers
goes through it: `daq_jax.quantize` for flax.linen and flax.nnx models, and `train.py`, whose
zoo and user models are float models quantized by rules (`--config.quant.rules`, or the default
rules of `default_rules`). It knows nothing of Flax: a layer is a path ("a/b/c") and a kind
("conv" or "dense").

A layer that no rule matches stays float; a rule that matches no layer is an error that lists
the layers' paths, so a misspelt rule never passes silently.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from daq_jax.quant import config as quant_config
from daq_jax.quant.config import QuantConfig

Rule = tuple[str, QuantConfig | None]


@dataclasses.dataclass(frozen=True)
class Rules:
  """Ordered (compiled regex, config or None) pairs; build them with `Rules.of` or `parse`.

  Attributes:
    pairs: the rules in order; None keeps a layer float.
  """

  pairs: tuple[tuple[re.Pattern, QuantConfig | None], ...]

  @classmethod
  def of(cls, rules: Rules | Sequence[Rule] | Mapping[str, QuantConfig | None] | str) -> Rules:
    """`rules` checked and compiled: a `Rules`, (regex, config or None) pairs, a dict, or a
    string "regex:method;regex:method(options)" (`parse`).

    Raises:
      ValueError: naming a rule that is not a (regex, QuantConfig or None) pair, or whose
        regex does not compile.
    """
    if isinstance(rules, Rules):
      return rules
    if isinstance(rules, str):
      try:
        return parse(rules)
      except ValueError as e:
        raise ValueError(f"quantize: rules {rules!r}: {e}") from None
    pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    compiled = []
    for pair in pairs:
      if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
        raise ValueError(
          f"quantize: rule {pair!r} is not a (regex, QuantConfig or None) pair (or give the "
          "rules as one string, 'regex:method;regex:method')"
        )
      pattern, cfg = pair
      if cfg is not None and not isinstance(cfg, QuantConfig):
        raise ValueError(f"quantize: rule {pattern!r} maps to {cfg!r}, not a QuantConfig or None")
      try:
        compiled.append((re.compile(pattern), cfg))
      except re.error as e:
        raise ValueError(f"quantize: rule {pattern!r} is not a regex: {e}") from e
    return cls(tuple(compiled))

  def decide(self, path: str) -> tuple[int | None, QuantConfig | None]:
    """(index, config) of the first rule whose regex matches all of `path`; (None, None) when
    none does (the layer stays float)."""
    for i, (pattern, cfg) in enumerate(self.pairs):
      if pattern.fullmatch(path):
        return i, cfg
    return None, None

  def assign(self, paths: Iterable[str], *, what: str) -> dict[str, QuantConfig | None]:
    """{path: config or None} for the layers at `paths`; every rule must match one of them.

    Args:
      paths: the paths of every conv and dense layer of the model.
      what: the layers and model, for the error ("nn.Conv or nn.Dense of ResNet").

    Raises:
      ValueError: naming the rules that match no layer, with the layers' paths.
    """
    paths = list(paths)
    decided = {path: self.decide(path) for path in paths}
    used = {index for index, _ in decided.values()}
    unused = [p.pattern for i, (p, _) in enumerate(self.pairs) if i not in used]
    if unused:
      raise ValueError(
        f"quantize: rule(s) {unused} match no {what}; its layers are {sorted(paths)}"
      )
    return {path: cfg for path, (_, cfg) in decided.items()}

  def configs(self) -> list[QuantConfig]:
    """The configs the rules give, None left out."""
    return [cfg for _, cfg in self.pairs if cfg is not None]


def default_rules(
  layers: Sequence[tuple[str, str]],
  cfg: QuantConfig | None,
  *,
  first_conv: bool = False,
  last_dense: bool = False,
) -> Rules:
  """Every layer quantized with `cfg`, except the first conv and the last dense layer, which
  stay float unless `first_conv` / `last_dense` (the usual practice, the DAQ paper's too).

  Args:
    layers: (path, "conv" or "dense") of the model's layers in the order they are called.
    cfg: the config of the other layers; None keeps every layer float.
    first_conv: quantize the first conv called as well.
    last_dense: quantize the last dense layer called as well.
  """
  convs = [path for path, kind in layers if kind == "conv"]
  denses = [path for path, kind in layers if kind == "dense"]
  kept = []
  if convs and not first_conv:
    kept.append(convs[0])
  if denses and not last_dense:
    kept.append(denses[-1])
  return Rules.of([*((re.escape(path), None) for path in kept), (".*", cfg)])


# "regex:spec": the spec is a name with optional (options) at the end, so the regex may hold
# colons and parentheses of its own.
_RULE = re.compile(r"(?P<pattern>.*):\s*(?P<spec>[A-Za-z_]\w*\s*(?:\(.*\))?)\s*", re.S)


def parse(text: str, impl: str = "auto") -> Rules:
  """Rules from the command line: "regex:spec;regex:spec", a spec being a method with optional
  options, "daq(wgrad_rounding=stochastic)" (`quant.config.from_spec`); `fp32` keeps a layer
  float. Every config gets the contraction `impl`.

  Raises:
    ValueError: naming the rule that is malformed, has a bad regex, an unknown method or a
      bad option.
  """
  rules = []
  for item in filter(None, (part.strip() for part in text.split(";"))):
    match = _RULE.fullmatch(item)
    if not match or not match["pattern"]:
      raise ValueError(f"{item!r} is not 'regex:method' or 'regex:method(...)'")
    try:
      cfg = quant_config.from_spec(match["spec"])
    except ValueError as e:
      raise ValueError(f"{item!r}: {e}") from None
    rules.append((match["pattern"], None if cfg is None else cfg.replace(impl=impl)))
  return Rules.of(rules)
