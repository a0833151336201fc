"""impl="auto": the table's pick per platform and contraction, fallbacks with a logged
reason, clear errors, and the same numbers as the implementation it picks.

The platform is decided at trace time; lowering inside an abstract mesh of a CUDA device
(`ptx.lower_for_cuda`) traces for CUDA on this CPU machine, so the GPU row is exercised here
too (its programs are lowered, not run).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax import quant
from daq_jax.pallas import ptx
from daq_jax.quant import backends, gradient, lowering
from daq_jax.quant.backends import auto
from daq_jax.quant.geometry import make_spec

PLAIN = make_spec((2, 8, 8, 16), (3, 3, 16, 32), padding="SAME")
GROUPED = make_spec((2, 8, 8, 16), (3, 3, 4, 32), padding="SAME", feature_group_count=4)


def test_the_cpu_plan_is_todays_xla_path():
  assert quant.daq().impl == "auto"
  assert backends.plan(quant.daq(), PLAIN, "cpu").names == ("xla", "xla", "xla")
  assert backends.plan(quant.daq(), None, "cpu").names == ("xla", "xla", "xla")
  if jax.default_backend() == "cpu":
    assert backends.target_platform() == "cpu"


def test_the_cuda_plan_is_the_cost_models_pick_until_a_gpu_measures_it():
  # Written out, not read from auto.TABLE: a changed table must change this test with it.
  # Without shapes, the table's order: the implicit-GEMM kernels first.
  assert backends.plan(quant.daq(), PLAIN, "cuda").names == ("implicit",) * 3
  assert backends.plan(quant.daq(), PLAIN, "rocm").names == ("im2col", "im2col", "im2col")
  assert auto.MODELLED == ("cuda",)
  # With shapes, the plan the roofline model predicts fastest among the supported ones.
  shapes = ((128, 56, 56, 64), (3, 3, 64, 64))
  spec = make_spec(*shapes, padding="SAME")
  chosen = backends.plan(quant.daq(), spec, "cuda", shapes=shapes, dtype="bfloat16")
  options = tuple(("implicit", "im2col", "xla", "pallas", "implicit_fused") for _ in range(3))
  predicted = auto.predicted(quant.daq(), spec, shapes, "bfloat16", options)
  assert chosen.names == predicted
  assert all(name.startswith("implicit") for name in chosen.names)
  assert all("simulate" not in row for table in auto.TABLE.values() for row in table.values())


def test_grouped_int8_convs_never_go_to_cudnn(caplog):
  # Make xla the first choice on cuda, as a measured table may: a grouped conv falls back.
  table = dict(auto.TABLE["cuda"], forward=("xla", "im2col"))
  with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, "daq_jax.quant"):
    mp.setitem(auto.TABLE, "cuda", table)
    auto.log_skip.cache_clear()
    chosen = backends.choose("auto", "forward", GROUPED, "cuda")
    assert backends.choose("auto", "forward", PLAIN, "cuda").name == "xla"
  assert chosen.name == "im2col"
  assert "forward skips xla (a grouped (4 groups) int8 convolution" in caplog.text
  assert "openxla/xla#49123" in caplog.text
  # The same layer named explicitly is an error that says why, never a wrong answer.
  with pytest.raises(ValueError, match="impl='xla' cannot compute the dgrad product"):
    backends.choose("xla", "dgrad", GROUPED, "cuda")
  # The CPU, where XLA's grouped int8 convs are right, keeps them.
  assert backends.choose("xla", "forward", GROUPED, "cpu").name == "xla"


def test_no_candidate_left_is_an_error_naming_each_reason():
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(auto.TABLE, "cuda", dict(auto.TABLE["cuda"], dgrad=("xla",)))
    with pytest.raises(ValueError, match=r"no implementation of the dgrad product.*xla: a grouped"):
      backends.choose("auto", "dgrad", GROUPED, "cuda")


def _layer_grads(cfg, x, w):
  state = gradient.init_state(cfg, w.shape[-1])

  def loss(x, w, s):
    return jnp.sum(quant.conv_general(x, w, s, cfg=cfg, padding="SAME") ** 2)

  return jax.grad(loss, argnums=(0, 1, 2))(x, w, state)[:2]


def test_auto_gives_the_numbers_of_the_implementation_it_picks():
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (2, 8, 8, 16))
  w = jax.random.normal(keys[1], (3, 3, 16, 32))
  picked = ",".join(backends.plan(quant.daq(), PLAIN).names)
  for got, want in zip(
    _layer_grads(quant.daq(), x, w), _layer_grads(quant.daq(impl=picked), x, w), strict=True
  ):
    np.testing.assert_array_equal(got, want)


def test_a_program_traced_for_cuda_uses_the_cuda_row_and_stays_int8():
  cfg = quant.daq()
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32)
  fn = lambda x, w: _layer_grads(cfg, x, w)
  # Traced for CUDA, the products are the implicit-GEMM kernels: their jaxprs' dots are int8
  # x int8 -> int32, and XLA is handed Triton calls with no float contraction beside them.
  with ptx.cuda_tracing():
    found = lowering.contractions(fn, x, w)
  assert len(found) >= 3 and all(c.is_int8 for c in found), found
  text = ptx.lower_for_cuda(fn, x, w).as_text()
  assert "xla.gpu.triton" in text
  assert all(c[1:] == (("i8", "i8"), "i32") for c in lowering.text_contractions(text))
  if jax.default_backend() == "cpu":
    cpu = lowering.hlo_contractions(lambda x, w: _layer_grads(cfg, x, w), x, w)
    assert "convolution" in {op for op, _, _ in cpu}


def test_describe_says_what_auto_resolves_to():
  assert backends.describe("auto", "cpu") == "auto: xla,xla,xla on cpu"
  assert backends.describe("xla,auto,im2col", "cpu") == "xla,auto,im2col: xla,xla,im2col on cpu"
  assert backends.describe("im2col") == "im2col"
  rows = backends.describe("auto", "cpu", dgrad_rows=True)
  assert rows == "auto: xla,im2col,xla on cpu"


def test_the_cpu_plan_of_a_3d_conv_puts_forward_and_dgrad_on_im2col():
  # Written out; the evidence is benchmarks/results/ops3d_cpu.json (auto.py says how).
  spec = make_spec((2, 4, 8, 8, 16), (3, 3, 3, 16, 32))
  assert backends.plan(quant.daq(), spec, "cpu").names == ("im2col", "im2col", "xla")
  assert backends.plan(quant.daq(), spec, "cuda").names == ("implicit",) * 3
  flat = make_spec((2, 8, 8, 16), (3, 3, 16, 32))
  assert backends.plan(quant.daq(), flat, "cpu").names == ("xla", "xla", "xla")


def test_the_recommended_methods_own_plan_is_logged_at_info_not_warning(caplog):
  # Per-row dgrad scales always skip xla's int8 conv on the CPU: the config's own plan, no
  # surprise to warn of (a grouped conv on a GPU stays a warning, above).
  auto.log_skip.cache_clear()
  with caplog.at_level(logging.INFO, "daq_jax.quant"):
    backends.plan(quant.preset(quant.config.RECOMMENDED), PLAIN, "cpu")
  skips = [r for r in caplog.records if "dgrad skips xla (per-row g scales" in r.getMessage()]
  assert skips and all(r.levelno == logging.INFO for r in skips)
