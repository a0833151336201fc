"""The training config as frozen, keyword-only dataclasses, built from a plain dict.

The field defaults are the one source of defaults: they are the default run (configs/default.py
is built from them), and every other config is a delta from it or from a per-dataset base.
`train.py` turns its ml_collections config into a dict (`config.to_dict()`) and calls
`from_dict`; the library itself never imports ml_collections. Unknown keys and bad values
are errors that name the key, and the dict is saved in the workdir (`config.json`) so that
evaluation and resumption rebuild exactly the same run.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from daq_jax.data.config import DataConfig
from daq_jax.detection.config import DetectionConfig
from daq_jax.models import MODELS
from daq_jax.quant import config as quant_config
from daq_jax.quant import memory as quant_memory
from daq_jax.quant import rules as quant_rules
from daq_jax.training import modeling

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "step", "constant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Which model is trained.

  Attributes:
    name: a key of `daq_jax.models.MODELS`, or the dotted import path of a user's
      flax.linen Module class ("my_pkg.models.MyNet", see `training.modeling`).
    dtype: compute dtype of the float parts (BN, pooling, the float layers).
  """

  name: str = "small_cnn"
  dtype: str = "float32"

  def __post_init__(self):
    if modeling.is_import_path(self.name):
      modeling.import_model_class(self.name)  # a one-line error if it is not one
    elif self.name not in MODELS:
      raise ValueError(
        f"config model.name={self.name!r} is unknown; known: {', '.join(MODELS)}, or a "
        "dotted path to a flax.linen Module class"
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"config model.dtype={self.dtype!r} is not one of {DTYPES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSettings:
  """Which quantization method, and on which layers.

  Attributes:
    method: a method spec: a preset's name (fp32, per_tensor, daq, daq_sr, daq_sr_wgrad,
      ui8, gvq, mcs; daq_jax.quant.config), optionally with any QuantConfig options, e.g.
      "daq(wgrad_rounding=stochastic)" or "gvq(grad_rounding=stochastic, mcs_a=0.5)".
    impl: which implementation computes the int8 products: auto (per platform and
      contraction; its CPU row is measured, its GPU row the roofline model's prediction),
      xla (int8 lax ops in the CPU's fast layouts), im2col (XLA int8 dots on im2col views),
      pallas (the Pallas GEMM on im2col views), implicit and implicit_fused (the Pallas
      implicit-GEMM conv kernels; the second quantizes g as it loads it) or simulate (float
      emulation); or three of them, comma-separated,
      for the forward product, dgrad and wgrad (`QuantConfig.impl`). All give the same int8
      values (results differ at most by float32 rounding), so a run may resume on another.
    quantize_first_conv: quantize the first conv the model calls (the zoo's `stem_conv`) too.
    quantize_last_dense: quantize the last dense layer the model calls (the classifier, the
      zoo's `head`) too.
    rules: "regex:spec;regex:spec": per-layer method specs (as `method`, options included)
      by layer path, the first full match deciding (`daq_jax.quant.rules`); "" gives the
      default rules: every layer with `method`, as the two flags above allow. Layers no rule
      matches stay float.
  """

  method: str = quant_config.RECOMMENDED
  impl: str = "auto"
  quantize_first_conv: bool = True
  quantize_last_dense: bool = True
  rules: str = ""

  def __post_init__(self):
    try:
      quant_config.parse_impls(self.impl)
    except ValueError as e:
      raise ValueError(f"config quant.impl: {e}") from None
    try:
      self.layer_config()
    except ValueError as e:
      raise ValueError(f"config quant.method: {e}") from None
    self.rule_set()  # a bad rule is an error naming it

  def layer_config(self) -> quant_config.QuantConfig | None:
    cfg = quant_config.from_spec(self.method)
    return None if cfg is None else cfg.replace(impl=self.impl)

  def rule_set(self) -> quant_rules.Rules:
    """`rules` parsed (`daq_jax.quant.rules.parse`); no rules when it is ""."""
    try:
      return quant_rules.parse(self.rules, self.impl)
    except ValueError as e:
      raise ValueError(f"config quant.rules: {e}") from None

  def configs(self) -> list[quant_config.QuantConfig]:
    """Every quantization config this run's layers may use."""
    cfgs = [self.layer_config(), *self.rule_set().configs()]
    return [cfg for cfg in cfgs if cfg is not None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """SGD with momentum; the peak learning rate is base_learning_rate * batch / base_batch_size.

  Attributes:
    base_learning_rate: the learning rate at batch size `base_batch_size`; the peak rate is
      scaled linearly with `batch_size`.
    base_batch_size: the batch size that `base_learning_rate` is quoted for.
    momentum: heavy-ball momentum.
    nesterov: Nesterov momentum.
    weight_decay: L2 on conv and dense kernels (not on biases or BN parameters).
    schedule: cosine (to 0), step (x decay_factor at each of decay_epochs) or constant.
    warmup_epochs: linear warmup from 0 (fractions allowed).
    decay_epochs: the step schedule's boundaries, in epochs.
    decay_factor: the step schedule's factor.
    grad_clip_norm: the largest global L2 norm of the gradient, larger ones scaled down to it
      before weight decay and momentum (0: no clipping; detectors often use it).
    lr_scale_alpha, lr_scale_beta: UI8's deviation-counteractive learning-rate scaling, used
      with quant.method=ui8: each quantized layer's rate is multiplied by
      max(exp(-alpha * d), beta), d the cosine distance of its int8 gradient (Zhu et al. 2020).
  """

  base_learning_rate: float = 0.1
  base_batch_size: int = 128
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  schedule: str = "cosine"
  warmup_epochs: float = 1.0
  decay_epochs: tuple[float, ...] = ()
  decay_factor: float = 0.1
  grad_clip_norm: float = 0.0
  lr_scale_alpha: float = 20.0
  lr_scale_beta: float = 0.1

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"config optim.schedule={self.schedule!r} is not one of {SCHEDULES}")
    for key in ("base_learning_rate", "base_batch_size", "decay_factor"):
      _positive(f"optim.{key}", getattr(self, key))
    for key in (
      "weight_decay",
      "warmup_epochs",
      "grad_clip_norm",
      "lr_scale_alpha",
      "lr_scale_beta",
    ):
      _non_negative(f"optim.{key}", getattr(self, key))
    if not 0 <= self.momentum < 1:
      raise ValueError(f"config optim.momentum={self.momentum} must be in [0, 1)")
    for epoch in self.decay_epochs:
      _non_negative("optim.decay_epochs", epoch)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """One training run. The defaults are the default run: the recommended method
  (`quant.config.RECOMMENDED`, daq_sr_rows) on the embedded 8x8 digits with a small CNN, 30 epochs
  of batch 64 (about half a minute on 2 CPU cores).

  Attributes:
    seed: parameters, data order, augmentation and stochastic rounding all derive from it.
    model, quant, data, optim, detection: see their classes (detection: the detector's
      anchors, losses and post-processing, for detection data only).
    batch_size: the global batch, split over all devices.
    num_epochs: training length in epochs (fractions allowed); num_steps > 0 overrides it.
    num_steps: training length in steps.
    label_smoothing: the label smoothing of the cross-entropy.
    log_every_steps: metrics cadence (JSON lines, TensorBoard, terminal).
    eval_every_epochs: evaluation cadence; 0 evaluates at the end only.
    checkpoint_every_steps: checkpoint cadence; 0 checkpoints every epoch. One is always
      written at the end.
    keep_checkpoints: how many of the latest checkpoints stay on disk.
    num_devices: devices the batch is sharded over (0: all of them).
    memory: what the step keeps between its forward and backward passes: `keep` (what JAX
      keeps) or `int8` (the quantized layers' int8 inputs and scales, the statistics and the
      masks; the rest recomputed in the backward pass, the same bits: `daq_jax.quant.memory`).
      Not part of a run's numerics: a run may resume in another mode.
  """

  seed: int = 0
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  quant: QuantSettings = dataclasses.field(default_factory=QuantSettings)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  detection: DetectionConfig = dataclasses.field(default_factory=DetectionConfig)
  batch_size: int = 64
  num_epochs: float = 30.0
  num_steps: int = 0
  label_smoothing: float = 0.0
  log_every_steps: int = 50
  eval_every_epochs: float = 10.0
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 3
  num_devices: int = 0
  memory: str = "keep"

  def __post_init__(self):
    for key in ("batch_size", "log_every_steps", "keep_checkpoints"):
      _positive(key, getattr(self, key))
    for key in (
      "seed",
      "num_epochs",
      "num_steps",
      "eval_every_epochs",
      "checkpoint_every_steps",
      "num_devices",
    ):
      _non_negative(key, getattr(self, key))
    if self.num_steps <= 0 and self.num_epochs <= 0:
      raise ValueError("config num_epochs or num_steps must be > 0")
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(f"config label_smoothing={self.label_smoothing} must be in [0, 1)")
    if self.memory not in quant_memory.MODES:
      raise ValueError(f"config memory={self.memory!r} is not one of {quant_memory.MODES}")
    if self.memory == "int8" and not self.quant.configs():
      raise ValueError(
        f"config memory='int8' keeps the int8 inputs of quantized layers, and "
        f"quant.method={self.quant.method!r} quantizes none: the step would keep nothing and "
        "recompute everything; use memory='keep'"
      )
    if self.data.is_detection:
      modeling.check_task(self.model.name, self.data.name, detection=True)
      if self.data.image_size:
        self.detection.check_image_size(self.data.image_size)
    else:
      modeling.check_task(self.model.name, self.data.name, detection=False)
    for key, value, reader in unread_settings(self):
      raise ValueError(
        f"config {key}={value!r} is not read by this run: it is read {reader}; leave it unset "
        "(or choose what reads it)"
      )


# Data read from a directory; the others are embedded (generated or shipped with a package).
DIRECTORY_DATASETS = ("cifar10", "cifar100", "image_folder", "video_folder", "coco", "voc")


def unread_settings(cfg: TrainConfig) -> list[tuple[str, object, str]]:
  """(key, value, what reads it) of every key set away from its default that nothing of this
  run reads: a setting that would otherwise be ignored without a word."""
  data, optim = cfg.data, cfg.optim
  default = DataConfig()
  unread = []
  if data.dir and data.name not in DIRECTORY_DATASETS:
    unread.append(
      ("data.dir", data.dir, f"by data.name {DIRECTORY_DATASETS}, and {data.name!r} is embedded")
    )
  if not data.is_video:
    for key in ("clip_frames", "frame_stride", "eval_clips"):
      if getattr(data, key) != getattr(default, key):
        unread.append((f"data.{key}", getattr(data, key), "by video datasets only"))
  if not data.is_detection:
    if data.max_boxes != default.max_boxes:
      unread.append(("data.max_boxes", data.max_boxes, "by detection datasets only"))
    for f in dataclasses.fields(DetectionConfig):
      value = getattr(cfg.detection, f.name)
      if value != f.default:
        unread.append((f"detection.{f.name}", value, "by detection datasets only"))
  if optim.schedule != "step":
    for key in ("decay_epochs", "decay_factor"):
      if getattr(optim, key) != getattr(OptimConfig(), key):
        unread.append((f"optim.{key}", getattr(optim, key), "with optim.schedule='step' only"))
  if not any(c.wgrad_clip == "dsgc" for c in cfg.quant.configs()):
    for key in ("lr_scale_alpha", "lr_scale_beta"):
      if getattr(optim, key) != getattr(OptimConfig(), key):
        unread.append((f"optim.{key}", getattr(optim, key), "with UI8's clipping (ui8) only"))
  if cfg.quant.rules:
    for key in ("quantize_first_conv", "quantize_last_dense"):
      if not getattr(cfg.quant, key):
        unread.append((f"quant.{key}", False, "only when quant.rules is empty"))
  return unread


def _positive(key: str, value) -> None:
  if not value > 0:  # NaN fails too
    raise ValueError(f"config {key}={value} must be > 0")


def _non_negative(key: str, value) -> None:
  if not value >= 0:
    raise ValueError(f"config {key}={value} must be >= 0")


def _check_type(key: str, hint, value) -> None:
  """Scalars as their field's type says: no str for an int, no NaN or inf for a float."""
  if hint is bool:
    ok = isinstance(value, bool)
  elif hint is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif hint is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
      raise ValueError(f"config {key}={value} must be a finite number")
  elif hint is str:
    ok = isinstance(value, str)
  else:
    return
  if not ok:
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
    raise ValueError(f"config {key}={value!r} must be {kind}")


def _build(cls, values: Any, prefix: str):
  if not isinstance(values, dict):
    raise ValueError(f"config {prefix.rstrip('.')} must be a dict of {cls.__name__} fields")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(
      f"config keys {[prefix + k for k in unknown]} are unknown; known: "
      f"{[prefix + k for k in fields]}"
    )
  kwargs = {}
  for name, value in values.items():
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      kwargs[name] = _build(hint, value, f"{prefix}{name}.")
    elif typing.get_origin(hint) is tuple:
      if not isinstance(value, (list, tuple)):
        raise ValueError(f"config {prefix}{name}={value!r} must be a list")
      item_hint = typing.get_args(hint)[0]
      for item in value:
        _check_type(f"{prefix}{name}", item_hint, item)
      kwargs[name] = tuple(value)
    else:
      _check_type(prefix + name, hint, value)
      kwargs[name] = value
  return cls(**kwargs)


def from_dict(values: dict) -> TrainConfig:
  """A `TrainConfig` from nested dicts; unknown keys and bad values raise ValueError."""
  return _build(TrainConfig, values, "")


def to_dict(cfg: TrainConfig) -> dict:
  return dataclasses.asdict(cfg)
