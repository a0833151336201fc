"""RetinaNet-R50-FPN on COCO 2017 in DAQ INT8, the standard 1x schedule (Lin et al. 2017, as
detectron2's `retinanet_R_50_FPN_1x`; configs/base_detection.py, `RETINANET_1X`): 90,000
iterations of 16 images, SGD at 0.01 divided by 10 at 60,000 and 80,000, 1,000 warmup
iterations, weight decay 1e-4, every conv in DAQ INT8.

    python train.py --config configs/detection_coco_retinanet_r50.py \\
        --config.data.dir=/data/coco --workdir runs/coco_retinanet_r50

`data.dir` holds the official layout: annotations/instances_{train,val}2017.json with
train2017/ and val2017/; val2017 is the evaluation split, scored with pycocotools.

Untested: no COCO is on the machines this project is built on, and a 1x run is a multi-GPU
job. Two differences from the reference recipe: the backbone starts from scratch (the zoo has
no ImageNet weights; a detector trained from scratch needs a several times longer schedule,
He et al. 2019), and every image is letterboxed to a fixed 1024x1024 input (its longer side to
1024) instead of the short side to 800, so that every step has one shape.
"""

from configs import base_detection


def get_config():
  return base_detection.get_config()
