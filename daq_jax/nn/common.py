"""What QConv and QDense share: their quantization state variables and PRNG stream."""

from __future__ import annotations

import flax.linen as nn
import jax

from daq_jax.quant import gradient
from daq_jax.quant.config import QuantConfig

STATE_COLLECTION = "quant_state"
RNG_STREAM = "quant"


def quant_inputs(
  module: nn.Module, cfg: QuantConfig, features: int
) -> tuple[gradient.State, jax.Array | None]:
  """The layer's quantization state (created at init) and its PRNG key for stochastic rounding.

  The state lives in the `quant_state` collection, one variable per entry of
  `gradient.init_state`. The forward pass never changes it: the new state is the cotangent of
  these variables under `jax.grad` (see `daq_jax.quant.value_and_grad`).
  """
  init = gradient.init_state(cfg, features)
  if not module.is_initializing() and not module.has_variable(STATE_COLLECTION, next(iter(init))):
    raise ValueError(
      f"{type(module).__name__} {module.path}: quantized layers need the '{STATE_COLLECTION}' "
      "collection in the variables passed to apply (take it from model.init)"
    )
  state = {
    name: module.variable(STATE_COLLECTION, name, lambda v=value: v).value
    for name, value in init.items()
  }
  key = module.make_rng(RNG_STREAM) if cfg.stochastic and module.has_rng(RNG_STREAM) else None
  return state, key
