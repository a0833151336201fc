"""Quantization: numerics, the DAQ gradient quantizer and baselines, configs, the rules that
decide which layer gets which config, the implementations of the int8 products (`backends`),
and the quantized conv and dense ops with their custom VJPs."""

from daq_jax.quant import memory
from daq_jax.quant.config import (
  METHODS,
  QuantConfig,
  daq,
  daq_sr,
  daq_sr_rows,
  daq_sr_wgrad,
  daq_sr_wgrad_rows,
  fp32,
  from_spec,
  gvq,
  mcs,
  per_tensor,
  preset,
  ui8,
)
from daq_jax.quant.conv_op import conv_general
from daq_jax.quant.dense_op import dense
from daq_jax.quant.exact import exact
from daq_jax.quant.gradient import init_state, quantize_gradient
from daq_jax.quant.numerics import QTensor, dequantize, fake_quantize, quantize_tensor
from daq_jax.quant.rules import Rules, default_rules
from daq_jax.quant.state import split_grads, value_and_grad

__all__ = [
  "METHODS",
  "QTensor",
  "QuantConfig",
  "Rules",
  "conv_general",
  "daq",
  "daq_sr",
  "daq_sr_rows",
  "daq_sr_wgrad",
  "daq_sr_wgrad_rows",
  "default_rules",
  "dense",
  "dequantize",
  "exact",
  "fake_quantize",
  "fp32",
  "from_spec",
  "gvq",
  "init_state",
  "mcs",
  "memory",
  "per_tensor",
  "preset",
  "quantize_gradient",
  "quantize_tensor",
  "split_grads",
  "ui8",
  "value_and_grad",
]
