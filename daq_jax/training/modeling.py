"""The model of a training config: a zoo model or a user's, float, quantized by rules.

Every model `train.py` trains is built the same way. The float model comes from the zoo
(`model.name` a key of `daq_jax.models.MODELS`) or from a user's flax.linen Module class
(`model.name` its import path, "my_pkg.models.MyNet", built with `num_classes` and `dtype`
where it has such fields). Then `daq_jax.quantize` quantizes it by the rules of
`daq_jax.quant.rules`: `quant.rules` ("regex:method;..." on layer paths, the first full match
deciding; `fp32` keeps a layer float), or else the default rules: every `nn.Conv` and
`nn.Dense` with `quant.method`, except the first conv and the last dense called while
`quant.quantize_first_conv` / `quantize_last_dense` are False.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp

from daq_jax import models
from daq_jax.detection import Detection
from daq_jax.nn.quantized_model import QuantizedModel, quantize
from daq_jax.quant import rules as quant_rules


def is_import_path(name: str) -> bool:
  return "." in name


def import_model_class(path: str) -> type[nn.Module]:
  """The linen Module class at `path` ("package.module.Class").

  Raises:
    ValueError: one line naming the path, when it does not import or is not a linen Module.
  """
  module_name, _, class_name = path.rpartition(".")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # any error of the user's module is reported the same way
    raise ValueError(
      f"config model.name={path!r}: module {module_name!r} does not import: {type(e).__name__}: {e}"
    ) from None
  cls = getattr(module, class_name, None)
  if cls is None:
    raise ValueError(f"config model.name={path!r}: module {module_name!r} has no {class_name!r}")
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(
      f"config model.name={path!r}: {class_name} is a {type(cls).__name__}, not a "
      "flax.linen Module class"
    )
  return cls


def build(cls: type[nn.Module], num_classes: int, dtype) -> nn.Module:
  """`cls` with `num_classes` and `dtype` where it has those fields."""
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = {"num_classes": num_classes, "dtype": dtype}
  return cls(**{k: v for k, v in kwargs.items() if k in fields})


def probe(model: nn.Module, input_shape) -> tuple[list[tuple[str, str]], tuple[int, ...]]:
  """One abstract trace of `model`'s init and apply on 2 images of `input_shape` (H, W, C),
  or clips (T, H, W, C):
  (path, "conv" or "dense") of the `nn.Conv`/`nn.Dense` layers it calls, in call order, and
  the shape of its logits."""
  quantized = quantize(model, [(".*", None)])
  training = TrainingModel(quantized)
  x = jnp.zeros((2, *input_shape), jnp.float32)

  def logits():
    variables = training.init({"params": jax.random.key(0)}, x, train=False)
    out = training.apply(variables, x, train=False)
    return out[0] if isinstance(out, tuple) else out

  seen, out = quantized.called(logits)
  return list(seen.items()), tuple(out.shape)


def check_input_kind(model_name: str, data_name: str, input_shape) -> None:
  """A zoo model of images given clips (T, H, W, C), or one of clips given images, is a
  one-line error naming both keys (user models are checked by the probe's trace)."""
  if is_import_path(model_name) or model_name not in models.MODELS:
    return
  clips, video_model = len(input_shape) == 4, model_name in models.VIDEO_MODELS
  if clips and not video_model:
    raise ValueError(
      f"config model.name={model_name!r} takes images, but data.name={data_name!r} gives clips "
      f"{tuple(input_shape)}: use a video model ({', '.join(models.VIDEO_MODELS)})"
    )
  if video_model and not clips:
    raise ValueError(
      f"config model.name={model_name!r} takes clips, but data.name={data_name!r} gives images "
      f"{tuple(input_shape)}: use a video dataset (moving_digits, video_folder) or an image model"
    )


def check_task(model_name: str, data_name: str, detection: bool) -> None:
  """A detector given classification data, or a classifier given boxes, is a one-line error
  naming both keys."""
  if is_import_path(model_name):
    return
  detector = model_name in models.DETECTION_MODELS
  if detection and not detector:
    raise ValueError(
      f"config model.name={model_name!r} is a classifier, but data.name={data_name!r} gives "
      f"boxes: use a detector ({', '.join(models.DETECTION_MODELS)})"
    )
  if detector and not detection:
    raise ValueError(
      f"config model.name={model_name!r} is a detector, but data.name={data_name!r} gives "
      "labels: use a detection dataset (shapes, coco) or a classifier"
    )


def _detector(cfg, num_classes: int, input_shape, dtype) -> nn.Module:
  """The detector of `cfg`, its input side checked against the largest stride."""
  det = cfg.detection
  det.check_image_size(input_shape[0])
  kwargs = dict(
    num_classes=num_classes,
    dtype=dtype,
    min_level=det.min_level,
    max_level=det.max_level,
    fpn_channels=det.fpn_channels,
    head_convs=det.head_convs,
    anchors_per_cell=det.anchors_per_cell,
    prior=det.prior,
    head_canvas=det.head_canvas,
  )
  if is_import_path(cfg.model.name):
    cls = import_model_class(cfg.model.name)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in fields})
  return models.create(cfg.model.name, **kwargs)


def create_model(cfg, num_classes: int, input_shape) -> TrainingModel:
  """The model of `cfg` (a `TrainConfig`) for `num_classes` classes and images of
  `input_shape` (H, W, C), quantized by its rules; checked, before anything compiles, by one
  abstract trace of the float model. For detection data (`cfg.data.is_detection`) a
  detector, built with the `cfg.detection` keys, for the task of `daq_jax.detection`.

  Raises:
    ValueError: naming the model, when its logits are not (batch, num_classes), or the rule
      that matches no layer, with the layers' paths.
  """
  dtype = jnp.dtype(cfg.model.dtype)
  detection = cfg.data.is_detection
  check_input_kind(cfg.model.name, cfg.data.name, input_shape)
  check_task(cfg.model.name, cfg.data.name, detection)
  if detection:
    model = _detector(cfg, num_classes, input_shape, dtype)
  elif is_import_path(cfg.model.name):
    model = build(import_model_class(cfg.model.name), num_classes, dtype)
  else:
    model = models.create(cfg.model.name, num_classes=num_classes, dtype=dtype)
  layers, shape = probe(model, input_shape)
  if detection:
    anchors = len(Detection(cfg.detection, input_shape[0]).anchors)
    if shape != (2, anchors, num_classes):
      raise ValueError(
        f"config model.name={cfg.model.name!r}: the detector maps images {(2, *input_shape)} "
        f"to class logits {shape}, not (2, {anchors}, {num_classes}) for the "
        f"{anchors} anchors of the detection.* keys"
      )
  elif shape != (2, num_classes):
    raise ValueError(
      f"config model.name={cfg.model.name!r}: the model maps images {(2, *input_shape)} to "
      f"{shape}, not to (2, {num_classes}) logits for the data's {num_classes} classes"
    )
  rules = cfg.quant.rule_set()
  if not rules.pairs:
    rules = quant_rules.default_rules(
      layers,
      cfg.quant.layer_config(),
      first_conv=cfg.quant.quantize_first_conv,
      last_dense=cfg.quant.quantize_last_dense,
    )
  rules.assign([path for path, _ in layers], what=f"nn.Conv or nn.Dense of {type(model).__name__}")
  return TrainingModel(quantize(model, rules))


class TrainingModel:
  """The `init`/`apply` the training steps call, for a `QuantizedModel` of the config's module:
  the `train` keyword is passed only where the module's `__call__` takes it."""

  def __init__(self, quantized: QuantizedModel):
    self.quantized = quantized
    self.takes_train = "train" in inspect.signature(quantized.model.__call__).parameters

  @property
  def module(self) -> nn.Module:
    """The float linen module the rules quantize."""
    return self.quantized.model

  def _kwargs(self, kwargs):
    if not self.takes_train:
      kwargs.pop("train", None)
    return kwargs

  def init(self, *args, **kwargs):
    return self.quantized.init(*args, **self._kwargs(kwargs))

  def apply(self, variables, *args, **kwargs):
    return self.quantized.apply(variables, *args, **self._kwargs(kwargs))

  def layers(self, *args, **kwargs) -> dict:
    """`QuantizedModel.layers`, with the `train` keyword handled as `init` does."""
    return self.quantized.layers(*args, **self._kwargs(kwargs))
