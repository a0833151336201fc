"""memory="int8": the step keeps the quantized layers' int8 inputs and scales and recomputes the
rest, with the same numbers.

Strategy: (1) train.py's step (a BatchNorm ResNet-20 at a small batch, the recommended method
with stochastic rounding on both paths; a small detector and a video model in the slow set)
gives bit for bit the loss, the gradients (so the new parameters and optimizer state) and the
quantizer's new state of memory="keep", and BatchNorm's running means to float32 rounding;
(2) the residuals it saves for the backward pass (JAX's listing, the arguments not counted),
at the CIFAR config's batch of 128, are int8, at most 0.35x fp32's and 0.5x bf16's (the
targets; measured 0.06x and 0.08x); (3) unknown modes are refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import memory as memory_bench
from daq_jax.quant import memory
from daq_jax.quant.config import RECOMMENDED
from daq_jax.training import steps

KEEP, INT8 = (
  memory_bench.Variant(f"{RECOMMENDED} {mode}", RECOMMENDED, "float32", mode)
  for mode in memory.MODES
)


def _batch(spec: dict) -> dict:
  keys = iter(jax.random.split(jax.random.key(0), len(spec)))
  made = {}
  for name, s in spec.items():
    key = next(keys)
    if s.dtype == jnp.uint8:
      made[name] = jax.random.randint(key, s.shape, 0, 256).astype(jnp.uint8)
    elif s.dtype == jnp.bool_:
      made[name] = jnp.ones(s.shape, bool)
    elif s.dtype == jnp.int32:
      made[name] = jax.random.randint(key, s.shape, 0, 3)
    else:  # boxes: (y0, x0) then (y1, x1), inside the image
      corner = jax.random.uniform(key, s.shape[:-1] + (2,), minval=0.1, maxval=0.4)
      made[name] = jnp.concatenate([corner, corner + 0.3], axis=-1) * 96
  return made


def _step(model: str, variant, batch: int):
  built = memory_bench.abstract_step(model, variant, batch)
  common = built.common
  state = steps.init_train_state(common["model"], built.tx, common["info"], 0)
  return jax.jit(built.step)(state, _batch(built.batch))


# BatchNorm's running means are an average of the forward pass's batch means, whose reduction
# XLA fuses as the surrounding program lets it: the two modes' programs differ, so a running
# mean can differ in its last bit (a float32 rounding; measured 1 ulp) where no gradient does.
RUNNING_MEAN_RTOL = 1e-6


def _assert_same(model: str, batch: int):
  (keep, keep_metrics), (int8, int8_metrics) = _step(model, KEEP, batch), _step(model, INT8, batch)
  exact = (
    (keep.replace(batch_stats=None), keep_metrics),
    (int8.replace(batch_stats=None), int8_metrics),
  )
  for a, b in zip(*(jax.tree.leaves(tree) for tree in exact), strict=True):
    np.testing.assert_array_equal(a, b)  # gradients, parameters, quantizer state, loss
  for a, b in zip(
    jax.tree.leaves(keep.batch_stats), jax.tree.leaves(int8.batch_stats), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=RUNNING_MEAN_RTOL)


def test_the_int8_mode_step_is_the_keep_mode_step_bit_for_bit():
  _assert_same("resnet20", 8)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["retinanet_small", "r3d_18"])
def test_the_int8_mode_is_exact_for_the_detector_and_a_video_model_too(model):
  _assert_same(model, 2)


def test_the_int8_mode_keeps_a_fraction_of_what_float_training_keeps():
  variants = {"fp32": memory_bench.VARIANTS[0], "bf16": memory_bench.VARIANTS[1], "int8": INT8}
  kept = {name: memory_bench.residuals("resnet20", v) for name, v in variants.items()}
  total = {name: sum(by_dtype.values()) for name, by_dtype in kept.items()}
  assert total["int8"] <= 0.35 * total["fp32"] and total["int8"] <= 0.5 * total["bf16"], total
  assert max(kept["int8"], key=kept["int8"].get) == "int8"  # int8 is what it keeps
  # what remains float: per-channel statistics and scales, under 1 % of it
  assert kept["int8"].get("float32", 0) < 0.01 * total["int8"]


def test_unknown_modes_are_refused():
  with pytest.raises(ValueError, match=r"memory mode 'bits' is not one of \('keep', 'int8'\)"):
    memory.with_mode(lambda x: x, "bits")
