"""The base of the detection configs: `recipe` holds what they share (a RetinaNet, detection
data, its input size and box budget, SGD with warmup) and each detection_*.py names its model,
data and whole recipe through it. `get_config` is RetinaNet-R50-FPN on COCO's 1x schedule
(configs/detection_coco_retinanet_r50.py).

    python train.py --config configs/base_detection.py --config.data.dir=/data/coco
"""

from configs import default


def recipe(
  model: str,
  *,
  data_name: str,
  image_size: int,
  max_boxes: int,
  batch_size: int,
  num_epochs: float,
  schedule: str,
  base_learning_rate: float,
  base_batch_size: int,
  weight_decay: float,
  warmup_epochs: float,
  decay_epochs: tuple[float, ...] = (),
  workers: int = 0,
  **detection,
):
  """A detection config: `model` (a key of `daq_jax.models.DETECTION_MODELS`) on `data_name`
  letterboxed to `image_size` (0: the embedded data's own size) with room for `max_boxes`
  boxes an image, the `detection` keys that differ from the paper's RetinaNet (levels, widths,
  anchors; `daq_jax.detection.DetectionConfig`), and the whole optimisation recipe."""
  config = default.get_config()
  config.model.name = model
  config.data.name = data_name
  config.data.image_size = image_size
  config.data.max_boxes = max_boxes
  config.data.workers = workers
  config.data.prefetch = 4 if workers else 2
  for key, value in detection.items():
    setattr(config.detection, key, value)
  config.optim.schedule = schedule
  config.optim.base_learning_rate = base_learning_rate
  config.optim.base_batch_size = base_batch_size
  config.optim.weight_decay = weight_decay
  config.optim.warmup_epochs = warmup_epochs
  config.optim.decay_epochs = decay_epochs
  config.batch_size = batch_size
  config.num_epochs = num_epochs
  config.eval_every_epochs = 0.0
  return config


# RetinaNet's 1x schedule on COCO 2017 (Lin et al. 2017; detectron2's retinanet_R_50_FPN_1x):
# 90,000 iterations of 16 images, 0.01 divided by 10 at 60,000 and 80,000, 1,000 warmup
# iterations, weight decay 1e-4. In epochs of COCO train2017's 118,287 images. The paper's
# detection keys are DetectionConfig's defaults (P3-P7, 256 channels, 4-conv heads, 9 anchors).
COCO_EPOCH = 118_287 / 16
RETINANET_1X = {
  "data_name": "coco",
  "image_size": 1024,
  "max_boxes": 100,  # COCO train2017's most crowded image has 93 annotations
  "batch_size": 16,
  "num_epochs": 90_000 / COCO_EPOCH,
  "schedule": "step",
  "base_learning_rate": 0.01,
  "base_batch_size": 16,
  "weight_decay": 1e-4,
  "warmup_epochs": 1_000 / COCO_EPOCH,
  "decay_epochs": (60_000 / COCO_EPOCH, 80_000 / COCO_EPOCH),
  "workers": 8,
}


def get_config():
  config = recipe("retinanet_r50", **RETINANET_1X)
  config.data.eval_split = "test"  # val2017, the dataset's own held-out split
  config.log_every_steps = 100
  config.eval_every_epochs = 2.0
  config.checkpoint_every_steps = 5_000
  return config
