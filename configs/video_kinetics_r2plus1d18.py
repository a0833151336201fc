"""R(2+1)D-18 (Tran et al. 2018) trained in INT8 on a Kinetics-style folder (Kinetics-400 or
-600 as frame folders or videos), with their recipe (configs/base_video.py, TRAN): 16x112x112
clips, 10 clips per video in evaluation, on `val`. Not run here: no GPU and no Kinetics on the
development machines (untested, costs unmeasured).

    python train.py --config configs/video_kinetics_r2plus1d18.py --config.data.dir=/data/k400
    python train.py --config configs/video_kinetics_r2plus1d18.py --config.data.dir=/data/k400 \
        --config.model.name=r3d_18                        # R3D-18, the same recipe

/data/k400 holds `train/<class>/<video>` and `val/<class>/<video>` (frame folders, .npy, or
.mp4 with `pip install 'daq_jax[video]'`). Batch 32 is the per-GPU batch of the paper: raise
`batch_size` with the device count and the learning rate follows (`base_batch_size` 32).
"""

from configs import base_video


def get_config():
  config = base_video.recipe("r2plus1d_18", data_name="video_folder", **base_video.TRAN)
  config.model.dtype = "bfloat16"
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config
