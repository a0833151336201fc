"""The quantization config: one frozen, hashable dataclass and its named presets.

A config describes how one quantized layer treats its operands and its output gradient. It is
hashable so that it can be a static jit argument and a `nondiff_argnums` entry of the
quantized ops' custom VJPs.

References:
  Zhao et al., "Distribution Adaptive INT8 Quantization for Training CNNs", AAAI 2021.
  Zhu et al., "Towards Unified INT8 Training for Convolutional Neural Network", CVPR 2020.
"""

from __future__ import annotations

import ast
import dataclasses
import functools

# The registered implementations of the int8 products (daq_jax.quant.backends); "auto" picks
# one of them per platform and contraction (daq_jax.quant.backends.auto).
IMPLS = ("xla", "simulate", "im2col", "pallas", "implicit", "implicit_fused")
AUTO = "auto"
CONTRACTIONS = ("forward", "dgrad", "wgrad")
GRANULARITIES = ("per_channel", "per_tensor")
DGRAD_GRANULARITIES = ("per_tensor", "per_row")
CLIPS = ("max", "mcs", "dsgc")
ROUNDINGS = ("nearest", "stochastic")
METHODS = (
  "fp32",
  "per_tensor",
  "daq",
  "daq_sr",
  "daq_sr_wgrad",
  "daq_sr_wgrad_rows",
  "daq_sr_rows",
  "ui8",
  "gvq",
  "mcs",
)
# The method the project recommends, and every default config trains: the one the multi-seed
# accuracy (docs/accuracy.md) shows best. DAQ's per-channel wgrad scales and clipping, with
# stochastic rounding of g on both paths and one dgrad scale per output position: over 4 seeds
# of 4-epoch ResNet-20 it is level with float32 in top-1 and final train loss, where the
# paper's nearest rounding (`daq`) and stochastic rounding on wgrad only (`daq_sr_wgrad`) end
# 1.24 and 0.86 points below, their train losses above float32's; on the detector (gradient
# clipped) it is level with float32 in mAP and train loss, daq's loss above; on the video
# model it is 0.09 below float32 where daq is 4.26 below. The README's table has all four.
RECOMMENDED = "daq_sr_rows"


def parse_impls(impl: str) -> tuple[str, ...]:
  """The implementation names of an `impl` string: one, or three for forward, dgrad, wgrad.

  Raises:
    ValueError: for another count or an unregistered name.
  """
  names = tuple(name.strip() for name in str(impl).split(","))
  if len(names) not in (1, 3):
    raise ValueError(
      f"quant config: impl={impl!r} must name one implementation or three, for "
      f"{', '.join(CONTRACTIONS)}"
    )
  for name in names:
    _check_choice("impl", name, (AUTO, *IMPLS))
  return names


@functools.cache  # parsed once per impl string, however many layers and traces ask
def contraction_impls(impl: str) -> tuple[str, str, str]:
  """The names of `impl` for the forward product, dgrad and wgrad (one name: all three)."""
  names = parse_impls(impl)
  return names * 3 if len(names) == 1 else names


def _check_choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"quant config: {name}={value!r} is not one of {allowed}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
  """How a quantized conv or dense layer quantizes its forward and backward passes.

  Forward: the activation and the weight are quantized with one max-abs scale each. Backward:
  the output gradient g is quantized twice, once for the weight gradient (wgrad) and once with
  a single global scale for the input gradient (dgrad).

  Only numerics live here (and which implementation computes them): the optimizer's UI8
  learning-rate scaling is `training.config.OptimConfig`'s, and `name` is a label that takes
  no part in equality or hashing, so two configs with the same numerics are one custom VJP.

  Attributes:
    name: the method's name, for reports only (not compared).
    bits: the integer width; only 8 is implemented.
    impl: which implementation computes the int8 products (daq_jax.quant.backends): one name
      for all three, or three comma-separated names for the forward product, dgrad and wgrad
      ("xla,xla,im2col"). `auto` (the default): the implementation the table in
      `daq_jax.quant.backends.auto` lists first for the platform the program is traced for
      and the contraction, skipping any that does not support the layer (with a logged
      reason); on the CPU that is `xla` for all three; on a CUDA GPU the plan its cost model
      predicts fastest. `xla`: int8 lax convs and NN dots in the layouts XLA's CPU backend
      runs fast (never grouped int8 convs on a GPU, where cuDNN gets them wrong); `im2col`:
      XLA int8 dot_general on im2col views; `pallas`: the Pallas int8 GEMM on im2col views,
      and for DAQ/GVQ the Pallas gradient quantizer; `implicit`: the Pallas implicit-GEMM
      conv kernels (no patch tensor; ungrouped convs; dense layers on the Pallas GEMM);
      `implicit_fused`: the same, with g quantized as the dgrad and wgrad kernels load it
      (Pallas kernels are compiled on a GPU, interpreted elsewhere); `simulate`: the same
      numerics in float (quantize-dequantize, then float products), the oracle of the tests.
      All give the same int8 values.
    wgrad_granularity: `per_channel` gives every output channel of g its own scale on the
      wgrad path (DAQ's gradient vectorized quantization); `per_tensor` uses one scale.
    wgrad_clip: how the wgrad-path clip value is chosen: `max` (no clipping), `mcs`
      (magnitude-aware clipping: max for bell-shaped distributions, a recursive average of the
      max for inverted-T ones), `dsgc` (UI8's direction-sensitive clipping: the clip ratio on
      `dsgc_ratios` with the smallest cosine distance).
    dgrad_clip: the same choice for the single dgrad-path scale (MCS then works on the whole
      tensor).
    dgrad_granularity: `per_tensor` (DAQ's): one scale for the dgrad-path g; `per_row`: one
      max-abs scale per output position (a row of g's (N*H*W, C) view), which factors out of
      the dgrad product in its GEMM + col2im form only (impl `im2col` or `pallas` for convs;
      auto picks one of them). It takes `dgrad_clip="max"` and lowers the local dX error
      several times (docs/accuracy.md).
    wgrad_rounding: how the wgrad-path g is rounded to its int8 levels: `nearest`, or
      `stochastic` (unbiased: floor(t + u), u uniform; needs a PRNG key, the `quant` rng
      stream in the Flax layers). Nearest rounding zeroes most small entries, and the wgrad
      reduction over N*H*W sums that bias coherently (docs/method.md, "Rounding").
    dgrad_rounding: the same choice for the dgrad-path g.
    grad_rounding: shorthand that sets both paths (an init-only argument, not a field);
      with a per-path value that differs from it, an error.
    bell_threshold: lambda: a channel is bell-shaped when the fraction of its elements with
      |g| > sigma exceeds it (a Gaussian gives 0.317, a Laplace 0.243).
    mcs_k, mcs_a: the inverted-T update s(t) = (1 - k*A) * s(t-1) + A * max|g(t)|.
    dsgc_ratios: candidate clip values for `dsgc`, as fractions of max|g|.
  """

  name: str = dataclasses.field(default="custom", compare=False)
  bits: int = 8
  impl: str = AUTO
  wgrad_granularity: str = "per_channel"
  wgrad_clip: str = "mcs"
  dgrad_clip: str = "max"
  dgrad_granularity: str = "per_tensor"
  wgrad_rounding: str | None = None  # None: grad_rounding, else nearest
  dgrad_rounding: str | None = None
  bell_threshold: float = 0.3
  mcs_k: float = 1.0
  mcs_a: float = 0.8
  dsgc_ratios: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
  grad_rounding: dataclasses.InitVar[str | None] = None

  def __post_init__(self, grad_rounding):
    if self.bits != 8:
      raise ValueError(f"quant config: bits={self.bits!r} is not supported; only 8 bits are")
    object.__setattr__(self, "impl", ",".join(parse_impls(self.impl)))
    _check_choice("wgrad_granularity", self.wgrad_granularity, GRANULARITIES)
    _check_choice("wgrad_clip", self.wgrad_clip, CLIPS)
    _check_choice("dgrad_clip", self.dgrad_clip, CLIPS)
    _check_choice("dgrad_granularity", self.dgrad_granularity, DGRAD_GRANULARITIES)
    if self.dgrad_granularity == "per_row" and self.dgrad_clip != "max":
      raise ValueError(
        f"quant config: dgrad_granularity='per_row' takes dgrad_clip='max' (a clip per row "
        f"has no history to carry); got dgrad_clip={self.dgrad_clip!r}"
      )
    if grad_rounding is not None:
      _check_choice("grad_rounding", grad_rounding, ROUNDINGS)
    for path in ("wgrad_rounding", "dgrad_rounding"):
      value = getattr(self, path)
      if value is None:
        value = grad_rounding or "nearest"
      elif grad_rounding is not None and value != grad_rounding:
        raise ValueError(
          f"quant config: grad_rounding={grad_rounding!r} sets both paths but {path}={value!r}"
        )
      _check_choice(path, value, ROUNDINGS)
      object.__setattr__(self, path, value)
    if not 0.0 <= self.bell_threshold <= 1.0:
      raise ValueError(f"quant config: bell_threshold={self.bell_threshold} must be in [0, 1]")
    if not 0.0 < self.mcs_a <= 1.0 or not 0.0 <= 1.0 - self.mcs_k * self.mcs_a <= 1.0:
      raise ValueError(
        f"quant config: mcs_k={self.mcs_k}, mcs_a={self.mcs_a} must give 0 < A <= 1 and "
        "0 <= 1 - k*A <= 1"
      )
    ratios = tuple(float(r) for r in self.dsgc_ratios)
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
      raise ValueError(f"quant config: dsgc_ratios={self.dsgc_ratios} must lie in (0, 1]")
    object.__setattr__(self, "dsgc_ratios", ratios)

  @property
  def impls(self) -> tuple[str, str, str]:
    """The implementation of the forward product, dgrad and wgrad."""
    return contraction_impls(self.impl)

  @property
  def stochastic(self) -> bool:
    """Whether the backward pass needs a PRNG key (either path rounds stochastically)."""
    return "stochastic" in (self.wgrad_rounding, self.dgrad_rounding)

  @property
  def shared_gradient(self) -> bool:
    """Whether wgrad and dgrad use the same quantized g (one per-tensor scale, same rules)."""
    return (
      self.wgrad_granularity == "per_tensor"
      and self.dgrad_granularity == "per_tensor"
      and self.wgrad_clip == self.dgrad_clip
      and self.wgrad_rounding == self.dgrad_rounding
    )

  def replace(self, **changes) -> QuantConfig:
    """A copy with some fields changed (validated again); `grad_rounding` sets both paths
    unless a per-path value is given too, which then wins for its path."""
    return dataclasses.replace(self, **_expand_rounding(changes))


def _expand_rounding(changes: dict) -> dict:
  """`changes` with the `grad_rounding` shorthand spelt out per path (per-path keys win)."""
  changes = dict(changes)
  both = changes.pop("grad_rounding", None)
  if both is not None:
    changes = {"wgrad_rounding": both, "dgrad_rounding": both, **changes}
  return changes


def _make(name: str, fields: dict, overrides: dict) -> QuantConfig:
  return QuantConfig(**{"name": name, **fields, **_expand_rounding(overrides)})


# DAQ's gradient scales and clipping, which its variants keep and add a rounding or a dgrad
# granularity to.
_DAQ = dict(wgrad_granularity="per_channel", wgrad_clip="mcs")


def daq(**overrides) -> QuantConfig:
  """DAQ: per-channel wgrad scales with magnitude-aware clipping; global max for dgrad."""
  return _make("daq", _DAQ, overrides)


def daq_sr(**overrides) -> QuantConfig:
  """DAQ with stochastic rounding of g on both paths (wgrad and dgrad): DAQ's scales and
  clipping, unbiased rounding (docs/method.md, "Rounding")."""
  fields = dict(_DAQ, wgrad_rounding="stochastic", dgrad_rounding="stochastic")
  return _make("daq_sr", fields, overrides)


def daq_sr_wgrad(**overrides) -> QuantConfig:
  """DAQ with stochastic rounding of g on the wgrad path only; dgrad rounds to nearest."""
  return _make("daq_sr_wgrad", dict(_DAQ, wgrad_rounding="stochastic"), overrides)


def daq_sr_wgrad_rows(**overrides) -> QuantConfig:
  """DAQ with stochastic rounding of g on the wgrad path and one g scale per output position
  (row) on the dgrad path, rounded to nearest: the wgrad bias removed, the dgrad error cut."""
  fields = dict(_DAQ, wgrad_rounding="stochastic", dgrad_granularity="per_row")
  return _make("daq_sr_wgrad_rows", fields, overrides)


def daq_sr_rows(**overrides) -> QuantConfig:
  """DAQ with stochastic rounding of g on both paths and one g scale per output position
  (row) on the dgrad path: unbiased on both paths, where `daq_sr`'s one global dgrad scale
  turns the small rows of g into large rounding noise."""
  fields = dict(
    _DAQ,
    wgrad_rounding="stochastic",
    dgrad_rounding="stochastic",
    dgrad_granularity="per_row",
  )
  return _make("daq_sr_rows", fields, overrides)


def gvq(**overrides) -> QuantConfig:
  """Ablation: per-channel wgrad scales (gradient vectorized quantization), no clipping."""
  return _make("gvq", dict(wgrad_granularity="per_channel", wgrad_clip="max"), overrides)


def mcs(**overrides) -> QuantConfig:
  """Ablation: magnitude-aware clipping of one per-tensor wgrad scale."""
  return _make("mcs", dict(wgrad_granularity="per_tensor", wgrad_clip="mcs"), overrides)


def per_tensor(**overrides) -> QuantConfig:
  """Naive INT8: every tensor, gradients included, with one max-abs scale."""
  return _make("per_tensor", dict(wgrad_granularity="per_tensor", wgrad_clip="max"), overrides)


def ui8(**overrides) -> QuantConfig:
  """UI8 (Zhu et al. 2020): per-tensor gradients, direction-sensitive clipping, stochastic
  rounding; its learning-rate scaling reads the `deviation` state in the training loop."""
  fields = dict(
    wgrad_granularity="per_tensor",
    wgrad_clip="dsgc",
    dgrad_clip="dsgc",
    wgrad_rounding="stochastic",
    dgrad_rounding="stochastic",
  )
  return _make("ui8", fields, overrides)


def fp32() -> None:
  """No quantization: layers given `quant=None` are the float Flax layers."""
  return None


_PRESETS = {
  "fp32": fp32,
  "per_tensor": per_tensor,
  "daq": daq,
  "daq_sr": daq_sr,
  "daq_sr_wgrad": daq_sr_wgrad,
  "daq_sr_wgrad_rows": daq_sr_wgrad_rows,
  "daq_sr_rows": daq_sr_rows,
  "ui8": ui8,
  "gvq": gvq,
  "mcs": mcs,
}


# What a preset's options may set: every field, and the shorthand for both roundings.
OPTIONS = {f.name for f in dataclasses.fields(QuantConfig)} | {"grad_rounding"}


def preset(method: str, **overrides) -> QuantConfig | None:
  """The config of a named method (`fp32` gives None, i.e. float layers).

  Raises:
    ValueError: for an unknown method name or option.
  """
  if method not in _PRESETS:
    raise ValueError(f"unknown quantization method {method!r}; choose one of {METHODS}")
  if method == "fp32":
    if overrides:
      raise ValueError(f"method 'fp32' takes no options, got {sorted(overrides)}")
    return None
  unknown = sorted(set(overrides) - OPTIONS)
  if unknown:
    raise ValueError(f"unknown quantization option(s) {unknown}; known: {sorted(OPTIONS)}")
  return _PRESETS[method](**overrides)


def as_config(quant, layer: str) -> QuantConfig | None:
  """A layer's `quant` argument as its config: a QuantConfig or None as given, a method spec
  (`"daq_sr_rows"`, `"daq(impl=xla)"`, `"fp32"`: None) parsed by `from_spec`.

  Raises:
    ValueError: for a spec naming an unknown method or option.
    TypeError: for anything else, naming `layer`.
  """
  if isinstance(quant, str):
    return from_spec(quant)
  if quant is not None and not isinstance(quant, QuantConfig):
    raise TypeError(
      f"{layer} quant={quant!r}: expected a QuantConfig, a method spec such as "
      f"{RECOMMENDED!r}, or None"
    )
  return quant


def parse_spec(spec: str) -> tuple[str, dict]:
  """A method spec, `name` or `name(option=value, ...)`, as (name, options).

  Values are Python literals; a bare word is a string (`daq(wgrad_rounding=stochastic)`
  equals `daq(wgrad_rounding="stochastic")`). Nothing is evaluated.

  Raises:
    ValueError: naming the spec when it is not of that form.
  """
  text = str(spec).strip()
  form = "'name' or 'name(option=value, ...)'"
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise ValueError(f"method spec {text!r} is not {form}") from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
    raise ValueError(f"method spec {text!r} is not {form}")
  options = {}
  for keyword in node.keywords:
    if keyword.arg is None:
      raise ValueError(f"method spec {text!r} is not {form}")
    value = keyword.value
    if isinstance(value, ast.Name):
      options[keyword.arg] = value.id
      continue
    try:
      options[keyword.arg] = ast.literal_eval(value)
    except ValueError:
      raise ValueError(
        f"method spec {text!r}: the value of {keyword.arg} is not a literal"
      ) from None
  return node.func.id, options


def from_spec(spec: str) -> QuantConfig | None:
  """The config of a method spec (`parse_spec`): a preset with its options applied.

  Raises:
    ValueError: naming the spec and the unknown method, option or bad value.
  """
  method, options = parse_spec(spec)
  try:
    return preset(method, **options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"method spec {spec!r}: {e}") from None
