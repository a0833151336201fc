"""QDense: `flax.linen.Dense` with DAQ int8 forward and backward passes."""

from __future__ import annotations

import flax.linen as nn

from daq_jax.nn.common import install_op
from daq_jax.nn.ops import QuantDotGeneralOp
from daq_jax.quant.config import QuantConfig


class QDense(nn.Dense):
  """A drop-in for `flax.linen.Dense` whose product runs in int8, forward and backward.

  It is `nn.Dense` itself (fields, defaults, parameter names `kernel` (in, out), `bias`), with
  its `dot_general_cls` hook set to `daq_jax.nn.ops.QuantDotGeneralOp`, which runs
  `daq_jax.quant.dense` and owns the layer's per-feature gradient state (the `quant_state`
  collection). With `quant=None` it is `nn.Dense`, bit for bit. Applied more than once in one
  call of the model (shared weights), its new state and statistics are the mean over its
  applications (docs/models.md).

  Attributes:
    quant: the quantization config, a method spec (`"daq_sr_rows"`, `"daq(impl=xla)"`), or
      None for the float layer (as is the spec `"fp32"`).
  """

  quant: QuantConfig | None = None

  def __post_init__(self):
    install_op(self, self.quant, "dot_general_cls", "dot_general", QuantDotGeneralOp)
    super().__post_init__()
