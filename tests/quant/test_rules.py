"""The rules that decide each layer's config.

Strategy: the rules module knows only paths and kinds, so it is tested on lists of paths: the
first full match decides (not a search, not the last match), a rule matching no layer is an
error listing the layers, bad rules are one-line errors, the default rules keep exactly the
first conv and the last dense float, and the command-line grammar gives the same rules as the
pairs written out.
"""

import pytest

from daq_jax import quant
from daq_jax.quant.rules import Rules, default_rules, parse

DAQ, UI8 = quant.daq(), quant.ui8()
PATHS = ["stem_conv", "stage1/block0/conv1", "stage1/block0/conv2", "head"]


def test_the_first_full_match_decides():
  rules = Rules.of([(r"stage1/.*", UI8), (r".*conv1", None), (r".*", DAQ)])
  assert rules.decide("stage1/block0/conv1") == (0, UI8)  # the first rule, not the second
  assert rules.decide("stage2/block0/conv1") == (1, None)
  assert rules.decide("head") == (2, DAQ)
  # A full match: "conv1" alone does not match "stage1/block0/conv1".
  assert Rules.of([("conv1", DAQ)]).decide("stage1/block0/conv1") == (None, None)


def test_a_dict_a_list_and_rules_are_the_same_rules():
  pairs = [(r".*stem.*", None), (r".*", DAQ)]
  assert Rules.of(dict(pairs)) == Rules.of(pairs) == Rules.of(Rules.of(pairs))


def test_assign_gives_every_layer_its_config_and_unmatched_layers_stay_float():
  rules = Rules.of([(r".*/conv\d", DAQ)])
  assert rules.assign(PATHS, what="layer") == {
    "stem_conv": None,
    "stage1/block0/conv1": DAQ,
    "stage1/block0/conv2": DAQ,
    "head": None,
  }


def test_a_rule_that_matches_no_layer_is_an_error_listing_the_layers():
  rules = Rules.of([("stem", None), (".*", DAQ)])
  with pytest.raises(
    ValueError,
    match=r"rule\(s\) \['stem'\] match no nn.Conv of Net; its "
    r"layers are \['head', 'stage1/block0/conv1'",
  ):
    rules.assign(PATHS, what="nn.Conv of Net")


@pytest.mark.parametrize(
  "rules, message",
  [
    ([("a", DAQ, 1)], "is not a \\(regex, QuantConfig or None\\) pair"),
    ([(3, DAQ)], "is not a \\(regex, QuantConfig or None\\) pair"),
    ([("a", "daq")], "maps to 'daq', not a QuantConfig"),
    ([("(", DAQ)], "rule '\\(' is not a regex"),
  ],
)
def test_bad_rules_are_one_line_errors(rules, message):
  with pytest.raises(ValueError, match=message):
    Rules.of(rules)


LAYERS = [
  ("stem", "conv"),
  ("a/conv", "conv"),
  ("a/fc", "dense"),
  ("b/conv", "conv"),
  ("classifier", "dense"),
]


@pytest.mark.parametrize(
  "first_conv, last_dense, floats",
  [
    (False, False, {"stem", "classifier"}),
    (True, False, {"classifier"}),
    (False, True, {"stem"}),
    (True, True, set()),
  ],
)
def test_the_default_rules_keep_the_first_conv_and_the_last_dense_float(
  first_conv, last_dense, floats
):
  rules = default_rules(LAYERS, DAQ, first_conv=first_conv, last_dense=last_dense)
  assigned = rules.assign([p for p, _ in LAYERS], what="layer")
  assert {p for p, cfg in assigned.items() if cfg is None} == floats
  assert all(cfg == DAQ for p, cfg in assigned.items() if p not in floats)


def test_the_default_rules_escape_paths_and_fit_models_without_a_dense_layer():
  layers = [("stem.conv[0]", "conv"), ("stemXconv[0]", "conv")]
  assigned = default_rules(layers, DAQ).assign([p for p, _ in layers], what="layer")
  assert assigned == {"stem.conv[0]": None, "stemXconv[0]": DAQ}  # '.' is not a wildcard
  # A model with no layer to quantize is not trained in float unseen.
  with pytest.raises(ValueError, match=r"rule\(s\) \['\.\*'\] match no layer"):
    default_rules([], DAQ).assign([], what="layer")


def test_the_command_line_grammar_gives_the_rules_written_out():
  text = "(stem|first)_conv:fp32; a:b:c:daq(wgrad_rounding=stochastic) ; .*:ui8"
  assert parse(text, impl="xla") == Rules.of(
    [
      ("(stem|first)_conv", None),
      ("a:b:c", quant.daq_sr_wgrad(impl="xla")),  # the regex may hold colons
      (".*", quant.ui8(impl="xla")),
    ]
  )
  assert parse("").pairs == ()


@pytest.mark.parametrize(
  "text, message",
  [
    ("conv0", "'conv0' is not 'regex:method'"),
    (":daq", "':daq' is not 'regex:method'"),
    ("conv0:int4", "'conv0:int4': method spec 'int4': unknown"),
    ("(:daq", "is not a regex"),
  ],
)
def test_bad_command_line_rules_name_the_rule(text, message):
  with pytest.raises(ValueError, match=message):
    parse(text)
