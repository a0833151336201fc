"""The inspection helper reports one row per quantized layer call, with values that agree with
what the quantizer and the ops do (first-step DAQ does not clip; per-tensor scales are at
least each channel's max; int8 gradients stay close to float)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.analysis import layer_reports


class _Net(nn.Module):
  quant: object

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(qnn.QConv(8, (3, 3), quant=self.quant)(x))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(qnn.QConv(8, (3, 3), strides=2, feature_group_count=8, quant=self.quant)(x))
    x = nn.Dense(8)(x.mean((1, 2)))  # a float layer: not reported
    return qnn.QDense(10, quant=self.quant)(x)


def _loss(out):
  logits, _ = out
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["daq", "per_tensor", "ui8"])
def test_reports_one_row_per_quantized_layer(method):
  cfg = quant.preset(method)
  net = _Net(cfg)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  v = net.init(jax.random.key(1), x)
  reports = layer_reports.inspect_gradients(net, v, _loss, x, mutable=["batch_stats"])
  assert [r.path for r in reports] == ["QConv_0", "QConv_1", "QDense_0"]
  for r in reports:
    assert r.method == method and 0.0 <= r.bell_fraction <= 1.0
    assert min(r.wgrad_g_cosine, r.dgrad_g_cosine, r.dw_cosine, r.dx_cosine) > 0.99
    assert 0.0 <= r.dw_rel_error < 0.1 and 0.0 <= r.dx_rel_error < 0.1
    if method == "daq":  # no history yet: every channel's clip is its max
      assert r.clip_ratio_mean == pytest.approx(1.0) and r.clip_ratio_min == pytest.approx(1.0)
    if method == "per_tensor":  # one tensor-wide max is at least every channel's max
      assert r.clip_ratio_min >= 1.0 - 1e-6
  table = layer_reports.format_reports(reports)
  assert table.count("\n") == 3 and "QDense_0" in table
