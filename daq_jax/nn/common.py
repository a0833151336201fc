"""What QConv and QDense share: installing the op module in the layer's Flax hook."""

from __future__ import annotations

import flax.linen as nn

from daq_jax.nn.ops import OpFactory, QuantOp
from daq_jax.quant.config import QuantConfig, as_config


def install_op(
  layer: nn.Module,
  quant: QuantConfig | None,
  hook: str,
  plain: str,
  op: type[QuantOp],
  strict: bool = True,
) -> None:
  """Sets `layer.<hook>` to make `op` with `quant` (None: the float contraction; a method spec:
  its config). A user's own
  contraction in `hook` or `plain` is refused, since the quantized op replaces it.

  QConv/QDense call it before Flax's own `__post_init__`; `daq_jax.nn.quantize` on the bound
  `nn.Conv`/`nn.Dense` of one model application, before its `__call__` runs.
  """
  quant = as_config(quant, type(layer).__name__)
  if isinstance(getattr(layer, "quant", None), str):  # QConv, QDense: the spec's config from now
    object.__setattr__(layer, "quant", quant)
  current = getattr(layer, hook)
  if quant is None:
    if isinstance(current, OpFactory):  # a clone(quant=None) of a quantized layer
      object.__setattr__(layer, hook, None)
    return
  if getattr(layer, plain) is not None or not (current is None or isinstance(current, OpFactory)):
    where = f" {'/'.join(layer.path)}" if getattr(layer, "scope", None) is not None else ""
    raise ValueError(
      f"{type(layer).__name__}{where} with quant set replaces the contraction: leave {plain} "
      f"and {hook} unset"
    )
  object.__setattr__(layer, hook, OpFactory(op, quant, strict))
