"""Deprecated: moved to `daq_jax.analysis.inspect` (inspection sits above the layers)."""

import warnings

from daq_jax.analysis.inspect import LayerReport, format_reports, inspect_gradients

warnings.warn(
  "daq_jax.quant.inspect moved to daq_jax.analysis.inspect", DeprecationWarning, stacklevel=2
)

__all__ = ["LayerReport", "format_reports", "inspect_gradients"]
