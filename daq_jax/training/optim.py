"""Optax optimizer: SGD with momentum, decoupled-from-BN weight decay, warmup + cosine/step
schedules, and UI8's deviation-counteractive learning-rate scaling.

The quantization state is not a parameter: the optimizer never sees it. It comes out of the
backward pass (`daq_jax.quant.value_and_grad`) and is passed to the optimizer only as the
`quant_state` extra argument that UI8's scaling reads.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from daq_jax.nn.ops import OP_NAME
from daq_jax.training.config import OptimConfig, TrainConfig


def peak_learning_rate(cfg: OptimConfig, batch_size: int) -> float:
  """The linear scaling rule (Goyal et al. 2017)."""
  return cfg.base_learning_rate * batch_size / cfg.base_batch_size


def schedule(cfg: OptimConfig, batch_size: int, steps_per_epoch: int, total_steps: int):
  """The learning rate as a function of the step."""
  peak = peak_learning_rate(cfg, batch_size)
  warmup = round(cfg.warmup_epochs * steps_per_epoch)
  rest = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(peak, rest)
  elif cfg.schedule == "step":
    boundaries = {round(e * steps_per_epoch) - warmup: cfg.decay_factor for e in cfg.decay_epochs}
    main = optax.piecewise_constant_schedule(peak, {k: v for k, v in boundaries.items() if k > 0})
  else:
    main = optax.constant_schedule(peak)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def decay_mask(params) -> Any:
  """True for conv and dense kernels (ndim > 1), False for biases and BN scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class DeviationScaleState(NamedTuple):
  """The per-layer factors of the last step, for logging."""

  factors: Any


def _layer_factors(updates: Any, quant_state: Any, alpha: float, beta: float) -> Any:
  """A pytree like `updates` holding max(exp(-alpha * d), beta) for every parameter of a layer
  whose quantization state has a `deviation` d, and 1 elsewhere. A layer's state sits in its
  op module's child (`quant_state/<layer>/quant/deviation`)."""
  if isinstance(updates, dict):
    state = quant_state if isinstance(quant_state, dict) else {}
    op_state = state.get(OP_NAME, {})
    if isinstance(op_state, dict) and "deviation" in op_state:
      factor = jnp.maximum(jnp.exp(-alpha * op_state["deviation"]), beta)
      return jax.tree.map(lambda _: factor, updates)
    return {k: _layer_factors(v, state.get(k, {}), alpha, beta) for k, v in updates.items()}
  return jax.tree.map(lambda _: jnp.ones((), jnp.float32), updates)


def scale_by_deviation(
  alpha: float = 20.0, beta: float = 0.1
) -> optax.GradientTransformationExtraArgs:
  """UI8's deviation-counteractive learning-rate scaling (Zhu et al. 2020), per layer.

  Each quantized layer's update is multiplied by max(exp(-alpha * d), beta), where d is the
  cosine distance between the layer's gradient and its quantized version, measured in the
  backward pass of this step (the `deviation` entry of the layer's quantization state).
  Layers without a `deviation` keep their update. Pass the new state as an extra argument:
  `tx.update(grads, opt_state, params, quant_state=new_state)`.
  """

  def init(params):
    return DeviationScaleState(jax.tree.map(lambda _: jnp.ones((), jnp.float32), params))

  def update(updates, state, params=None, *, quant_state=None, **extra):
    del state, params, extra
    factors = _layer_factors(updates, quant_state or {}, alpha, beta)
    updates = jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors)
    return updates, DeviationScaleState(factors)

  return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(
  cfg: OptimConfig, learning_rate, *, ui8_scaling: tuple[float, float] | None = None
) -> optax.GradientTransformationExtraArgs:
  """L2 weight decay on kernels, momentum, UI8 scaling (if given as (alpha, beta)), the rate.

  The order is PyTorch's SGD: the gradient clipped to `grad_clip_norm` (as
  `torch.nn.utils.clip_grad_norm_` before the step), decay added to it before the momentum
  buffer, and the per-layer UI8 factor multiplying the layer's learning rate.
  """
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
  if cfg.momentum:
    parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
  if ui8_scaling is not None:
    parts.append(scale_by_deviation(*ui8_scaling))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
  """The steps of a run: `num_steps`, or `num_epochs` of `steps_per_epoch`."""
  return cfg.num_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))


def build_optimizer(cfg: TrainConfig, steps_per_epoch: int, num_steps: int):
  """(optax transformation, learning-rate schedule) of a run's config; layers quantized with
  UI8's clipping (`dsgc`) get its learning-rate scaling."""
  ui8 = None
  if any(layer_cfg.wgrad_clip == "dsgc" for layer_cfg in cfg.quant.configs()):
    ui8 = (cfg.optim.lr_scale_alpha, cfg.optim.lr_scale_beta)
  learning_rate = schedule(cfg.optim, cfg.batch_size, steps_per_epoch, num_steps)
  return make_optimizer(cfg.optim, learning_rate, ui8_scaling=ui8), learning_rate
