"""memory="int8": the step keeps the quantized layers' int8 inputs and scales and recomputes the
rest, with the same numbers to float32 rounding.

Strategy: (1) train.py's step (a BatchNorm ResNet-20 at a small batch, the recommended method
with stochastic rounding on both paths; a small detector and a video model in the slow set)
gives the loss, the gradients (so the new parameters and optimizer state), the quantizer's
new state and BatchNorm's running means of memory="keep" to float32 rounding (XLA compiles
the two programs' float arithmetic differently; bit for bit on the development Xeon);
(2) the residuals it saves for the backward pass (JAX's listing, the arguments not counted),
at the CIFAR config's batch of 128, are int8, at most 0.35x fp32's and 0.5x bf16's (the
targets; measured 0.06x and 0.08x); (3) unknown modes are refused; (4) benchmarks.memory
--resume keeps the rows an interrupted run wrote.
"""

import json

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


# The two modes are different programs, whose float arithmetic XLA fuses, reassociates and
# contracts differently (jax.checkpoint marks the saved values), so last bits can differ
# (measured: 1 ulp of a running mean; 1.5e-8 in the digits CNN's head gradient). A
# recomputation that is not the forward pass (another key, another rounding) is off by
# quantization steps, orders of magnitude more.
ROUNDING = {"rtol": 1e-5, "atol": 1e-7}


def _assert_same(model: str, batch: int):
  (keep, keep_metrics), (int8, int8_metrics) = _step(model, KEEP, batch), _step(model, INT8, batch)
  for a, b in zip(
    *(jax.tree.leaves(t) for t in ((keep, keep_metrics), (int8, int8_metrics))), strict=True
  ):
    # gradients, parameters, optimizer and quantizer state, running statistics, loss
    np.testing.assert_allclose(a, b, **ROUNDING)


def test_the_int8_mode_step_is_the_keep_mode_step():
  _assert_same("resnet20", 8)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["retinanet_small", "r3d_18"])
def test_the_int8_mode_is_exact_for_the_detector_and_a_video_model_too(model):
  _assert_same(model, 2)


def test_the_int8_mode_keeps_a_fraction_of_what_float_training_keeps():
  variants = {"fp32": memory_bench.VARIANTS[0], "bf16": memory_bench.VARIANTS[1], "int8": INT8}
  kept = {
    name: memory_bench.residuals(memory_bench.abstract_step("resnet20", v))
    for name, v in variants.items()
  }
  total = {name: sum(by_dtype.values()) for name, by_dtype in kept.items()}
  assert total["int8"] <= 0.35 * total["fp32"] and total["int8"] <= 0.5 * total["bf16"], total
  assert max(kept["int8"], key=kept["int8"].get) == "int8"  # int8 is what it keeps
  # what remains float: per-channel statistics and scales, under 1 % of it
  assert kept["int8"].get("float32", 0) < 0.01 * total["int8"]


def test_the_remat_control_compiles_both_gradients():
  control = memory_bench.remat_control(layers=4, rows=256, width=128)
  # as written, the gradient keeps its activations (XLA's temp holds at least them); what the
  # checkpointed one keeps is the platform's (the CPU's: the same)
  assert control["plain_temp_bytes"] >= control["activation_bytes"] > 0
  assert control["remat_temp_bytes"] > 0


def test_unknown_modes_are_refused():
  with pytest.raises(ValueError, match=r"memory mode 'bits' is not one of \('keep', 'int8'\)"):
    memory.with_mode(lambda x: x, "bits")


def test_the_benchmark_resumes_keeping_the_rows_it_has(tmp_path, capsys):
  out = tmp_path / "memory.json"
  stored = {"method": "fp32", "dtype": "float32", "memory": "keep", "residual_bytes": {"x": 1}}
  out.write_text(json.dumps({"models": {"resnet20": {"batch": 128, "variants": {"fp32": stored}}}}))
  memory_bench.main(
    ["--models", "resnet20", "--variants", "bf16", "--no-compile", "--resume", "--out", str(out)]
  )
  rows = json.loads(out.read_text())["models"]["resnet20"]["variants"]
  assert rows["fp32"] == stored  # kept, not measured again
  assert rows["bf16"]["residual_bytes"]["bfloat16"] > 0  # the missing row, measured
  assert "| resnet20 | 128 | bf16 |" in capsys.readouterr().out
