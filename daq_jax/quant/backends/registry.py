"""Implementations of the int8 products, by name.

`QuantConfig.impl` names one implementation for all three contractions, or three, one each
for the forward product, dgrad and wgrad ("xla,xla,pallas"). The Pallas implementation lives
in `daq_jax.pallas` (the only package that imports Pallas) and is imported the first time it
is asked for, so the quantized ops never load Pallas otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from daq_jax.quant.backends.base import Backend
from daq_jax.quant.config import IMPLS, QuantConfig

# name -> "module:class"; imported on first use.
_TABLE = {
  "xla": "daq_jax.quant.backends.xla:XlaBackend",
  "simulate": "daq_jax.quant.backends.simulate:SimulateBackend",
  "im2col": "daq_jax.quant.backends.im2col:XlaIm2colBackend",
  "pallas": "daq_jax.pallas.backend:PallasBackend",
}
assert tuple(_TABLE) == IMPLS, "quant.config.IMPLS lists the registered implementations"


@functools.cache
def get(name: str) -> Backend:
  """The implementation registered under `name`."""
  if name not in _TABLE:
    raise ValueError(f"unknown int8 implementation {name!r}; registered: {tuple(_TABLE)}")
  module, cls = _TABLE[name].split(":")
  backend = getattr(importlib.import_module(module), cls)()
  backend.name = name
  return backend


@dataclasses.dataclass(frozen=True)
class Plan:
  """The implementation of each contraction of one quantized op."""

  forward: Backend
  dgrad: Backend
  wgrad: Backend


def plan(cfg: QuantConfig) -> Plan:
  """The implementations `cfg.impl` names, one per contraction."""
  forward, dgrad, wgrad = cfg.impls
  return Plan(get(forward), get(dgrad), get(wgrad))
