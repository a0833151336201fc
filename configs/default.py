"""The default run: INT8 training of a small CNN on the embedded 8x8 digits with the
recommended method (`quant.config.RECOMMENDED`: daq_sr_rows, DAQ with stochastic rounding
of the gradient on both paths and one dgrad scale per output position; docs/accuracy.md says
why).

    python train.py                          # about 30 s on 2 CPU cores (docs/speed.md)
    python train.py --config.quant.method=fp32 --workdir runs/default_fp32

Built from the training config's dataclass defaults (daq_jax/training/config.py, whose
docstrings describe every key), the one source of defaults: every other config is a delta
from this one or from a per-dataset base (configs/base_cifar10.py, configs/base_imagenet.py).
The data ships with scikit-learn (1,797 handwritten digits; a fixed 360 of them are the test
split, see daq_jax/data/arrays.py), so this runs on a fresh install with no download. Every
layer is quantized, the first conv and the classifier included. Measured results are in
docs/training.md ("Results").
"""

import ml_collections

from daq_jax.training import config as config_lib


def get_config():
  return ml_collections.ConfigDict(config_lib.to_dict(config_lib.TrainConfig()))
