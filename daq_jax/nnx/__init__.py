"""flax.nnx support: QConv/QDense drop-ins, `quantize(model, rules)` in place, and the
`value_and_grad` that hands the quantization state back."""

from daq_jax.nnx.layers import QConv, QDense, QuantState
from daq_jax.nnx.rules import quantize, value_and_grad

__all__ = ["QConv", "QDense", "QuantState", "quantize", "value_and_grad"]
