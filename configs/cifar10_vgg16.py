"""VGG-16 with BN (14.7M parameters) on CIFAR-10 with DAQ.

    python train.py --config configs/cifar10_vgg16.py --workdir runs/cifar10_vgg16 \
        --config.data.dir=PATH

200 epochs, batch 128, SGD 0.05 with a cosine schedule and weight decay 5e-4. Not timed
here: a GPU job.
"""

from configs import base_cifar10


def get_config():
  return base_cifar10.recipe(
    "vgg16_cifar",
    num_epochs=200.0,
    schedule="cosine",
    base_learning_rate=0.05,
    weight_decay=5e-4,
    warmup_epochs=1.0,
  )
