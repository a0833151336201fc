"""The quantized convolution: int8 forward, int8 dgrad (a global gradient scale, or one per
output position) and int8 wgrad (per-output-channel gradient scales), as one `jax.custom_vjp`.

Layout is channels last: lhs (N, *spatial, C_in), rhs (*spatial, C_in / groups, C_out), the
layout of `flax.linen.Conv`. 1-D, 2-D and 3-D convolutions, strides, padding, lhs (input) and
rhs (kernel) dilation and feature groups (depthwise included) are supported (`geometry`).
The three int8 products are computed by the implementations `cfg.impl` names
(`daq_jax.quant.backends`); the residuals are int8 tensors and float32 scales only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from daq_jax.quant import backends, gradient, lowering, memory, numerics
from daq_jax.quant import state as quant_state
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.geometry import ConvSpec, check_layout, make_spec
from daq_jax.quant.numerics import QTensor
from daq_jax.quant.residuals import Residuals


# The plan (which implementation computes each product) is chosen once per layer call and
# trace, in `conv_general`, and reaches both passes as a static argument, with the site (the
# layer's path and its applications in the trace).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _conv(plan, cfg: QuantConfig, spec: ConvSpec, site, lhs, rhs, state, stats, key):
  return _forward(plan, spec, site, lhs, rhs, state, stats, key)[0]


def _forward(plan, spec: ConvSpec, site, lhs, rhs, state, stats, key):
  with jax.named_scope(lowering.scope(site, "forward", plan.forward)):
    # the int8 input and its scale: what memory="int8" keeps for the backward pass
    x = memory.name_residual(QTensor.of(lhs, numerics.max_abs(lhs)))
    w = QTensor.of(rhs, numerics.max_abs(rhs))
    out_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    out = plan.forward.conv_forward(x, w, spec, out_dtype)
    kernel = plan.dgrad.conv_keep_kernel(rhs, w, spec, rows=plan.dgrad_rows)
    inputs = plan.wgrad.conv_keep_input(lhs, x, spec)
  return out.astype(out_dtype), Residuals.of(kernel, inputs, state, stats, key, lhs, rhs)


def _conv_fwd(plan, cfg: QuantConfig, spec: ConvSpec, site, lhs, rhs, state, stats, key):
  # symbolic zeros: each differentiable input says whether the gradient is taken through it
  state_moves = any(jax.tree.leaves(jax.tree.map(lambda p: p.perturbed, state)))
  quant_state.check_differentiated(site, rhs.perturbed, state_moves)
  values = [v.value for v in (lhs, rhs)] + [
    jax.tree.map(lambda p: p.value, tree) for tree in (state, stats, key)
  ]
  return _forward(plan, spec, site, *values)


def _on_load(backend: backends.Backend, operand):
  """g as `backend` takes it: deferred where it quantizes on load, int8 otherwise."""
  return operand if backend.quantizes_on_load else numerics.quantize_now(operand)


def _conv_bwd(plan, cfg: QuantConfig, spec: ConvSpec, site, res: Residuals, g):
  g = quant_state.zeros_if_symbolic(g)
  defer = tuple(p for p, b in (("dgrad", plan.dgrad), ("wgrad", plan.wgrad)) if b.quantizes_on_load)
  with jax.named_scope(lowering.scope(site, "wgrad", plan.wgrad, "quantize g")):
    gq = plan.wgrad.quantize_gradient(g, res.state, cfg, res.key, defer)
  dgrad = plan.dgrad.conv_dgrad_rows if plan.dgrad_rows else plan.dgrad.conv_dgrad
  g_dgrad, g_wgrad = _on_load(plan.dgrad, gq.dgrad), _on_load(plan.wgrad, gq.wgrad)
  with jax.named_scope(lowering.scope(site, "dgrad", plan.dgrad)):
    dx = dgrad(g_dgrad, res.kernel, res.lhs_shape, res.rhs_shape, spec, res.lhs_dtype)
  with jax.named_scope(lowering.scope(site, "wgrad", plan.wgrad)):
    dw = plan.wgrad.conv_wgrad(res.inputs, g_wgrad, res.lhs_shape, res.rhs_shape, spec)
  stats = gradient.statistics(gq, cfg, res.statistics)
  new_state, new_stats = quant_state.shared(site, gq.new_state, stats)
  return dx.astype(res.lhs_dtype), dw.astype(res.rhs_dtype), new_state, new_stats, None


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def conv_general(
  lhs: jax.Array,
  rhs: jax.Array,
  state: gradient.State,
  key: jax.Array | None = None,
  *,
  cfg: QuantConfig,
  window_strides=None,
  padding="SAME",
  lhs_dilation=None,
  rhs_dilation=None,
  feature_group_count: int = 1,
  dimension_numbers=None,
  stats: gradient.State | None = None,
  site: quant_state.Site | None = None,
) -> jax.Array:
  """A channels-last convolution with DAQ int8 forward and backward passes.

  Args:
    lhs: (N, *spatial, C_in) float input.
    rhs: (*spatial, C_in / groups, C_out) float kernel.
    state: the layer's quantization state (`gradient.init_state(cfg, C_out)`). The forward pass
      does not read it; under `jax.grad` its cotangent is the state for the next step.
    key: PRNG key for stochastic gradient rounding, else None.
    cfg: the quantization config.
    window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count: as for
      `lax.conv_general_dilated` (padding: SAME, SAME_LOWER, VALID or (low, high) pairs).
    dimension_numbers: None, or the channels-last layout spelled out (("NHWC", "HWIO",
      "NHWC") and its 1-D/3-D forms); other layouts are refused with a clear error.
    stats: zeros (`gradient.init_statistics()`, or some of its keys) whose cotangent under
      `jax.grad` is what the gradient quantizer saw in this step; None computes none.
    site: the layer this op computes (`state.Site`: its path, for errors and the int8
      report, and its applications in the trace); None for a bare op.

  Returns:
    The convolution output (N, *out_spatial, C_out) in the operands' float dtype.

  Raises:
    ValueError: at trace time, when a gradient is taken with respect to `rhs` but not
      `state` (the state would never move); at run time, when `state` has no history while
      `rhs` changes between calls of one compiled step (the new state is being dropped).
  """
  numerics.check_auto_sharding("quantized conv", lhs=lhs, rhs=rhs)
  check_layout(dimension_numbers, lhs.ndim, lhs.shape, rhs.shape)
  spec = make_spec(
    lhs.shape,
    rhs.shape,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    feature_group_count=feature_group_count,
  )
  gradient.check_state(state, cfg, rhs.shape[-1])
  stats = {} if stats is None else stats
  gradient.check_statistics(stats)
  plan = backends.plan(cfg, spec, shapes=(lhs.shape, rhs.shape), dtype=lhs.dtype)
  site = quant_state.Site().applied() if site is None else site
  return _conv(plan, cfg, spec, site, lhs, rhs, state, stats, key)
