"""Getting the quantization state out of the backward pass.

Each quantized layer takes its state (the `quant_state` collection) as an input that the
forward pass does not read; its backward pass returns the state for the next step as that
input's cotangent. So one `jax.grad` with respect to both the parameters and the state yields
the parameter gradients and the new state together. Two consequences worth knowing:
- a layer applied twice in one step gets the sum of its two new states (do not share
  quantized layers; share their parameters instead);
- the new state is a statistic of the whole batch seen by `jax.grad`: under `jit` with a
  batch sharded across devices the reductions are global, so every device carries the same
  state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# The Flax collections of the quantized layers (`daq_jax.nn.ops`): the state the quantizer
# learns from, and what it saw in the last step.
STATE_COLLECTION = "quant_state"
STATS_COLLECTION = "quant_stats"


def value_and_grad(
  fun: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any, Any]]:
  """Like `jax.value_and_grad(fun, argnums=(0, 1))`, for `fun(params, quant_state, *args)`.

  Args:
    fun: the loss, taking the parameters, then the `quant_state` collection, then anything.
    has_aux: as for `jax.value_and_grad`.

  Returns:
    A function with `fun`'s arguments returning `(value, param_grads, new_quant_state)`, where
    `value` is `(loss, aux)` when `has_aux`. `new_quant_state` is not a gradient: it is the
    state to pass to the next step, unchanged by the optimizer.

  Example:
    >>> def loss_fn(params, quant_state, x, y):
    ...   logits = model.apply({"params": params, "quant_state": quant_state}, x)
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    >>> loss, grads, quant_state = value_and_grad(loss_fn)(params, quant_state, x, y)
  """
  inner = jax.value_and_grad(fun, argnums=(0, 1), has_aux=has_aux)

  def wrapped(params, quant_state, *args, **kwargs):
    value, (param_grads, new_state) = inner(params, quant_state, *args, **kwargs)
    return value, param_grads, new_state

  return wrapped


def split_grads(variable_grads: dict) -> tuple[dict, Any, Any]:
  """Splits the gradients of a whole variables dict into (everything else, new state,
  statistics): the `quant_state` and `quant_stats` collections come out apart ({} if absent).

  For loops that differentiate with respect to `{"params": ..., "quant_state": ...,
  "quant_stats": ...}` at once.
  """
  quant = (STATE_COLLECTION, STATS_COLLECTION)
  rest = {k: v for k, v in variable_grads.items() if k not in quant}
  return rest, *(variable_grads.get(name, {}) for name in quant)
