"""Flax layers: drop-ins for `flax.linen.Conv` and `flax.linen.Dense` with INT8 training."""

from daq_jax.nn.conv import QConv
from daq_jax.nn.dense import QDense
from daq_jax.nn.ops import RNG_STREAM, STATE_COLLECTION, QuantConvOp, QuantDotGeneralOp
from daq_jax.nn.rules import QuantizedModel, quantize

__all__ = [
  "RNG_STREAM",
  "STATE_COLLECTION",
  "QConv",
  "QDense",
  "QuantConvOp",
  "QuantDotGeneralOp",
  "QuantizedModel",
  "quantize",
]
