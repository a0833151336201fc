"""The quantized dense layer product y = x @ w as one `jax.custom_vjp`: int8 forward, int8 dgrad
with a global gradient scale, int8 wgrad with per-output-feature gradient scales.

x is (..., K), w is (K, N). All three products are NN-layout int8 dots (the lhs contracts its
last dimension), the fast layout on XLA's CPU backend, so the forward pass also stores x^T and
w^T in int8 (transposed in float and then quantized: quantization is elementwise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.quant import contract, gradient, numerics
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.residuals import Residuals

_NN = (((1,), (0,)), ((), ()))


def float_dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w in float at full precision (the `simulate` path and the oracle)."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense(cfg: QuantConfig, x, w, state, key):
  return _dense_fwd(cfg, x, w, state, key)[0]


def _dense_fwd(cfg: QuantConfig, x, w, state, key):
  out_dtype = jnp.result_type(x.dtype, w.dtype)
  sx, sw = numerics.max_abs(x), numerics.max_abs(w)
  if cfg.impl == "simulate":
    x_hat, w_hat = numerics.fake_quantize(x, sx), numerics.fake_quantize(w, sw)
    out = float_dense(x_hat, w_hat)
    saved = (x_hat, w_hat)
  elif cfg.impl == "pallas":
    from daq_jax.pallas import conv as pallas_conv  # Pallas only loads when asked for

    x_q = numerics.quantize(x.reshape(-1, x.shape[-1]), sx)
    w_q = numerics.quantize(w, sw)
    out = pallas_conv.dense_forward(x_q, w_q, sx, sw, interpret=cfg.pallas_interpret).reshape(
      *x.shape[:-1], w.shape[-1]
    )
    saved = (x_q, w_q, sx, sw)
  else:
    x2d = x.reshape(-1, x.shape[-1])
    acc = contract.int8_dot_general(numerics.quantize(x2d, sx), numerics.quantize(w, sw), _NN)
    out = numerics.rescale(acc, sx, sw).reshape(*x.shape[:-1], w.shape[-1])
    saved = (numerics.quantize(x2d.T, sx), numerics.quantize(w.T, sw), sx, sw)
  return out.astype(out_dtype), Residuals.of(saved, state, key, x, w)


def _dense_bwd(cfg: QuantConfig, res: Residuals, g):
  gq = gradient.quantize_gradient_for_impl(g, res.state, cfg, res.key)
  if cfg.impl == "simulate":
    x_hat, w_hat = res.saved
    _, vjp = jax.vjp(float_dense, x_hat, w_hat)
    g_dgrad, g_wgrad = gq.dequantized(g.shape)
    dx, dw = vjp(g_dgrad)[0], vjp(g_wgrad)[1]
  elif cfg.impl == "pallas":
    from daq_jax.pallas import conv as pallas_conv

    x_q, w_q, sx, sw = res.saved
    g2d = gq.dgrad_q.reshape(-1, g.shape[-1])
    dx = pallas_conv.dense_dgrad(
      g2d, w_q, gq.dgrad_scale, sw, interpret=cfg.pallas_interpret
    ).reshape(res.lhs_shape)
    dw = pallas_conv.dense_wgrad(
      x_q, gq.wgrad_q, sx, gq.wgrad_scale, interpret=cfg.pallas_interpret
    )
  else:
    x_t, w_t, sx, sw = res.saved
    g2d = gq.dgrad_q.reshape(-1, g.shape[-1])
    dx = numerics.rescale(contract.int8_dot_general(g2d, w_t, _NN), gq.dgrad_scale, sw)
    dx = dx.reshape(res.lhs_shape)
    dw = numerics.rescale(contract.int8_dot_general(x_t, gq.wgrad_q, _NN), sx, gq.wgrad_scale)
  return dx.astype(res.lhs_dtype), dw.astype(res.rhs_dtype), gq.new_state, None


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense(
  x: jax.Array,
  w: jax.Array,
  state: gradient.State,
  key: jax.Array | None = None,
  *,
  cfg: QuantConfig,
) -> jax.Array:
  """x @ w with DAQ int8 forward and backward passes.

  Args:
    x: (..., K) float input.
    w: (K, N) float kernel.
    state: the layer's quantization state (`gradient.init_state(cfg, N)`); its cotangent under
      `jax.grad` is the state for the next step.
    key: PRNG key for stochastic gradient rounding, else None.
    cfg: the quantization config.

  Returns:
    (..., N) in the operands' float dtype.
  """
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(
      f"dense: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit: need x (..., K) and w (K, N)"
    )
  gradient.check_state(state, cfg, w.shape[-1])
  return _dense(cfg, x, w, state, key)
