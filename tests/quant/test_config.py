"""Config and presets: each preset sets the fields docs/method.md describes; bad input names the
problem; configs are hashable (they are static jit arguments)."""

import jax
import pytest

from daq_jax import quant


def test_presets_match_the_methods():
  assert quant.daq().wgrad_granularity == "per_channel" and quant.daq().wgrad_clip == "mcs"
  assert quant.gvq().wgrad_granularity == "per_channel" and quant.gvq().wgrad_clip == "max"
  assert quant.mcs().wgrad_granularity == "per_tensor" and quant.mcs().wgrad_clip == "mcs"
  pt = quant.per_tensor()
  assert (pt.wgrad_granularity, pt.wgrad_clip, pt.dgrad_clip) == ("per_tensor", "max", "max")
  u = quant.ui8()
  assert (u.wgrad_clip, u.dgrad_clip) == ("dsgc", "dsgc")
  assert (u.wgrad_rounding, u.dgrad_rounding) == ("stochastic", "stochastic")
  for cfg in (quant.daq(), quant.gvq(), quant.mcs(), quant.per_tensor()):
    assert (cfg.wgrad_rounding, cfg.dgrad_rounding) == ("nearest", "nearest")
  for cfg in (quant.daq(), quant.gvq(), quant.mcs(), quant.per_tensor(), quant.ui8()):
    assert cfg.dgrad_clip in ("max", "dsgc") and cfg.bits == 8
  # The rounding variants keep DAQ's scales and clipping exactly.
  sr, srw = quant.daq_sr(), quant.daq_sr_wgrad()
  assert sr.replace(grad_rounding="nearest") == quant.daq()
  assert srw.replace(wgrad_rounding="nearest") == quant.daq()
  assert (sr.wgrad_rounding, sr.dgrad_rounding) == ("stochastic", "stochastic")
  assert (srw.wgrad_rounding, srw.dgrad_rounding) == ("stochastic", "nearest")
  assert quant.fp32() is None and quant.preset("fp32") is None


def test_preset_by_name_with_overrides_and_hashable():
  cfg = quant.preset("daq", bell_threshold=0.25, impl="simulate")
  assert cfg.bell_threshold == 0.25 and cfg.impl == "simulate" and cfg.name == "daq"
  assert hash(cfg) == hash(quant.daq(bell_threshold=0.25, impl="simulate"))
  assert jax.jit(lambda x, c: x, static_argnums=1)(1.0, cfg) == 1.0
  assert cfg.replace(mcs_a=0.5).mcs_a == 0.5


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: quant.preset("int4"), "unknown quantization method 'int4'"),
    (lambda: quant.preset("daq", clip="max"), r"unknown quantization option\(s\) \['clip'\]"),
    (lambda: quant.preset("fp32", impl="xla"), "'fp32' takes no options"),
    (lambda: quant.daq(bits=4), "bits=4 is not supported"),
    (lambda: quant.daq(impl="cuda"), "impl='cuda' is not one of"),
    (lambda: quant.daq(wgrad_clip="percentile"), "wgrad_clip='percentile'"),
    (lambda: quant.daq(grad_rounding="up"), "grad_rounding='up' is not one of"),
    (lambda: quant.daq(wgrad_rounding="round"), "wgrad_rounding='round' is not one of"),
    (lambda: quant.daq(dgrad_rounding="sr"), r"dgrad_rounding='sr' is not one of \('nearest'"),
    (
      lambda: quant.QuantConfig(grad_rounding="stochastic", dgrad_rounding="nearest"),
      "grad_rounding='stochastic' sets both paths but dgrad_rounding='nearest'",
    ),
    (lambda: quant.daq(bell_threshold=1.5), "bell_threshold=1.5"),
    (lambda: quant.daq(mcs_a=0.0), "mcs_k=1.0, mcs_a=0.0"),
    (lambda: quant.ui8(dsgc_ratios=(0.0, 1.0)), "dsgc_ratios"),
  ],
)
def test_bad_config_names_the_problem(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_name_is_a_label_not_part_of_the_numerics():
  a, b = quant.daq(), quant.daq(name="my run")
  assert a == b and hash(a) == hash(b)
  assert quant.daq() != quant.gvq()


def test_impl_names_one_implementation_or_one_per_contraction():
  assert quant.daq().impls == ("auto", "auto", "auto")
  cfg = quant.daq(impl="simulate, xla ,im2col")
  assert cfg.impls == ("simulate", "xla", "im2col") and cfg.impl == "simulate,xla,im2col"
  with pytest.raises(ValueError, match="must name one implementation or three"):
    quant.daq(impl="xla,pallas")
  with pytest.raises(ValueError, match="impl='cuda' is not one of"):
    quant.daq(impl="xla,cuda,xla")


@pytest.mark.parametrize("field", ["lr_scale_alpha", "lr_scale_beta", "interpret"])
def test_fields_that_moved_out_of_the_config_are_unknown_options(field):
  # UI8's learning-rate scaling is optim.lr_scale_*; Pallas interprets itself off a GPU.
  with pytest.raises(ValueError, match=rf"unknown quantization option\(s\) \['{field}'\]"):
    quant.preset("ui8", **{field: 1.0})


def test_grad_rounding_is_the_shorthand_for_both_paths():
  both = quant.daq(grad_rounding="stochastic")
  assert both == quant.daq_sr() and both.stochastic
  # A per-path value given with the shorthand wins for its path (presets, replace).
  assert quant.gvq(grad_rounding="stochastic", dgrad_rounding="nearest").dgrad_rounding == "nearest"
  assert quant.ui8(grad_rounding="nearest") == quant.ui8().replace(
    wgrad_rounding="nearest", dgrad_rounding="nearest"
  )
  assert not quant.ui8(grad_rounding="nearest").stochastic
  assert quant.daq_sr_wgrad().stochastic and not quant.daq().stochastic
  # Every ablation preset takes the per-path option.
  for make in (quant.gvq, quant.mcs, quant.per_tensor, quant.ui8):
    assert make(wgrad_rounding="stochastic").wgrad_rounding == "stochastic"


def test_per_tensor_shares_one_quantized_g_only_when_both_paths_round_alike():
  assert quant.per_tensor().shared_gradient
  assert not quant.per_tensor(wgrad_rounding="stochastic").shared_gradient
  assert quant.per_tensor(grad_rounding="stochastic").shared_gradient


@pytest.mark.parametrize(
  "spec, want",
  [
    ("daq", quant.daq()),
    (" daq_sr ", quant.daq_sr()),
    ("daq(wgrad_rounding=stochastic)", quant.daq_sr_wgrad()),
    ("daq(wgrad_rounding='stochastic', dgrad_rounding=\"stochastic\")", quant.daq_sr()),
    ("gvq(grad_rounding=stochastic, mcs_a=0.5)", quant.gvq(grad_rounding="stochastic", mcs_a=0.5)),
    ("ui8(dsgc_ratios=(0.5, 1.0))", quant.ui8(dsgc_ratios=(0.5, 1.0))),
    ("fp32", None),
  ],
)
def test_a_method_spec_is_a_preset_with_options(spec, want):
  assert quant.from_spec(spec) == want


@pytest.mark.parametrize(
  "spec, match",
  [
    ("daq(wgrad_rounding=stocastic)", r"wgrad_rounding='stocastic' is not one of"),
    ("daq(rounding=stochastic)", r"unknown quantization option\(s\) \['rounding'\]"),
    ("dac", "unknown quantization method 'dac'"),
    ("daq(1)", "is not 'name' or 'name\\(option=value"),
    ("daq(", "is not 'name' or"),
    ("daq(mcs_a=__import__('os'))", "the value of mcs_a is not a literal"),
    ("fp32(impl=xla)", "'fp32' takes no options"),
  ],
)
def test_a_bad_method_spec_names_the_problem(spec, match):
  with pytest.raises(ValueError, match=match):
    quant.from_spec(spec)
