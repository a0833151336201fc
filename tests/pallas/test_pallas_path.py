"""impl="pallas": the quantized ops on the Pallas GEMM give the results of impl="xla".

Strategy: `TestPallasPath` runs on a GPU, where the kernels are compiled (skipped elsewhere),
and `TestPallasPathInterpret` reruns it on the CPU, where the same program interprets them
(the choice is made when the program is traced, by `backends.target_platform`). For every geometry
(grouped and depthwise included) the forward output and both gradients match the xla path to
float32 rounding (the int8 values and integer sums are identical; only the order of the float
scaling differs) and the new state is identical on a first step; a QConv/QDense training step
agrees too (state to float32 rounding: see test_grad_quant.py). The lowered step keeps
int8 x int8 -> int32 inside the kernels; lowered for CUDA it is Triton calls, lowered for the
CPU it has none.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.pallas import ptx
from daq_jax.quant import conv_op, gradient, lowering
from tests.helpers import CompiledOrInterpreted, assert_close

RTOL = 1e-6  # same integers, float32 scales applied in another order

GEOMETRIES = {
  "2d": ((2, 8, 8, 4), (3, 3, 4, 6), {}),
  "strided": ((2, 9, 9, 4), (3, 3, 4, 6), dict(window_strides=2)),
  "dilated_transposed": (
    (2, 9, 9, 4),
    (3, 3, 4, 6),
    dict(window_strides=(2, 1), rhs_dilation=2, lhs_dilation=(1, 2), padding=((1, 2), (0, 1))),
  ),
  "1d": ((2, 9, 4), (3, 4, 8), dict(padding="VALID")),
  "3d": ((2, 4, 5, 6, 3), (3, 3, 3, 3, 4), dict(window_strides=2)),
  "grouped": ((2, 8, 8, 4), (3, 3, 2, 6), dict(feature_group_count=2, window_strides=2)),
  "depthwise": ((2, 8, 8, 6), (3, 3, 1, 12), dict(feature_group_count=6)),
}


def _conv_vjp(impl, method, x, w, g, **kw):
  cfg = quant.preset(method, impl=impl)
  state = gradient.init_state(cfg, w.shape[-1])
  key = jax.random.key(5) if cfg.stochastic else None

  @jax.jit  # one compilation per case, not one per eager op
  def run(x, w, state, g, key):
    y, vjp = jax.vjp(lambda a, b, s: quant.conv_general(a, b, s, key, cfg=cfg, **kw), x, w, state)
    return (y, *vjp(g))

  return run(x, w, state, g, key)


class TestPallasPath(CompiledOrInterpreted):
  """Compiled kernels (skipped without a GPU); the subclass interprets them on the CPU.

  On a GPU the reference is the float `simulate` path: XLA's own int8 convolutions there are
  cuDNN forward-only and may not compile, and that must not hide what the kernels do.
  """

  reference = "simulate"

  @pytest.mark.parametrize(
    "name, method",
    [(name, method) for method in ("daq", "per_tensor") for name in GEOMETRIES]
    # per-row dgrad scales: the GEMM + col2im dgrad on the Pallas GEMM
    + [(name, "daq_sr_wgrad_rows") for name in ("2d", "strided", "grouped")]
    + [("strided", "daq_sr_rows")],  # ... with stochastic rounding on dgrad too
  )
  def test_conv_matches_xla(self, name, method):
    xs, ws, kw = GEOMETRIES[name]
    keys = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(keys[0], xs), jax.random.normal(keys[1], ws)
    spec = conv_op.make_spec(xs, ws, **kw)
    g = jax.random.normal(keys[2], jax.eval_shape(spec.float_conv, x, w).shape)
    got = _conv_vjp("pallas", method, x, w, g, **kw)
    # xla's int8 convolution cannot take per-row scales: its im2col twin is the reference.
    rows = quant.preset(method).dgrad_granularity == "per_row"
    reference = "im2col" if rows and self.reference == "xla" else self.reference
    want = _conv_vjp(reference, method, x, w, g, **kw)
    for a, b in zip(got[:3], want[:3], strict=True):
      assert_close(a, b, RTOL)
    for a, b in zip(jax.tree.leaves(got[3]), jax.tree.leaves(want[3]), strict=True):
      np.testing.assert_array_equal(a, b)

  def test_dense_matches_xla(self):
    keys = jax.random.split(jax.random.key(1), 3)
    x, w, g = (
      jax.random.normal(keys[0], (3, 5, 40)),
      jax.random.normal(keys[1], (40, 12)),
      jax.random.normal(keys[2], (3, 5, 12)),
    )
    results = []
    for cfg in (quant.daq(impl="pallas"), quant.daq(impl=self.reference)):
      y, vjp = jax.vjp(
        lambda a, b, s, c=cfg: quant.dense(a, b, s, cfg=c), x, w, gradient.init_state(cfg, 12)
      )
      results.append((y, *vjp(g)))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
      assert_close(a, b, RTOL)

  def test_training_step_gives_the_xla_gradients_and_state(self):
    (step_p, v), (step_x, _) = _step("pallas"), _step(self.reference)
    loss_p, grads_p, state_p = jax.jit(step_p)(v["params"], v["quant_state"])
    loss_x, grads_x, state_x = jax.jit(step_x)(v["params"], v["quant_state"])
    assert_close(loss_p, loss_x, RTOL)
    for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_x), strict=True):
      assert_close(a, b, 1e-5)  # float rounding compounds through three layers
    for a, b in zip(jax.tree.leaves(state_p), jax.tree.leaves(state_x), strict=True):
      assert_close(a, b, 1e-5)


class TestPallasPathInterpret(TestPallasPath):
  interpret = True
  reference = "xla"


class _Net(nn.Module):
  quant: object

  @nn.compact
  def __call__(self, x):
    x = nn.relu(qnn.QConv(8, (3, 3), quant=self.quant)(x))
    x = nn.relu(qnn.QConv(8, (3, 3), strides=2, quant=self.quant)(x))
    return qnn.QDense(10, quant=self.quant)(x.reshape(x.shape[0], -1))


def _step(impl):
  net = _Net(quant.daq(impl=impl))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  # The parameters do not depend on the config: initialise through the float oracle, so that
  # no compiled kernel has to run where there is no GPU.
  v = _Net(quant.daq(impl="simulate")).init(jax.random.key(1), x)

  def loss(params, state):
    return jnp.mean(net.apply({"params": params, "quant_state": state}, x) ** 2)

  return quant.value_and_grad(loss), v


def test_kernels_contract_int8_and_lower_to_triton_for_cuda():
  step, v = _step("pallas")
  found = lowering.contractions(step, v["params"], v["quant_state"])
  assert found and all(c.is_int8 for c in found), found
  # Traced for a GPU (an abstract CUDA device), the same program takes the compiled kernels.
  lowered = ptx.lower_for_cuda(step, v["params"], v["quant_state"])
  # forward of 3 layers, wgrad of 3, dgrad of the 2 layers whose input gradient is needed
  text = lowered.as_text()
  assert text.count("xla.gpu.triton") >= 8
  # ... and the CPU lowering only the interpreted ones.
  assert "xla.gpu.triton" not in jax.jit(step).lower(v["params"], v["quant_state"]).as_text()
