"""Implementations of the int8 products, by name, and the plan of one quantized op.

`QuantConfig.impl` names one implementation for all three contractions, or three, one each
for the forward product, dgrad and wgrad ("xla,xla,pallas"); "auto" picks one per contraction
from `auto.TABLE` for the platform being traced for. The Pallas implementation lives in
`daq_jax.pallas` (the only package that imports Pallas) and is imported the first time it is
asked for, so the quantized ops never load Pallas otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from daq_jax.quant import geometry
from daq_jax.quant.backends import auto
from daq_jax.quant.backends.base import Backend
from daq_jax.quant.backends.platform import target_platform
from daq_jax.quant.config import AUTO, CONTRACTIONS, IMPLS, QuantConfig, contraction_impls
from daq_jax.quant.geometry import ConvSpec

# name -> "module:class"; imported on first use.
_TABLE = {
  "xla": "daq_jax.quant.backends.xla:XlaBackend",
  "simulate": "daq_jax.quant.backends.simulate:SimulateBackend",
  "im2col": "daq_jax.quant.backends.im2col:XlaIm2colBackend",
  "pallas": "daq_jax.pallas.backend:PallasBackend",
  "implicit": "daq_jax.pallas.backend:ImplicitBackend",
  "implicit_fused": "daq_jax.pallas.backend:FusedImplicitBackend",
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
  dgrad_rows: bool = False  # a conv's dgrad with per-row g scales (`conv_dgrad_rows`)

  @property
  def names(self) -> tuple[str, str, str]:
    return (self.forward.name, self.dgrad.name, self.wgrad.name)


ROWS_UNSUPPORTED = (
  "per-row g scales (dgrad_granularity='per_row') do not factor out of an int8 convolution; "
  "they need a GEMM + col2im dgrad (impl im2col or pallas)"
)


def _unsupported(backend: Backend, contraction, spec, platform, rows: bool, shapes=None):
  if rows and contraction == "dgrad" and not backend.dgrad_rows:
    return ROWS_UNSUPPORTED
  return backend.unsupported(contraction, spec, platform, shapes)


def choose(
  name: str,
  contraction: str,
  spec: ConvSpec | None,
  platform: str,
  rows: bool = False,
  shapes=None,
  preferred: tuple[str, ...] = (),
) -> Backend:
  """The implementation of one contraction: `name`, or auto's pick when `name` is "auto".

  Args:
    name: an implementation name or "auto".
    contraction: "forward", "dgrad" or "wgrad".
    spec: the conv's geometry, or None for a dense layer.
    platform: what the program is traced for ("cpu", "cuda", ...).
    rows: whether a conv's dgrad has per-row g scales (`Backend.dgrad_rows` needed).
    shapes: the conv's (lhs, rhs) shapes, where known.
    preferred: implementations auto tries before its table's (the cost model's pick).

  Raises:
    ValueError: when the named implementation, or every one auto may use, cannot compute it.
  """
  if name != AUTO:
    backend = get(name)
    reason = _unsupported(backend, contraction, spec, platform, rows, shapes)
    if reason:
      raise ValueError(
        f"quant config impl={name!r} cannot compute the {contraction} product of this layer on "
        f"{platform}: {reason}; impl='auto' picks one that can"
      )
    return backend
  skipped = []
  table = auto.candidates(platform, contraction, spec)
  for candidate in dict.fromkeys([*preferred, *table]):
    backend = get(candidate)
    reason = _unsupported(backend, contraction, spec, platform, rows, shapes)
    if reason is None:
      for skipped_name, why in skipped:
        # per-row scales skip every int8 conv: the config's own plan, said at info level
        expected = why == ROWS_UNSUPPORTED
        auto.log_skip(platform, contraction, skipped_name, why, candidate, expected)
      return backend
    skipped.append((candidate, reason))
  raise ValueError(
    f"impl='auto' has no implementation of the {contraction} product of this layer on "
    f"{platform}: " + "; ".join(f"{n}: {why}" for n, why in skipped)
  )


def plan(
  cfg: QuantConfig,
  spec: ConvSpec | None = None,
  platform: str | None = None,
  shapes=None,
  dtype=None,
) -> Plan:
  """The implementations of a conv (`spec`) or dense (None) layer's three contractions under
  `cfg.impl`, for `platform` (default: the one being traced for). `shapes`, the conv's
  (lhs, rhs) shapes, and `dtype`, its float dtype, let auto pick by the cost model where its
  table is a prediction (`auto.MODELLED`): the fastest supported plan it predicts."""
  platform = platform or target_platform()
  rows = spec is not None and cfg.dgrad_granularity == "per_row"
  preferred = [()] * 3
  if platform in auto.MODELLED and AUTO in cfg.impls and spec is not None and shapes is not None:
    shapes = _shapes(shapes)
    options = tuple(
      tuple(
        n
        for n in auto.candidates(platform, c, spec)
        if _unsupported(get(n), c, spec, platform, rows, shapes) is None
      )
      for c in CONTRACTIONS
    )
    if all(options):
      picked = auto.predicted(cfg, spec, shapes, str(dtype or "float32"), options)
      preferred = [(name,) for name in picked]
  chosen = [
    choose(name, contraction, spec, platform, rows, shapes, first)
    for name, contraction, first in zip(cfg.impls, CONTRACTIONS, preferred, strict=True)
  ]
  return Plan(*chosen, dgrad_rows=rows)


def _shapes(shapes) -> tuple[tuple[int, ...], tuple[int, ...]]:
  return tuple(tuple(int(d) for d in s) for s in shapes)


def describe(
  impl: str, platform: str | None = None, spatial_dims: int = 2, dgrad_rows: bool = False
) -> str:
  """`impl`, with what "auto" resolves to for an ungrouped conv of `spatial_dims` (2: images,
  3: clips) on `platform`, its dgrad with per-row g scales if `dgrad_rows` (for logs)."""
  if AUTO not in impl:
    return impl
  platform = platform or target_platform()
  spec = geometry.make_spec((1, *[3] * spatial_dims, 1), (*[3] * spatial_dims, 1, 1))
  chosen = [
    choose(n, c, spec, platform, dgrad_rows).name if n == AUTO else n
    for n, c in zip(contraction_impls(impl), CONTRACTIONS)
  ]
  return f"{impl}: {','.join(chosen)} on {platform}"
