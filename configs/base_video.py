"""The base of the video configs: `recipe` holds what they share (clips, the video transform,
clip and video accuracy) and each video_*.py names its model, data and whole recipe through
it. `get_config` is R3D-18 on UCF-101 (configs/video_ucf101_r3d18.py).

    python train.py --config configs/base_video.py --config.data.dir=/data/ucf101
"""

from configs import default


def recipe(
  model: str,
  *,
  data_name: str,
  clip_frames: int,
  frame_stride: int,
  eval_clips: int,
  batch_size: int,
  num_epochs: float,
  schedule: str,
  base_learning_rate: float,
  base_batch_size: int,
  weight_decay: float,
  warmup_epochs: float,
  decay_epochs: tuple[float, ...] = (),
  image_size: int = 0,
  workers: int = 0,
):
  """A video config: clips of `clip_frames` frames every `frame_stride`, `eval_clips` clips
  per video in evaluation, the transform chosen by the data (`auto`: the video models' scale,
  crop and flip for large frames), and the model's whole recipe, every value named."""
  config = default.get_config()
  config.model.name = model
  config.data.name = data_name
  config.data.clip_frames = clip_frames
  config.data.frame_stride = frame_stride
  config.data.eval_clips = eval_clips
  config.data.image_size = image_size
  config.data.workers = workers
  config.data.prefetch = 4 if workers else 2
  config.optim.schedule = schedule
  config.optim.base_learning_rate = base_learning_rate
  config.optim.base_batch_size = base_batch_size
  config.optim.weight_decay = weight_decay
  config.optim.warmup_epochs = warmup_epochs
  config.optim.decay_epochs = decay_epochs
  config.batch_size = batch_size
  config.num_epochs = num_epochs
  return config


# The video ResNets' recipe as we read Tran et al. 2018 (section 4.1): 16-frame clips of
# 112x112 (frames scaled to 128x171, randomly cropped, flipped), SGD at 0.01 per 32 clips
# divided by 10 every 10 epochs, 45 epochs, 10 clips per video at test time. Not run here.
TRAN = {
  "clip_frames": 16,
  "frame_stride": 1,
  "eval_clips": 10,
  "image_size": 112,
  "batch_size": 32,
  "num_epochs": 45.0,
  "schedule": "step",
  "base_learning_rate": 0.01,
  "base_batch_size": 32,
  "weight_decay": 1e-4,
  "warmup_epochs": 0.0,
  "decay_epochs": (10.0, 20.0, 30.0, 40.0),
  "workers": 8,
}


def get_config():
  config = recipe("r3d_18", data_name="video_folder", **TRAN)
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config
