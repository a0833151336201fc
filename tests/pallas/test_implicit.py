"""The implicit-GEMM int8 conv kernels and their implementations, impl="implicit" and
"implicit_fused".

Strategy: (1) kernel by kernel, `TestKernels` runs compiled (skipped without a GPU) and
`TestKernelsInterpret` reruns it in Pallas's interpreter: the integer sums equal XLA's int8 conv
(forward) and the transposed float conv (wgrad) exactly, over strides, padding, input and
kernel dilation and 1-D/2-D/3-D; quantize-on-load gives the jnp quantizer's codes (nearest and
stochastic, one scale or one per row or column); the wgrad's int32 flushes and split-K ranges
add up exactly; each kernel equals its jnp reference. (2) The quantized conv on both
implementations equals the float `simulate` oracle bit for bit with power-of-two data, for
DAQ (nearest), daq_sr (stochastic on both paths) and daq_sr_rows (per-row dgrad scales), over
the same geometries. (3) A ResNet-20 training step on impl="implicit" gives the xla path's
gradients and state (slow). (4) A grouped conv is refused by name, and auto traced for CUDA
picks another implementation for it and the implicit kernels for ungrouped convs, never
the im2col patches (the cost model's choice). The kernels compiled for sm_90a: test_ptx.py.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import daq_jax
from daq_jax import models, quant
from daq_jax.pallas import implicit_conv, implicit_wgrad
from daq_jax.quant import backends, conv_op, gradient, numerics
from daq_jax.quant.geometry import channels_last_dimension_numbers
from tests.helpers import CompiledOrInterpreted, pow2_tensor
from tests.quant.test_conv_op import _vjp
from tests.quant.test_dgrad_rows import _rows_pow2

# The interpreter's cost is per program: test tiles are small, so that programs are few and
# the tiling (several row tiles, masked channel and row tails) is still exercised.
SMALL = implicit_conv.ConvBlockSizes(block_m=64, block_n=16, block_k=16)

GEOMETRIES = {
  "2d": ((2, 8, 8, 16), (3, 3, 16, 24), {}),
  "strided": ((2, 9, 9, 16), (3, 3, 16, 24), dict(window_strides=2)),
  "dilated_transposed": (
    (2, 9, 9, 16),
    (3, 3, 16, 24),
    dict(window_strides=(2, 1), rhs_dilation=2, lhs_dilation=(1, 2), padding=((1, 2), (0, 1))),
  ),
  "pointwise_strided": ((2, 9, 8, 16), (1, 1, 16, 8), dict(window_strides=2)),
  "1d": ((2, 9, 16), (3, 16, 8), dict(padding="VALID")),
  "3d": ((2, 5, 6, 7, 16), (3, 3, 3, 16, 8), dict(window_strides=2)),
}
# The interpreted cases the fast set runs; the others are in the slow set.
FAST = ("2d", "strided")


def _cases(names=GEOMETRIES):
  return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _int8(key, shape):
  return jax.random.randint(key, shape, -127, 128).astype(jnp.int8)


def _spec(name):
  xs, ws, kw = GEOMETRIES[name]
  return xs, ws, conv_op.make_spec(xs, ws, **kw)


def _int32_conv(x, w, spec):
  dn = channels_last_dimension_numbers(x.ndim)
  out = lax.conv_general_dilated(
    x, w, dimension_numbers=dn, preferred_element_type=jnp.int32, **spec.conv_kwargs()
  )
  return out.astype(jnp.float32)


class TestKernels(CompiledOrInterpreted):
  def _conv(self, *args, **kwargs):
    return implicit_conv.int8_conv(*args, block_sizes=SMALL, interpret=self.interpret, **kwargs)

  def _wgrad(self, *args, **kwargs):
    kwargs.setdefault("block_sizes", SMALL)
    return implicit_wgrad.int8_conv_wgrad(*args, interpret=self.interpret, **kwargs)

  @pytest.mark.parametrize("name", _cases())
  def test_conv_integer_sums_equal_xla_int8_conv(self, name):
    xs, ws, spec = _spec(name)
    k = jax.random.split(jax.random.key(0))
    x, w = _int8(k[0], xs), _int8(k[1], ws)
    geometry = dict(lhs_shape=xs, rhs_shape=ws, spec=spec)
    got = self._conv(x, implicit_conv.kernel_taps(w), jnp.float32(1), **geometry)
    np.testing.assert_array_equal(got, _int32_conv(x, w, spec))
    reference = implicit_conv.int8_conv_reference(
      x, implicit_conv.kernel_taps(w), jnp.float32(1), **geometry
    )
    np.testing.assert_array_equal(reference, got)

  @pytest.mark.parametrize("name", _cases())
  def test_wgrad_integer_sums_equal_the_transposed_conv(self, name):
    xs, ws, spec = _spec(name)
    k = jax.random.split(jax.random.key(1))
    x = _int8(k[0], xs)
    conv = functools.partial(_float_conv, x.astype(jnp.float32), spec=spec)
    out_shape = jax.eval_shape(conv, jnp.zeros(ws)).shape
    g = _int8(k[1], out_shape)
    (want,) = jax.linear_transpose(conv, jnp.zeros(ws))(g.astype(jnp.float32))
    geometry = dict(lhs_shape=xs, rhs_shape=ws, spec=spec)
    g2d = g.reshape(-1, ws[-1])
    # three ranges of the reduction, summed by XLA
    got = self._wgrad(x, g2d, jnp.ones(ws[-1]), split_k=3, **geometry)
    np.testing.assert_array_equal(got, want)
    reference = implicit_wgrad.int8_conv_wgrad_reference(x, g2d, jnp.ones(ws[-1]), **geometry)
    np.testing.assert_array_equal(reference, want)

  def test_wgrad_flushes_its_int32_accumulator_exactly(self):
    # A reduction bound of 40 terms: the 128-row reduction flushes every 32 rows (2 steps of 16).
    xs, ws, spec = _spec("2d")
    x = jnp.full(xs, 127, jnp.int8)
    g = jnp.full((128, ws[-1]), 127, jnp.int8)
    sizes = implicit_conv.ConvBlockSizes(block_m=64, block_n=16, block_k=16, max_reduction=40)
    got = self._wgrad(
      x, g, jnp.ones(ws[-1]), lhs_shape=xs, rhs_shape=ws, spec=spec, split_k=1, block_sizes=sizes
    )
    want = implicit_wgrad.int8_conv_wgrad_reference(
      x, g, jnp.ones(ws[-1]), lhs_shape=xs, rhs_shape=ws, spec=spec
    )
    np.testing.assert_array_equal(got, want)

  @pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
  @pytest.mark.parametrize("per_row", [True, False])
  def test_conv_quantize_on_load_gives_the_jnp_quantizer_codes(self, rounding, per_row):
    xs, ws, spec = _spec("2d")
    k = jax.random.split(jax.random.key(2), 3)
    v = jax.random.normal(k[0], xs)
    w = _int8(k[1], ws)
    rows = numerics.max_abs(v, axis=-1, keepdims=True)
    scale = rows if per_row else numerics.max_abs(v)
    seed = numerics.seeds(k[2], 1)[0]
    inverse = numerics.inverse_step(jnp.reshape(scale, (-1,)) if per_row else scale)
    geometry = dict(lhs_shape=xs, rhs_shape=ws, spec=spec)
    got = self._conv(
      v,
      implicit_conv.kernel_taps(w),
      jnp.float32(1),
      None,
      inverse,
      seed,
      quantize=rounding,
      **geometry,
    )
    codes = numerics.quantize_tensor(v, scale, rounding=rounding, seed=seed)
    np.testing.assert_array_equal(got, _int32_conv(codes, w, spec))

  def test_conv_per_row_factors_scale_each_tap_by_its_source_row(self):
    xs, ws, spec = _spec("strided")
    k = jax.random.split(jax.random.key(3), 3)
    x, w = _int8(k[0], xs), _int8(k[1], ws)
    factor = 2.0 ** jax.random.randint(k[2], (xs[0] * xs[1] * xs[2],), -3, 3).astype(jnp.float32)
    geometry = dict(lhs_shape=xs, rhs_shape=ws, spec=spec)
    taps = implicit_conv.kernel_taps(w)
    got = self._conv(x, taps, jnp.float32(0.5), factor, **geometry)
    # powers of two: the scaled sums are exact, and equal the conv of the scaled input
    scaled = x.astype(jnp.float32) * factor.reshape(xs[:-1] + (1,))
    want = 0.5 * _float_conv(scaled, w.astype(jnp.float32), spec=spec)
    np.testing.assert_array_equal(got, want)
    reference = implicit_conv.int8_conv_reference(x, taps, jnp.float32(0.5), factor, **geometry)
    np.testing.assert_array_equal(reference, got)

  @pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
  def test_wgrad_quantize_on_load_gives_the_jnp_quantizer_codes(self, rounding):
    xs, ws, spec = _spec("2d")
    k = jax.random.split(jax.random.key(4), 3)
    x = _int8(k[0], xs)
    g = jax.random.normal(k[1], (xs[0] * xs[1] * xs[2], ws[-1]), jnp.bfloat16)
    scale = numerics.max_abs(g, axis=0)
    seed = numerics.seeds(k[2], 1)[0]
    geometry = dict(lhs_shape=xs, rhs_shape=ws, spec=spec)
    got = self._wgrad(
      x, g, jnp.ones(ws[-1]), numerics.inverse_step(scale), seed, quantize=rounding, **geometry
    )
    codes = numerics.quantize_tensor(g, scale, rounding=rounding, seed=seed)
    want = implicit_wgrad.int8_conv_wgrad_reference(x, codes, jnp.ones(ws[-1]), **geometry)
    np.testing.assert_array_equal(got, want)

  def test_bfloat16_output(self):
    xs, ws, spec = _spec("2d")
    k = jax.random.split(jax.random.key(5))
    x, w = _int8(k[0], xs), _int8(k[1], ws)
    scale = jnp.float32(1e-4)
    got = self._conv(
      x,
      implicit_conv.kernel_taps(w),
      scale,
      lhs_shape=xs,
      rhs_shape=ws,
      spec=spec,
      out_dtype=jnp.bfloat16,
    )
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, (_int32_conv(x, w, spec) * scale).astype(jnp.bfloat16))


class TestKernelsInterpret(TestKernels):
  interpret = True


def _float_conv(x, w, *, spec):
  return lax.conv_general_dilated(
    x,
    w,
    dimension_numbers=channels_last_dimension_numbers(x.ndim),
    precision=lax.Precision.HIGHEST,
    **spec.conv_kwargs(),
  )


def _exact_data(name, method):
  xs, ws, kw = GEOMETRIES[name]
  keys = jax.random.split(jax.random.key(0), 3)
  x, w = pow2_tensor(keys[0], xs, -3), pow2_tensor(keys[1], ws, -6)
  out_shape = jax.eval_shape(conv_op.make_spec(xs, ws, **kw).float_conv, x, w).shape
  rows = quant.preset(method).dgrad_granularity == "per_row"
  # per-row scales need every row's max to be a power of two times 127 too
  g = _rows_pow2(keys[2], out_shape, -2) if rows else pow2_tensor(keys[2], out_shape, -2, True)
  return x, w, g, kw


# One interpreted case per implementation in the fast set, the others in the slow set.
_OP_FAST = {("implicit", "daq_sr_rows", "2d"), ("implicit_fused", "daq_sr_rows", "strided")}
_OP_CASES = [
  (impl, method, name)
  for impl in ("implicit", "implicit_fused")
  for method, names in (
    ("daq_sr_rows", tuple(GEOMETRIES)),
    ("daq", ("2d", "strided", "dilated_transposed")),
    ("daq_sr", ("2d", "strided", "dilated_transposed")),
  )
  for name in names
]


@pytest.mark.parametrize(
  "impl, method, name",
  [c if c in _OP_FAST else pytest.param(*c, marks=pytest.mark.slow) for c in _OP_CASES],
)
def test_conv_op_equals_simulate_exactly_with_power_of_two_data(impl, method, name):
  x, w, g, kw = _exact_data(name, method)
  cfg = quant.preset(method, impl=impl)
  got = _vjp(cfg, x, w, g, **kw)
  want = _vjp(cfg.replace(impl="simulate"), x, w, g, **kw)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def _resnet20_step(cfg):
  """ResNet-20's loss, gradients and new quantizer state on 2 images, every conv quantized
  with `cfg` (the classifier float: the implementations' dense products differ)."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  labels = jnp.array([1, 7])
  qmodel = daq_jax.quantize(
    models.create("resnet20", num_classes=10), [("head", None), (".*", cfg)]
  )
  v = qmodel.init({"params": jax.random.key(1)}, x, train=False)

  def loss(params, state):
    variables = {"params": params, "batch_stats": v["batch_stats"], "quant_state": state}
    logits, _ = qmodel.apply(
      variables, x, train=True, mutable=["batch_stats"], rngs={"quant": jax.random.key(2)}
    )
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels])

  return jax.jit(quant.value_and_grad(loss))(v["params"], v["quant_state"])


def _relative_errors(got, want) -> list[float]:
  errors = []
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    errors.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)))
  return errors


# Relative L2 error of each loss, gradient and state leaf against another implementation.
RESNET20_TOLERANCE = {
  # the same int8 values and scale factors; XLA fuses the float work around each product
  # differently (measured: 6e-7 at most)
  "daq": 1e-5,
  # stochastic rounding: a last-bit difference moves a rounding across a level now and then,
  # and 19 layers compound it (measured: 1.0e-2 on the stem's kernel; the Pallas GEMM and
  # XLA's, the same algorithm, differ by 3.7e-3 the same way)
  "daq_sr_rows": 2e-2,
}


@pytest.mark.slow
def test_resnet20_step_gives_the_xla_gradients_and_state():
  got = _resnet20_step(quant.daq(impl="implicit"))
  want = _resnet20_step(quant.daq(impl="xla"))
  assert max(_relative_errors(got, want)) <= RESNET20_TOLERANCE["daq"]


@pytest.mark.slow
def test_resnet20_step_with_the_recommended_method():
  fused = _resnet20_step(quant.daq_sr_rows(impl="implicit_fused"))
  plain = _resnet20_step(quant.daq_sr_rows(impl="implicit"))
  # quantizing g on load gives the separate pass's codes: the same step bit for bit
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(a, b)
  want = _resnet20_step(quant.daq_sr_rows(impl="xla,im2col,xla"))  # auto's CPU plan
  assert max(_relative_errors(plain, want)) <= RESNET20_TOLERANCE["daq_sr_rows"]


def test_a_grouped_conv_is_refused_by_name_and_auto_picks_another_for_cuda():
  xs, ws = (2, 8, 8, 16), (3, 3, 4, 16)
  spec = conv_op.make_spec(xs, ws, feature_group_count=4)
  with pytest.raises(ValueError, match=r"impl='implicit'.*grouped conv \(4 groups\)"):
    backends.plan(quant.daq(impl="implicit"), spec, platform="cuda", shapes=(xs, ws))
  chosen = backends.plan(quant.daq(), spec, platform="cuda", shapes=(xs, ws), dtype="bfloat16")
  assert "implicit" not in "".join(chosen.names), chosen.names


@pytest.mark.parametrize("method", ["daq", "daq_sr_rows"])
def test_auto_for_cuda_picks_implicit_kernels_for_resnet50_convs(method):
  cfg = quant.preset(method)
  cases = [
    ((128, 56, 56, 64), (3, 3, 64, 64), {}),
    ((128, 56, 56, 64), (1, 1, 64, 256), {}),
    ((128, 28, 28, 128), (3, 3, 128, 128), dict(window_strides=2)),
    ((128, 7, 7, 512), (3, 3, 512, 512), {}),
  ]
  for xs, ws, kw in cases:
    spec = conv_op.make_spec(xs, ws, **kw)
    chosen = backends.plan(cfg, spec, platform="cuda", shapes=(xs, ws), dtype="bfloat16")
    assert all(n.startswith("implicit") for n in chosen.names), (xs, ws, chosen.names)
  # ... and the CPU keeps its measured row
  assert backends.plan(cfg, spec, platform="cpu", shapes=(xs, ws)).forward.name == "xla"


def test_a_layer_state_comes_out_the_same_from_the_deferred_quantizer():
  g = jax.random.normal(jax.random.key(6), (2, 4, 4, 8))
  cfg = quant.daq_sr_rows()
  state = gradient.init_state(cfg, 8)
  key = jax.random.key(7)
  now = gradient.quantize_gradient(g, state, cfg, key)
  later = gradient.quantize_gradient(g, state, cfg, key, defer=("dgrad", "wgrad"))
  assert isinstance(later.dgrad, numerics.Deferred) and isinstance(later.wgrad, numerics.Deferred)
  for a, b in zip(jax.tree.leaves(now.new_state), jax.tree.leaves(later.new_state), strict=True):
    np.testing.assert_array_equal(a, b)
  for path in ("dgrad", "wgrad"):
    np.testing.assert_array_equal(getattr(now, path).q, getattr(later, path).quantize().q)


@pytest.mark.slow
def test_no_3x3_conv_product_of_a_resnet50_step_for_cuda_materializes_a_patch_tensor():
  """train.py's ResNet-50 step (batch 128, 224 px, the recommended method, bf16 float parts,
  impl="auto") lowered for CUDA: no int8 tensor of the shape of a 3x3 layer's patches (9 * C_in
  or 9 * C_out wide) anywhere in the program; its products are the implicit kernels' Triton
  calls (the stem's 7x7 forward on 3 channels is the Pallas GEMM's, by the cost model)."""
  from daq_jax.data.info import DatasetInfo
  from daq_jax.pallas import ptx
  from daq_jax.training import modeling, optim, steps
  from daq_jax.training.config import from_dict

  batch, classes = 128, 1000
  cfg = from_dict(
    {"model": {"name": "resnet50", "dtype": "bfloat16"}, "batch_size": batch, "optim": {}}
  )
  info = DatasetInfo(tuple(map(str, range(classes))), (224, 224, 3), (0.5,) * 3, (0.25,) * 3, "")
  model = modeling.create_model(cfg, classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 100, 1000)
  state = jax.eval_shape(lambda: steps.init_train_state(model, tx, info, 0))
  images = jax.ShapeDtypeStruct((batch, *info.image_shape), jnp.uint8)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  step = functools.partial(
    steps.train_step, model=model, tx=tx, info=info, label_smoothing=0.0, input_dtype=jnp.bfloat16
  )
  lowered = ptx.lower_for_cuda(step, state, {"image": images, "label": labels})
  text = lowered.as_text()
  widths = {9 * c for c in (64, 128, 256, 512)}
  patches = [
    dims
    for dims in re.findall(r"tensor<((?:\d+x)+)i8>", text)
    if widths & {int(d) for d in dims.rstrip("x").split("x")}
  ]
  assert patches == [], patches[:5]
  kernels = {k.name for k in ptx.triton_kernels(lowered)}
  assert {"_conv_kernel", "_wgrad_kernel"} <= kernels, kernels
