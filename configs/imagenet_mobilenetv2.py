"""MobileNetV2 on ImageNet with DAQ (torchvision's recipe: 300 epochs, SGD 0.036 per 256,
weight decay 4e-5, cosine, no warmup, no label smoothing).

    python train.py --config configs/imagenet_mobilenetv2.py --workdir runs/imagenet_mnv2 \
        --config.data.dir=/data/imagenet

Not run here: cost unmeasured.
"""

from configs import base_imagenet


def get_config():
  return base_imagenet.recipe(
    "mobilenetv2",
    num_epochs=300.0,
    schedule="cosine",
    base_learning_rate=0.036,
    weight_decay=4e-5,
    warmup_epochs=0.0,
    label_smoothing=0.0,
  )
