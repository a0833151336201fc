"""The default detection run: INT8 training of a small RetinaNet (`retinanet_small`: a narrow
ResNet-10 backbone, an FPN on P3-P5, 2-conv heads, every conv in INT8 with the recommended
method) on the embedded shapes, scored with COCO's mAP (pycocotools) on their fixed test
split. The gradient is clipped at norm 2 (`optim.grad_clip_norm`): without it the INT8
methods can diverge at this learning rate, the float run does not (docs/detection.md has the
measurements).

    python train.py --config configs/detection_default.py --workdir runs/detection_default
    python train.py --config configs/detection_default.py --config.quant.method=fp32 \
        --workdir runs/detection_default_fp32

The data (daq_jax/data/shapes.py) is generated, no download: 2,048 training and 512 test
images of 96x96, 1-5 circles, squares and triangles each on textured backgrounds. 12 epochs
(768 steps of 32); results and times in docs/detection.md.
"""

from configs import base_detection


def get_config():
  config = base_detection.recipe(
    "retinanet_small",
    data_name="shapes",
    image_size=0,  # the shapes' own 96x96
    max_boxes=8,
    batch_size=32,
    num_epochs=12.0,
    schedule="cosine",
    base_learning_rate=0.02,
    base_batch_size=32,
    weight_decay=1e-4,
    warmup_epochs=0.5,
    # Small: P3-P5 (strides 8-32 for a 96x96 input), 64 channels, 2-conv heads, anchors of
    # side 2 strides (16-25 pixels at P3) for objects of 12-44 pixels.
    min_level=3,
    max_level=5,
    fpn_channels=64,
    head_convs=2,
    anchor_size=2.0,
  )
  # Measured (docs/detection.md): with the clipping the recommended method (the recipe's
  # quant.method) is level with fp32 in mAP and final train loss; without it, it matches
  # fp32 on one seed of three.
  config.optim.grad_clip_norm = 2.0
  config.log_every_steps = 32
  return config
