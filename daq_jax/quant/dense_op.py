"""The quantized dense layer product y = x @ w as one `jax.custom_vjp`: int8 forward, int8 dgrad
with a global gradient scale, int8 wgrad with per-output-feature gradient scales.

x is (..., K), w is (K, N); the products run on the 2-D view (M, K) of x, computed by the
implementations `cfg.impl` names (`daq_jax.quant.backends`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from daq_jax.quant import backends, gradient, lowering, memory, numerics
from daq_jax.quant import state as quant_state
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.numerics import QTensor
from daq_jax.quant.residuals import Residuals

__all__ = ["dense"]


# The plan is chosen once per layer call and trace, in `dense`, as in conv_op.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _dense(plan, cfg: QuantConfig, site, x, w, state, stats, key):
  return _forward(plan, site, x, w, state, stats, key)[0]


def _forward(plan, site, x, w, state, stats, key):
  with jax.named_scope(lowering.scope(site, "forward", plan.forward)):
    x2d = x.reshape(-1, x.shape[-1])
    xq = memory.name_residual(QTensor.of(x2d, numerics.max_abs(x)))  # memory="int8" keeps it
    wq = QTensor.of(w, numerics.max_abs(w))
    out = plan.forward.dense_forward(xq, wq).reshape(*x.shape[:-1], w.shape[-1])
    kernel = plan.dgrad.dense_keep_kernel(w, wq)
    inputs = plan.wgrad.dense_keep_input(x2d, xq)
  out_dtype = jnp.result_type(x.dtype, w.dtype)
  return out.astype(out_dtype), Residuals.of(kernel, inputs, state, stats, key, x, w)


def _dense_fwd(plan, cfg: QuantConfig, site, x, w, state, stats, key):
  state_moves = any(jax.tree.leaves(jax.tree.map(lambda p: p.perturbed, state)))
  quant_state.check_differentiated(site, w.perturbed, state_moves)
  values = [v.value for v in (x, w)] + [
    jax.tree.map(lambda p: p.value, tree) for tree in (state, stats, key)
  ]
  return _forward(plan, site, *values)


def _dense_bwd(plan, cfg: QuantConfig, site, res: Residuals, g):
  g = quant_state.zeros_if_symbolic(g)
  with jax.named_scope(lowering.scope(site, "wgrad", plan.wgrad, "quantize g")):
    gq = plan.wgrad.quantize_gradient(g, res.state, cfg, res.key)
  scale = gq.dgrad_scale
  g2d = QTensor(gq.dgrad_q.reshape(-1, g.shape[-1]), scale.reshape(-1, 1) if scale.ndim else scale)
  with jax.named_scope(lowering.scope(site, "dgrad", plan.dgrad)):
    dx = plan.dgrad.dense_dgrad(g2d, res.kernel).reshape(res.lhs_shape)
  with jax.named_scope(lowering.scope(site, "wgrad", plan.wgrad)):
    dw = plan.wgrad.dense_wgrad(res.inputs, gq.wgrad)
  stats = gradient.statistics(gq, cfg, res.statistics)
  new_state, new_stats = quant_state.shared(site, gq.new_state, stats)
  return dx.astype(res.lhs_dtype), dw.astype(res.rhs_dtype), new_state, new_stats, None


_dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)


def dense(
  x: jax.Array,
  w: jax.Array,
  state: gradient.State,
  key: jax.Array | None = None,
  *,
  cfg: QuantConfig,
  stats: gradient.State | None = None,
  site: quant_state.Site | None = None,
) -> jax.Array:
  """x @ w with DAQ int8 forward and backward passes.

  Args:
    x: (..., K) float input.
    w: (K, N) float kernel.
    state: the layer's quantization state (`gradient.init_state(cfg, N)`); its cotangent under
      `jax.grad` is the state for the next step.
    key: PRNG key for stochastic gradient rounding, else None.
    cfg: the quantization config.
    stats: zeros (`gradient.init_statistics()`, or some of its keys) whose cotangent under
      `jax.grad` is what the gradient quantizer saw in this step; None computes none.
    site: the layer (`state.Site`), as for `conv_general`.

  Returns:
    (..., N) in the operands' float dtype.

  Raises:
    ValueError: as `conv_general`, when the state would never move.
  """
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(
      f"dense: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit: need x (..., K) and w (K, N)"
    )
  numerics.check_auto_sharding("quantized dense", x=x, w=w)
  gradient.check_state(state, cfg, w.shape[-1])
  stats = {} if stats is None else stats
  gradient.check_statistics(stats)
  site = quant_state.Site().applied() if site is None else site
  return _dense(backends.plan(cfg), cfg, site, x, w, state, stats, key)
