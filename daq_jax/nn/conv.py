"""QConv: `flax.linen.Conv` with DAQ int8 forward and backward passes."""

from __future__ import annotations

import flax.linen as nn

from daq_jax.nn.common import install_op
from daq_jax.nn.ops import QuantConvOp
from daq_jax.quant.config import QuantConfig


class QConv(nn.Conv):
  """A drop-in for `flax.linen.Conv` whose convolution runs in int8, forward and backward.

  It is `nn.Conv` itself (fields, defaults, layouts, padding modes, masking, batch dims and
  parameter names `kernel`, `bias`), with its `conv_general_dilated_cls` hook set to
  `daq_jax.nn.ops.QuantConvOp`, which runs `daq_jax.quant.conv_general` and owns the
  layer's per-channel gradient state (the `quant_state` collection). With `quant=None` it is
  `nn.Conv`, bit for bit. `precision` is not used (int8 products are exact). Applied more
  than once in one call of the model (shared weights), its new state and statistics are the
  mean over its applications (docs/models.md).

  Attributes:
    quant: the quantization config, a method spec (`"daq_sr_rows"`, `"daq(impl=xla)"`), or
      None for the float layer (as is the spec `"fp32"`).
  """

  quant: QuantConfig | None = None

  def __post_init__(self):
    install_op(self, self.quant, "conv_general_dilated_cls", "conv_general_dilated", QuantConvOp)
    super().__post_init__()
