"""Getting the quantization state out of the backward pass, and making sure it moves.

Each quantized layer takes its state (the `quant_state` collection) as an input that the
forward pass does not read; its backward pass returns the state for the next step as that
input's cotangent. So one `jax.grad` with respect to both the parameters and the state yields
the parameter gradients and the new state together. Consequences worth knowing:
- a layer applied several times in one step (a shared head) gets, as its new state and its
  statistics, the mean over its applications of what each application's backward pass
  computed (each divides its contribution by the count; the sum JAX makes of them is then the
  mean); where every application sees the same per-channel gradient maxima, that is the state
  of one application to the concatenated inputs;
- the new state is a statistic of the whole batch seen by `jax.grad`: under `jit` with a
  batch sharded across devices the reductions are global, so every device carries the same
  state.
Two mistakes would leave the state at its "no history" start for the whole run, and both are
errors (`check_differentiated`, `watch`): differentiating with respect to the parameters but
not the state (a plain `jax.value_and_grad(loss)(params)` with the state closed over, or a
plain `nnx.value_and_grad`), and dropping the new state instead of passing it to the next
step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# The Flax collections of the quantized layers (`daq_jax.nn.ops`): the state the quantizer
# learns from, and what it saw in the last step.
STATE_COLLECTION = "quant_state"
STATS_COLLECTION = "quant_stats"


def value_and_grad(
  fun: Callable[..., Any], *, has_aux: bool = False, check_state: bool = True
) -> Callable[..., tuple[Any, Any, Any]]:
  """Like `jax.value_and_grad(fun, argnums=(0, 1))`, for `fun(params, quant_state, *args)`.

  Args:
    fun: the loss, taking the parameters, then the `quant_state` collection, then anything.
    has_aux: as for `jax.value_and_grad`.
    check_state: watch, in the compiled step, that the state does not stay at its start while
      the parameters move (`watch`: the new state dropped instead of passed on); False for a
      step meant to start from one state with several parameter values.

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
    if check_state:
      watch(params, quant_state)
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


class Site:
  """Where a quantized op runs: its layer's path (for errors and the int8 report) and how
  many times that layer is applied in one traced call of its model, counted as the model is
  traced (the backward passes run after the whole forward pass has been traced, so they read
  the final count).

  Attributes:
    name: the layer's path, "" for a bare op.
    count: its applications so far in this trace.
  """

  def __init__(self, name: str = ""):
    self.name = name
    self.count = 0

  def applied(self) -> Site:
    """Counts one more application and returns the site."""
    self.count += 1
    return self

  def share(self) -> float:
    """The factor of one application's state and statistics: 1 / applications."""
    return 1.0 / max(self.count, 1)

  def __repr__(self):
    return f"Site({self.name!r}, applications={self.count})"


FIX = (
  "differentiate with respect to it too: daq_jax.quant.value_and_grad(loss)(params, "
  "quant_state, ...) for flax.linen, daq_jax.nnx.value_and_grad(loss)(model, ...) for nnx"
)


def check_differentiated(site: Site, kernel_perturbed: bool, state_perturbed: bool) -> None:
  """A gradient taken with respect to a quantized layer's kernel but not its state: the new
  state, the state's cotangent, would be dropped and the state never move. An error that
  names the layer and the fix."""
  if kernel_perturbed and not state_perturbed:
    raise ValueError(
      f"quantized layer {site.name or '(unnamed)'}: the gradient is taken with respect to its "
      "kernel but not its quantization state (quant_state), so the state would never leave "
      f"its start: {FIX}"
    )


# The steps a dropped state must be seen in before it is an error: the parameters of three
# calls differ while every layer's state has no history. Two would do for a step whose every
# quantized layer has a gradient in its first step; a model whose quantized layers all get
# none in the first step (a zero-initialised float head, zero-initialised residual scales
# with the stem float) takes its first history in the second.
DROPPED_AFTER = 3


class _Watch:
  """The parameters' fingerprints one compiled step saw while no layer's state had a
  history."""

  def __init__(self, layers: list[str]):
    self.layers = layers
    self.seen: set[tuple[float, ...]] = set()

  def __call__(self, fingerprint) -> None:
    self.seen.add(tuple(float(v) for v in fingerprint))
    if len(self.seen) >= DROPPED_AFTER:
      raise ValueError(
        f"the quantization state of all {len(self.layers)} quantized layers (the first: "
        f"{self.layers[0]}) has no history after {DROPPED_AFTER} steps with different "
        "parameters: the new state of a step was not passed to the next. Carry it: the third "
        "output of daq_jax.quant.value_and_grad into the next step's quant_state"
      )


def _runs_here() -> bool:
  """Whether the program traced now runs on this process's backend (a host callback cannot be
  lowered for another platform: a program lowered for CUDA on a CPU machine has no watch)."""
  from daq_jax.quant.backends.platform import target_platform

  here = jax.default_backend()
  return target_platform() == {"gpu": target_platform()}.get(here, here)


def watch(params, quant_state) -> None:
  """The runtime half, in `value_and_grad`'s trace: while no quantized layer's state has a
  history (every dgrad scale is 0, as before the first step), the compiled step reports a
  fingerprint of the parameters; `DROPPED_AFTER` different ones mean the parameters moved
  and the state did not, an error at the next synchronisation. A layer whose gradient was
  zero (a zero-initialised residual scale) keeps no history for a step, legitimately; the
  other layers' does. One compiled step run again on the same parameters (a benchmark)
  passes; after the first real update nothing is reported."""
  clips = [
    (path, leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(quant_state)[0]
    if path and getattr(path[-1], "key", None) == "dgrad_clip"
  ]
  floats = [p for p in jax.tree.leaves(params) if jnp.issubdtype(p.dtype, jnp.floating)]
  if not clips or not floats or not _runs_here():
    return
  fresh = jnp.all(jnp.stack([jnp.all(leaf == 0) for _, leaf in clips]))
  seen = _Watch([_layer_name(path) for path, _ in clips])

  def report():
    sums = [jnp.sum(p.astype(jnp.float32)) for p in floats]
    squares = [jnp.sum(jnp.square(p.astype(jnp.float32))) for p in floats]
    jax.debug.callback(seen, jnp.stack([sum(sums), sum(squares)]))

  jax.lax.cond(fresh, report, lambda: None)


def _layer_name(path) -> str:
  """backbone/conv1 of the path ['quant_state']['backbone']['conv1']['quant']['dgrad_clip']."""
  keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)]
  drop = {STATE_COLLECTION, "quant", "dgrad_clip"}
  return "/".join(k for k in keys if k not in drop) or jax.tree_util.keystr(path)


def zeros_if_symbolic(g):
  """A cotangent a backward rule can compute with: JAX's symbolic zero (an output the loss
  does not read) as zeros of its shape."""
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(g.aval.shape, g.aval.dtype)
  return g


def shared(site: Site, new_state: dict, new_stats: dict) -> tuple[dict, dict]:
  """One application's new state and statistics, scaled by 1 / applications: JAX sums the
  applications' cotangents, so the layer gets their mean."""
  if site.count <= 1:
    return new_state, new_stats
  share = jnp.float32(site.share())
  return jax.tree.map(lambda v: v * share, (new_state, new_stats))
