"""What a training step keeps between its forward and backward passes.

    memory="keep"   what JAX's autodiff keeps: the quantized ops' int8 operands and scales, and
                    every float value the backward pass reads (BatchNorm's input and its
                    normalised output, the float parts around every conv) and the masks.
    memory="int8"   the quantized ops' int8 inputs and their scales (`INT8_RESIDUAL`), the
                    per-channel statistics and the masks (ReLU's: a bit each with
                    `daq_jax.nn.relu`, which packs them; a byte each, JAX's bool, otherwise);
                    everything else is recomputed in the backward pass from them, the inputs
                    and the parameters: each quantized layer's output from its int8 operands
                    (the int8 product again), then BatchNorm and the rest.

The recomputation is the forward pass that was run: the same int8 operands and scales, the
same deterministic float operations, the same keys (the forward pass rounds to nearest; the
backward pass's stochastic rounding draws its bits from the step's key, whichever mode). The
two programs still differ in what XLA fuses, so their float arithmetic is the same bits only
under `daq_jax.quant.exact` (every product and quotient rounded on its own), which train.py's
step always uses: then the gradients and the new state are those of "keep" bit for bit
(docs/memory.md). The mode is not part of a run's numerics: a run may resume in another one.

It is JAX's own `jax.checkpoint` with a policy on named residuals (`_int8_and_statistics`): the
quantized ops name their int8 input and its scale (`checkpoint_name`, `INT8_RESIDUAL`), and the
policy saves those, reductions (the per-channel statistics), comparisons (masks) and values
computed from small operands only; `keep_int8` wraps a loss function so.

The masks make each layer's recomputation local: its float values come from its own int8
operands, scales and statistics, never from the layer before. Recomputed instead, a ReLU mask
after a residual addition needs the float sum of the whole residual stream up to it, so the
backward pass would recompute that stream from the first block on and hold it until the last
block's gradient is done.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.ad_checkpoint import checkpoint_name

MODES = ("keep", "int8")
# The name the quantized ops give the int8 input they keep for the weight gradient, and its
# scale: what memory="int8" saves.
INT8_RESIDUAL = "daq_int8_residual"


def name_residual(value):
  """`value` (an array, or a pytree: a `QTensor`) named as an int8 residual."""
  return jax.tree.map(lambda v: checkpoint_name(v, INT8_RESIDUAL), value)


# Reductions: the per-channel statistics (BatchNorm's sums, a pooled feature, the quantizer's
# maxima), saved so that the backward pass does not reduce again in another order.
_STATISTICS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin")
# Comparisons: the masks (jax.nn.relu's x > 0, a maximum's ties), one byte per element (JAX's
# bool; daq_jax.nn.relu packs its own into bits and names them INT8_RESIDUAL).
_MASKS = ("gt", "ge", "lt", "le", "eq", "ne")
# Values computed from operands this small (per-channel vectors, scalars: BatchNorm's 1/sigma
# say) are saved too: they cost nothing, and computed again in another fusion their last bit
# could differ (a vectorised rsqrt is not a scalar one).
SMALL = 4096  # elements: more than a layer has channels, fewer than any activation has values
# ... except the operations that make a large value of small operands (a per-channel vector
# broadcast over the activations): their output is recomputed.
_EXPANDING = ("broadcast_in_dim", "iota", "pad", "concatenate", "gather", "dynamic_update_slice")


def _int8_and_statistics(prim, *avals, **params) -> bool:
  """The checkpoint policy of memory="int8": what the quantized ops named, reductions, masks,
  and whatever is computed from small operands only."""
  if prim.name == "name":
    return params.get("name") == INT8_RESIDUAL
  if prim.name in _STATISTICS + _MASKS:
    return True
  if prim.name in _EXPANDING:
    return False
  sizes = [getattr(a, "size", None) for a in avals]
  return bool(sizes) and all(s is not None and s <= SMALL for s in sizes)


def keep_int8(fn: Callable) -> Callable:
  """`fn` (a loss) whose derivative keeps only the quantized ops' int8 inputs and scales, the
  statistics and the masks between its passes and recomputes the rest."""
  return jax.checkpoint(fn, policy=_int8_and_statistics)


def with_mode(fn: Callable, mode: str) -> Callable:
  """`fn` under memory mode `mode` (`MODES`).

  Raises:
    ValueError: for another mode.
  """
  if mode not in MODES:
    raise ValueError(f"memory mode {mode!r} is not one of {MODES}")
  return keep_int8(fn) if mode == "int8" else fn
