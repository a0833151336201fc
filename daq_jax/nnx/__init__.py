"""flax.nnx support: QConv/QDense drop-ins, `quantize(model, rules)` in place, and the
`value_and_grad` that hands the quantization state back."""

from daq_jax.nnx.layers import QConv, QDense, QuantState, QuantStats
from daq_jax.nnx.quantized_model import quantize, value_and_grad

__all__ = ["QConv", "QDense", "QuantState", "QuantStats", "quantize", "value_and_grad"]
