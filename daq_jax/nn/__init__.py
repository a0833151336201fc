"""Flax layers: drop-ins for `flax.linen.Conv` and `flax.linen.Dense` with INT8 training, and
ReLUs whose backward pass keeps their masks as bits."""

from daq_jax.nn.activations import relu, relu6
from daq_jax.nn.conv import QConv
from daq_jax.nn.dense import QDense
from daq_jax.nn.ops import (
  RNG_STREAM,
  STATE_COLLECTION,
  STATS_COLLECTION,
  QuantConvOp,
  QuantDotGeneralOp,
)
from daq_jax.nn.quantized_model import QuantizedModel, quantize

__all__ = [
  "RNG_STREAM",
  "STATE_COLLECTION",
  "STATS_COLLECTION",
  "QConv",
  "QDense",
  "QuantConvOp",
  "QuantDotGeneralOp",
  "QuantizedModel",
  "quantize",
  "relu",
  "relu6",
]
