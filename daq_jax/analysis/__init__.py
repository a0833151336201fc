"""Tools that look at what the quantizer does to a model: they sit above the layers."""

from daq_jax.analysis.layer_reports import LayerReport, format_reports, inspect_gradients

__all__ = ["LayerReport", "format_reports", "inspect_gradients"]
