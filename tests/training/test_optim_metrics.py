"""The optimizer pieces (learning-rate schedules with warmup and batch scaling, the weight-
decay mask, UI8's per-layer deviation scaling) and the metric files (TensorBoard framing and
CRC-32C, read back by an independent reader)."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax.training import optim
from daq_jax.training.config import OptimConfig
from daq_jax.training.metrics import MetricWriter


def test_the_peak_learning_rate_scales_with_the_batch():
  cfg = OptimConfig(base_learning_rate=0.1, base_batch_size=256)
  assert optim.peak_learning_rate(cfg, 1024) == pytest.approx(0.4)


def test_warmup_then_cosine():
  cfg = OptimConfig(base_learning_rate=0.1, base_batch_size=100, warmup_epochs=1)
  lr = optim.schedule(cfg, batch_size=100, steps_per_epoch=10, total_steps=110)
  assert float(lr(0)) == 0 and float(lr(5)) == pytest.approx(0.05)
  assert float(lr(10)) == pytest.approx(0.1)
  assert float(lr(60)) == pytest.approx(0.05, rel=1e-5)  # half way through the cosine
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_at_the_given_epochs():
  cfg = OptimConfig(
    base_learning_rate=0.1,
    base_batch_size=10,
    schedule="step",
    warmup_epochs=0.0,
    decay_epochs=(2, 3),
  )
  lr = optim.schedule(cfg, batch_size=10, steps_per_epoch=5, total_steps=20)
  assert [round(float(lr(s)), 6) for s in (0, 9, 10, 14, 15, 19)] == [
    0.1,
    0.1,
    0.01,
    0.01,
    0.001,
    0.001,
  ]


def test_weight_decay_skips_biases_and_batch_norm():
  params = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
    "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
  }
  tx = optim.make_optimizer(OptimConfig(weight_decay=0.5, momentum=0.0), 1.0)
  zeros = {k: {n: jnp.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(updates["conv"]["kernel"][0, 0, 0, 0]) == -0.5
  assert float(jnp.abs(updates["conv"]["bias"]).max()) == 0
  assert float(jnp.abs(updates["bn"]["scale"]).max()) == 0


def test_gradient_clipping_bounds_the_global_norm_before_weight_decay():
  params = {"conv": {"kernel": jnp.ones((1, 2))}}
  cfg = OptimConfig(weight_decay=0.5, momentum=0.0, grad_clip_norm=5.0)
  tx = optim.make_optimizer(cfg, 1.0)
  # Norm 50: clipped to norm 5, (3, 4), then the decay of the unit kernel (0.5) added.
  updates, _ = tx.update({"conv": {"kernel": jnp.array([[30.0, 40.0]])}}, tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], [[-3.5, -4.5]], rtol=1e-6)
  # Below the bound: unchanged.
  updates, _ = tx.update({"conv": {"kernel": jnp.array([[0.3, 0.4]])}}, tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], [[-0.8, -0.9]], rtol=1e-6)


def test_deviation_scaling_multiplies_each_layer_by_its_factor():
  grads = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "b": {"kernel": jnp.ones(2)}}
  quant_state = {"a": {"quant": {"wgrad_clip": jnp.ones(2), "deviation": jnp.float32(0.05)}}}
  tx = optim.scale_by_deviation(alpha=20.0, beta=0.1)
  updates, state = tx.update(grads, tx.init(grads), quant_state=quant_state)
  assert float(updates["a"]["kernel"][0, 0]) == pytest.approx(math.exp(-1.0))
  assert float(updates["a"]["bias"][0]) == pytest.approx(math.exp(-1.0))
  assert float(updates["b"]["kernel"][0]) == 1.0
  # beta bounds the factor from below.
  quant_state["a"]["quant"]["deviation"] = jnp.float32(1.0)
  updates, _ = tx.update(grads, state, quant_state=quant_state)
  assert float(updates["a"]["kernel"][0, 0]) == pytest.approx(0.1)


class _Terminal:
  def __init__(self):
    self.text = ""

  def isatty(self):
    return True

  def write(self, s):
    self.text += s

  def flush(self):
    pass


def test_progress_bar_on_a_terminal_shows_eta(tmp_path):
  term = _Terminal()
  writer = MetricWriter(str(tmp_path), total_steps=100, stream=term)
  writer.write(10, {"loss": 1.0, "accuracy": 0.5, "images_per_s": 100.0})
  writer.write(20, {"loss": 0.5, "accuracy": 0.75, "images_per_s": 100.0})
  writer.close()
  assert "\r[####" in term.text and "20/100 loss 0.5000 acc 0.750" in term.text
  assert "ETA 0:0" in term.text
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert [x["step"] for x in lines] == [10, 20] and lines[1]["train/loss"] == 0.5
