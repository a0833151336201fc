"""Implementations of the quantized ops' int8 products behind one interface, by name."""

from daq_jax.quant.backends.base import Backend
from daq_jax.quant.backends.platform import target_platform
from daq_jax.quant.backends.registry import Plan, choose, describe, get, plan

__all__ = ["Backend", "Plan", "choose", "describe", "get", "plan", "target_platform"]
