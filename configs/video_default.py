"""The default video run: INT8 training of a small 3-D CNN (`c3d_small`) on the embedded moving
digits with the recommended method, clip and video accuracy on their fixed test split.

    python train.py --config configs/video_default.py --workdir runs/video_default
    python train.py --config configs/video_default.py --config.quant.method=fp32 \
        --workdir runs/video_default_fp32

The data (daq_jax/data/video.py, `moving_digits`) is made from scikit-learn's 8x8 digits:
each digit drifts across a 32x32 canvas over 16 frames in one of four directions, and the
class is the digit and its direction (40 classes), so a single frame cannot tell more than
25 %. A clip is 4 frames, every other frame (7 frames of motion); evaluation averages the
logits of 3 evenly spaced clips per video. 1,437 training videos, 360 test videos, no
download. 71 s on 2 quiet CPU cores from an empty compilation cache (docs/video.md, which
has the measured results).
"""

from configs import base_video


def get_config():
  config = base_video.recipe(
    "c3d_small",
    data_name="moving_digits",
    clip_frames=4,
    frame_stride=2,
    eval_clips=3,
    batch_size=32,
    num_epochs=6.0,
    schedule="cosine",
    base_learning_rate=0.1,
    base_batch_size=32,
    weight_decay=5e-4,
    warmup_epochs=0.5,
  )
  config.log_every_steps = 44
  config.eval_every_epochs = 3.0
  return config
