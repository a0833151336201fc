"""Bad detection configs are one-line errors naming the key, before any data is read or any
model built (train.py's own path for two of them is in tests/training/test_cli.py)."""

import importlib

import pytest

from daq_jax.training.config import from_dict


def _default(**changes) -> dict:
  values = importlib.import_module("configs.detection_default").get_config().to_dict()
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    node = values
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return values


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    (
      {"data.image_size": 100},
      "config data.image_size=100 is not divisible by the largest "
      "stride 32 (detection.max_level=5)",
    ),
    (
      {"detection.score_threshold": -0.1},
      "config detection.score_threshold=-0.1 must be in [0, 1]",
    ),
    ({"detection.box_loss": "l2"}, "config detection.box_loss='l2' is not one of"),
    ({"detection.fpn_channels": 0}, "config detection.fpn_channels=0 must be > 0"),
    ({"detection.min_level": 6}, "need 2 <= min_level <= max_level <= 8"),
    ({"detection.background_iou": 0.6}, "detection.background_iou=0.6 is above"),
    (
      {"model.name": "resnet18"},
      "config model.name='resnet18' is a classifier, but data.name='shapes' gives boxes",
    ),
    (
      {"data.name": "digits"},
      "config model.name='retinanet_small' is a detector, but data.name='digits' gives labels",
    ),
    ({"data.augment": "cifar"}, "would move pixels without their boxes"),
    ({"data.max_boxes": 0}, "config data.max_boxes=0 must be >= 1"),
  ],
)
def test_a_bad_detection_config_is_one_line_naming_the_key(changes, message):
  with pytest.raises(ValueError) as e:
    from_dict(_default(**changes))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_coco_needs_an_input_size():
  from daq_jax import data

  cfg = from_dict(_default(**{"data.name": "coco", "data.dir": "/nonexistent"}))
  with pytest.raises(ValueError, match=r"^config data.image_size=0: COCO images differ in size"):
    data.load(cfg.data)
