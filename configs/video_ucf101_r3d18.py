"""R3D-18 (Tran et al. 2018) trained from scratch in INT8 on UCF-101, with their recipe
(configs/base_video.py, TRAN): 16x112x112 clips, 10 clips per video in evaluation. Not run
here: no GPU and no UCF-101 on the development machines (untested, costs unmeasured).

    python train.py --config configs/video_ucf101_r3d18.py --config.data.dir=/data/ucf101
    python train.py --config configs/video_ucf101_r3d18.py --config.data.dir=/data/ucf101 \
        --config.model.name=r2plus1d_18                  # R(2+1)D-18, the same recipe

/data/ucf101 holds `train/<class>/<video>/` and `test/<class>/<video>/` (one official split:
frame folders as `ffmpeg -i v.avi v/%05d.jpg` writes them, .npy clips, or the .avi files
themselves with `pip install 'daq_jax[video]'`). From scratch UCF-101 overfits (the paper
pretrains on Kinetics); the schedule is the paper's as we read it.
"""

from configs import base_video


def get_config():
  config = base_video.recipe("r3d_18", data_name="video_folder", **base_video.TRAN)
  config.log_every_steps = 50
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 1000
  return config
