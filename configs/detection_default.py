"""The default detection run: INT8 training of a small RetinaNet (`retinanet_small`: a narrow
ResNet-10 backbone, an FPN on P3-P5, 2-conv heads, every conv in DAQ INT8) on the embedded
shapes, scored with COCO's mAP (pycocotools) on their fixed test split.

    python train.py --config configs/detection_default.py --workdir runs/detection_default
    python train.py --config configs/detection_default.py --config.quant.method=fp32 \\
        --workdir runs/detection_default_fp32

The data (daq_jax/data/shapes.py) is generated, no download: 2,048 training and 512 test
images of 96x96, 1-5 circles, squares and triangles each on textured backgrounds. Measured
results are in docs/detection.md.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "retinanet_small"
  config.data.name = "shapes"
  config.data.max_boxes = 8
  det = config.detection
  det.min_level, det.max_level = 3, 5
  det.fpn_channels = 64
  det.head_convs = 2
  det.anchor_size = 2.0  # sides 16-32 pixels at P3 for objects of 12-44
  config.batch_size = 32
  config.num_epochs = 6.0
  config.optim.base_learning_rate = 0.02
  config.optim.base_batch_size = 32
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 0.5
  config.log_every_steps = 32
  config.eval_every_epochs = 0.0
  return config
