"""memory="int8": the step keeps the quantized layers' int8 inputs and scales, the statistics
and the masks, and recomputes the rest, with the same numbers bit for bit.

Strategy: (1) train.py's step (a BatchNorm ResNet-20 at a small batch, the recommended method
with stochastic rounding on both paths; a small detector and a video model in the slow set)
gives the loss, the gradients (so the new parameters and optimizer state), the quantizer's
new state and BatchNorm's running means of memory="keep" bit for bit (the step's arithmetic
is `quant.exact`'s, so XLA's fusions cannot round the two programs differently); (2) the
residuals it saves for the backward pass (JAX's listing, the arguments not counted), at the
CIFAR config's batch of 128, are int8 and masks, at most 0.35x fp32's and 0.5x bf16's (the
targets), and its backward pass recomputes no ReLU (the masks are kept, so no layer's
recomputation reaches back into the residual stream); (3) unknown modes are refused;
(4) benchmarks.memory --resume keeps the rows an interrupted run wrote.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from benchmarks import memory as memory_bench
from daq_jax.models import resnet, resnet_cifar
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


def _assert_same(model: str, batch: int):
  (keep, keep_metrics), (int8, int8_metrics) = _step(model, KEEP, batch), _step(model, INT8, batch)
  for a, b in zip(
    *(jax.tree.leaves(t) for t in ((keep, keep_metrics), (int8, int8_metrics))), strict=True
  ):
    # gradients, parameters, optimizer and quantizer state, running statistics, loss
    np.testing.assert_array_equal(a, b)


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
  # int8 operands and the masks, a bit each (as float training keeps them: the zoo's ReLU);
  # what remains float, per-channel statistics and scales, is under 1 % of it
  assert kept["int8"]["uint8"] == kept["fp32"]["uint8"]
  assert kept["int8"]["int8"] + kept["int8"]["uint8"] > 0.99 * total["int8"]


def _relus(jaxpr, inside=False) -> dict:
  """{recomputed: how many}: ReLUs, max(x, 0) over an activation, in the forward pass and in a
  jax.checkpoint's backward pass (nested programs included)."""
  found = {False: 0, True: 0}
  zeros = set()  # the broadcast zeros an activation is compared with
  for eqn in jaxpr.eqns:
    recompute = inside or eqn.primitive.name == "remat2"
    operands = [v for v in eqn.invars if not isinstance(v, jax_core.Literal)]
    if eqn.primitive.name == "broadcast_in_dim" and not operands and eqn.invars[0].val == 0:
      zeros.add(eqn.outvars[0])
    literal_zero = any(isinstance(v, jax_core.Literal) and v.val == 0 for v in eqn.invars)
    if eqn.primitive.name == "max" and (literal_zero or zeros & set(operands)):
      found[recompute] += eqn.outvars[0].aval.size > memory.SMALL
    for sub in jax_core.jaxprs_in_params(eqn.params):
      for key, n in _relus(sub, recompute).items():
        found[key] += n
  return found


@pytest.mark.parametrize("relu", ["bits", "jax.nn.relu"])
def test_the_int8_mode_recomputes_no_relu(relu, monkeypatch):
  if relu == "jax.nn.relu":  # a model of one's own: its masks kept as bytes, by the policy
    monkeypatch.setattr(resnet, "relu", jax.nn.relu)
    monkeypatch.setattr(resnet_cifar, "relu", jax.nn.relu)
  built = memory_bench.abstract_step("resnet20", INT8, 8)
  loss, args = memory_bench.step_loss(built)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*args).jaxpr
  # 19 ReLUs run forward; none again in the backward pass: their masks are kept (recomputing
  # one after a residual addition would need the residual stream's float sum, block by block
  # from the first)
  assert _relus(jaxpr) == {False: 19, True: 0}
  kept = memory_bench.residuals(built)
  masks, other = ("uint8", "bool") if relu == "bits" else ("bool", "uint8")
  assert kept[masks] > 0 and other not in kept  # packed by the zoo's ReLU, or a byte each


def test_the_remat_control_lowers_the_recomputation():
  layers = 4
  control = memory_bench.remat_control(layers=layers, rows=256, width=128)
  # as written, the gradient keeps its activations (XLA's temp holds at least them); what the
  # checkpointed one keeps is the platform's (the CPU's: the same, the recomputation merged)
  assert control["plain_temp_bytes"] >= control["activation_bytes"] > 0
  assert control["remat_temp_bytes"] > 0
  # the checkpointed gradient recomputes every layer's product but the last one's
  lowered_plain, lowered_remat = control["plain_dots"][0], control["remat_dots"][0]
  assert lowered_remat == lowered_plain + layers - 1


def test_unknown_modes_are_refused():
  with pytest.raises(ValueError, match=r"memory mode 'bits' is not one of \('keep', 'int8'\)"):
    memory.with_mode(lambda x: x, "bits")


def test_the_benchmark_resumes_keeping_the_rows_it_has(tmp_path, capsys):
  out = tmp_path / "memory.json"
  stored = {"method": "fp32", "dtype": "float32", "memory": "keep", "residual_bytes": {"x": 1}}
  out.write_text(
    json.dumps(
      {
        "models": {"resnet20": {"batch": 128, "variants": {"fp32": stored}}},
        "remat_control": {"plain_temp_bytes": 1},
      }
    )
  )
  memory_bench.main(
    ["--models", "resnet20", "--variants", "bf16", "--no-compile", "--resume", "--out", str(out)]
  )
  payload = json.loads(out.read_text())
  assert payload["remat_control"] == {"plain_temp_bytes": 1}  # kept: not compiled again
  rows = payload["models"]["resnet20"]["variants"]
  assert rows["fp32"] == stored  # kept, not measured again
  assert rows["bf16"]["residual_bytes"]["bfloat16"] > 0  # the missing row, measured
  assert "| resnet20 | 128 | bf16 |" in capsys.readouterr().out
