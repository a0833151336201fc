"""The model of a config: a zoo model or a user's own linen model, float, quantized by rules.

Strategy: a few steps of a plain linen CNN through the training code; its quantization state
shows which layers were quantized (the first conv and the classifier float by the flags, or
by explicit rules); bad paths and rules are one-line errors naming the key. The zoo's models
go the same way: the default rules keep exactly their `stem_conv` and `head` float, and
ResNet-20 so built has the parameters, state, loss and gradients of the model built with
QConv/QDense layers directly.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax.nn as qnn
from daq_jax import models, quant
from daq_jax.training import modeling, train_and_evaluate
from daq_jax.training.config import from_dict
from tests.training.common import tiny

USER = "tests.training.user_models.PlainCNN"


def test_a_user_model_trains_with_its_ends_float(tmp_path):
  cfg = tiny(
    **{
      "model.name": USER,
      "num_steps": 40,
      "log_every_steps": 10,
      "optim.base_learning_rate": 0.4,
      "quant.quantize_first_conv": False,
      "quant.quantize_last_dense": False,
    }
  )
  summary = train_and_evaluate(cfg, str(tmp_path))
  # It learns: measured (seed 0) train loss 2.322 -> 2.176 over the 40 steps, test loss 2.175
  # (2.179 in float32, the same run otherwise); chance is ln 10 = 2.303.
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert summary["step"] == 40 and len(losses) == 4
  assert losses[-1] < losses[0] - 0.08 and summary["eval_loss"] < 2.25, (losses, summary)
  model = modeling.create_model(from_dict(cfg), 10, (8, 8, 1))
  layers = model.layers({"params": jax.random.key(0)}, jax.numpy.zeros((2, 8, 8, 1)))
  assert {path: cfg is not None for path, (_, cfg) in layers.items()} == {
    "first": False,
    "second": True,
    "Dense_0": True,
    "classifier": False,
  }


def test_rules_choose_each_layers_method():
  cfg = from_dict(tiny(**{"model.name": USER, "quant.rules": "first:fp32; Dense_0:ui8; .*:daq"}))
  model = modeling.create_model(cfg, 10, (8, 8, 1))
  layers = model.layers({"params": jax.random.key(0)}, jax.numpy.zeros((2, 8, 8, 1)))
  names = {path: None if c is None else c.name for path, (_, c) in layers.items()}
  assert names == {"first": None, "second": "daq", "Dense_0": "ui8", "classifier": "daq"}
  # Rules reach the zoo's models too (their layers are then quantized by path).
  zoo = from_dict(tiny(**{"quant.rules": "stem_conv:fp32;.*:per_tensor"}))
  layers = modeling.create_model(zoo, 10, (8, 8, 1)).layers(
    {"params": jax.random.key(0)}, jax.numpy.zeros((2, 8, 8, 1))
  )
  assert layers["stem_conv"][1] is None and layers["conv1"][1].name == "per_tensor"


def test_rules_and_the_method_take_every_quantization_option():
  rules = "(stem|first)_conv:fp32; conv1:daq(wgrad_rounding=stochastic); .*:gvq(mcs_a=0.5)"
  zoo = from_dict(tiny(**{"quant.rules": rules}))
  layers = modeling.create_model(zoo, 10, (8, 8, 1)).layers(
    {"params": jax.random.key(0)}, jax.numpy.zeros((2, 8, 8, 1))
  )
  assert layers["stem_conv"][1] is None
  assert layers["conv1"][1] == quant.daq_sr_wgrad()
  assert layers["conv2"][1] == quant.gvq(mcs_a=0.5)
  cfg = from_dict(tiny(**{"quant.method": "daq(dgrad_rounding=stochastic, bell_threshold=0.25)"}))
  assert cfg.quant.layer_config() == quant.daq(dgrad_rounding="stochastic", bell_threshold=0.25)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"model.name": "tests.training.nowhere.Net"}, "does not import: ModuleNotFoundError"),
    ({"model.name": "tests.training.user_models.Missing"}, "has no 'Missing'"),
    ({"model.name": "tests.training.user_models.NOT_A_MODULE"}, "not a flax.linen Module"),
    ({"quant.rules": "conv0"}, "'conv0' is not 'regex:method'"),
    ({"quant.rules": "conv0:int4"}, "'conv0:int4': method spec 'int4': unknown quantization"),
    ({"quant.rules": "conv0:daq(wgrad_rounding=up)"}, "wgrad_rounding='up' is not one of"),
    ({"quant.rules": "conv0:daq(rounding=nearest)"}, r"unknown quantization option\(s\)"),
    ({"quant.rules": "(:daq"}, "is not a regex"),
  ],
)
def test_bad_models_and_rules_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    from_dict(tiny(**overrides))


def test_a_rule_that_matches_no_layer_of_the_configs_model_names_its_layers():
  cfg = from_dict(tiny(**{"quant.rules": "stem:fp32;.*:daq"}))
  with pytest.raises(
    ValueError,
    match=r"rule\(s\) \['stem'\] match no nn.Conv or nn.Dense of "
    r"SmallCNN; its layers are \['conv1', 'conv2', 'head', 'stem_conv'\]",
  ):
    modeling.create_model(cfg, 10, (8, 8, 1))


def test_a_model_with_the_wrong_number_of_logits_is_refused(tmp_path):
  cfg = tiny(**{"model.name": "tests.training.user_models.WrongWidth"})
  with pytest.raises(ValueError, match=r"to \(2, 3\), not to \(2, 10\) logits"):
    train_and_evaluate(cfg, str(tmp_path))


# Input sizes the zoo's models accept (Inception-v3 needs 75x75 at least; clips for video).
ZOO_SHAPES = {
  "inceptionv3": (75, 75, 3),
  "alexnet": (63, 63, 3),
  **{name: (4, 32, 32, 3) for name in models.VIDEO_MODELS},
}


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - set(models.DETECTION_MODELS)))
def test_the_default_rules_keep_the_zoos_stem_and_head_float(name):
  cfg = from_dict(
    tiny(
      **{"model.name": name, "quant.quantize_first_conv": False, "quant.quantize_last_dense": False}
    )
  )
  shape = ZOO_SHAPES.get(name, (32, 32, 3))
  layers, _ = modeling.probe(models.create(name, num_classes=10), shape)
  rules = quant.default_rules(layers, cfg.quant.layer_config())
  floats = [p for p, c in rules.assign([p for p, _ in layers], what="layer").items() if c is None]
  assert sorted(p.rsplit("/", 1)[-1] for p in floats) == ["head", "stem_conv"], floats


@pytest.mark.slow
def test_resnet20_through_the_rules_is_resnet20_built_with_quantized_layers():
  """The same parameter and state trees, and the same loss, gradients and new state to float32
  rounding, as `ResNet20(conv=QConv(quant=daq), dense=QDense(quant=daq))` with `stem_conv`
  and `head` float."""
  cfg = from_dict(
    tiny(
      **{
        "model.name": "resnet20",
        "quant.quantize_first_conv": False,
        "quant.quantize_last_dense": False,
        "quant.impl": "xla",
      }
    )
  )
  ruled = modeling.create_model(cfg, 10, (16, 16, 3))
  daq = cfg.quant.layer_config()

  def layer(cls, *args, name=None, **kwargs):
    quant_cfg = None if name in ("stem_conv", "head") else daq
    return cls(*args, name=name, quant=quant_cfg, **kwargs)

  direct = models.create(
    "resnet20",
    num_classes=10,
    conv=functools.partial(layer, qnn.QConv),
    dense=functools.partial(layer, qnn.QDense),
  )
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  labels = jnp.arange(8) % 10
  init = ruled.init({"params": jax.random.key(0)}, x, train=False)
  assert jax.tree.structure(init) == jax.tree.structure(
    direct.init({"params": jax.random.key(0)}, x, train=False)
  )

  def step(model):
    def loss_fn(params, quant_state):
      variables = {**init, "params": params, qnn.STATE_COLLECTION: quant_state}
      logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(8), labels])

    return jax.jit(quant.value_and_grad(loss_fn))(init["params"], init[qnn.STATE_COLLECTION])

  for got, want in zip(jax.tree.leaves(step(ruled)), jax.tree.leaves(step(direct)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_detector_is_quantized_whole_and_only_its_stem_stays_float_on_request():
  """Every conv of retinanet_small, backbone, FPN and heads, gets the method; with
  quantize_first_conv False only the backbone's stem stays float (a detector has no dense)."""
  import importlib

  base = importlib.import_module("configs.detection_default").get_config().to_dict()
  cfg = from_dict(base)
  model = modeling.create_model(cfg, 3, (96, 96, 3))
  layers, _ = modeling.probe(model.module, (96, 96, 3))
  assigned = cfg.quant.rule_set()
  rules = quant.default_rules(layers, cfg.quant.layer_config(), first_conv=False)
  floats = [p for p, c in rules.assign([p for p, _ in layers], what="layer").items() if c is None]
  assert floats == ["backbone/stem_conv"], floats
  assert not assigned.pairs  # the default config quantizes every conv: no rules needed
  assert {p.split("/")[0] for p, _ in layers} == {"backbone", "fpn", "class_head", "box_head"}
