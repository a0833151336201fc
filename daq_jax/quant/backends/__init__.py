"""Implementations of the quantized ops' int8 products behind one interface, by name."""

from daq_jax.quant.backends.base import Backend
from daq_jax.quant.backends.registry import Plan, get, plan

__all__ = ["Backend", "Plan", "get", "plan"]
