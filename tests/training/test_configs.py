"""Every config file builds, converts into the library's dataclasses, names a known model and
method, and documents its run command; `--config.quant.method` changes nothing else. The
dataclass defaults are the one source of defaults: the default config is exactly them, and
every other config derives from it or from a per-dataset base, never from a sibling."""

import ast
import glob
import importlib
import os
import re

import pytest

from daq_jax.quant.config import RECOMMENDED
from daq_jax.training.config import TrainConfig, from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
  p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py")
)
BASES = {"base_cifar10", "base_imagenet", "base_video", "base_detection"}
EXPECTED = BASES | {
  "default",
  "cifar10_resnet20",
  "cifar10_resnet20_short",
  "cifar10_resnet56",
  "cifar10_mobilenetv2",
  "cifar10_vgg16",
  "imagenet_resnet18",
  "imagenet_resnet50",
  "imagenet_mobilenetv2",
  "imagenet_inceptionv3",
  "imagenet_vgg16",
  "imagenet_alexnet",
  "video_default",
  "video_ucf101_r3d18",
  "video_kinetics_r2plus1d18",
  "detection_default",
  "detection_coco_retinanet_r50",
}


def _load(path):
  # As train.py's --config does, minus ml_collections' deprecated module loader.
  return importlib.import_module(f"configs.{os.path.basename(path)[:-3]}").get_config()


def test_every_promised_config_exists():
  assert {os.path.basename(p)[:-3] for p in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_and_documents_its_command(path):
  config = _load(path)
  cfg = from_dict(config.to_dict())
  # Every config trains the recommended method.
  assert cfg.quant.method == RECOMMENDED
  with open(path) as f:
    source = f.read()
  assert "python train.py" in source.split('"""')[1]


def test_switching_the_method_changes_only_the_method():
  base = _load(os.path.join(ROOT, "configs", "cifar10_resnet20.py")).to_dict()
  for method in ("fp32", "per_tensor", "ui8", "gvq", "mcs"):
    other = {**base, "quant": {**base["quant"], "method": method}}
    a, b = from_dict(base), from_dict(other)
    assert b.quant.method == method
    assert (a.model, a.data, a.optim, a.batch_size) == (b.model, b.data, b.optim, b.batch_size)


def test_unknown_keys_name_the_key():
  with pytest.raises(ValueError, match=r"\['quant.mehtod'\] are unknown"):
    from_dict({"quant": {"mehtod": "daq"}})
  with pytest.raises(ValueError, match=r"optim.schedule='linear'"):
    from_dict({"optim": {"schedule": "linear"}})


def test_default_config_is_the_dataclass_defaults():
  assert from_dict(_load(os.path.join(ROOT, "configs", "default.py")).to_dict()) == TrainConfig()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_configs_derive_from_default_or_a_dataset_base(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  parents = {
    alias.name
    for node in ast.walk(tree)
    if isinstance(node, ast.ImportFrom) and node.module == "configs"
    for alias in node.names
  }
  name = os.path.basename(path)[:-3]
  allowed = set() if name == "default" else {"default"} if name in BASES else BASES
  assert parents <= allowed, f"{name} derives from {parents - allowed}"
  assert name == "default" or len(parents) == 1


@pytest.mark.parametrize(
  "values, message",
  [
    (
      {"data": {"dir": "/data/coco"}},
      "data.dir='/data/coco' is not read by this run: it is read "
      "by data.name ('cifar10', 'cifar100', 'image_folder', 'video_folder', 'coco', 'voc'), and "
      "'digits' is embedded",
    ),
    (
      {"detection": {"fpn_channels": 64}},
      "detection.fpn_channels=64 is not read by this run: it is read by detection datasets only",
    ),
    (
      {"data": {"clip_frames": 16}},
      "data.clip_frames=16 is not read by this run: it is read by video datasets only",
    ),
    (
      {"optim": {"decay_epochs": [10.0]}},
      "optim.decay_epochs=(10.0,) is not read by this run: "
      "it is read with optim.schedule='step' only",
    ),
    (
      {"optim": {"lr_scale_alpha": 5.0}},
      "optim.lr_scale_alpha=5.0 is not read by this run: it is read with UI8's clipping (ui8) only",
    ),
    (
      {"quant": {"rules": ".*:daq", "quantize_first_conv": False}},
      "quant.quantize_first_conv="
      "False is not read by this run: it is read only when quant.rules is empty",
    ),
  ],
)
def test_a_setting_the_run_would_not_read_is_an_error_naming_it(values, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    from_dict(values)
  # ... where something reads it, it is taken
  from_dict(
    {
      "data": {"name": "shapes"},
      "model": {"name": "retinanet_small"},
      "detection": {"fpn_channels": 64},
    }
  )
  from_dict({"quant": {"method": "ui8"}, "optim": {"lr_scale_alpha": 5.0}})


def test_the_memory_mode_is_checked():
  with pytest.raises(ValueError, match=r"config memory='half' is not one of \('keep', 'int8'\)"):
    from_dict({"memory": "half"})
  message = r"memory='int8' keeps the int8 inputs .* quant.method='fp32' quantizes none"
  with pytest.raises(ValueError, match=message):
    from_dict({"memory": "int8", "quant": {"method": "fp32"}})
  assert from_dict({"memory": "int8"}).memory == "int8"
