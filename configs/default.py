"""The default run: DAQ INT8 training of a small CNN on the embedded 8x8 digits.

    python train.py                          # about a minute on 2 CPU cores
    python train.py --config.quant.method=fp32 --workdir runs/default_fp32

The data ships with scikit-learn (1,797 handwritten digits; a fixed 360 of them are the test
split, see daq_jax/data/arrays.py), so this runs on a fresh install with no download. Every
layer is quantized, the first conv and the classifier included. Measured results are in the
README ("Training").
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.dtype = "float32"  # compute dtype of the float parts (BN, pooling, float layers)

  config.quant = ml_collections.ConfigDict()
  config.quant.method = "daq"  # fp32 | per_tensor | daq | ui8 | gvq | mcs
  config.quant.impl = "xla"  # xla (int8 lax ops) | pallas (GPU kernels) | simulate (float)
  config.quant.quantize_first_conv = True
  config.quant.quantize_last_dense = True

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"  # digits | cifar10 | cifar100 | image_folder
  config.data.dir = ""
  config.data.image_size = 0  # 0: as stored
  config.data.val_fraction = 0.0  # share of train held out (stratified, last of each class)
  config.data.eval_split = "test"  # val | test
  config.data.augment = "auto"  # auto | none | cifar | imagenet
  config.data.cache_dir = "~/.cache/daq_jax/datasets"
  config.data.workers = 0  # decoding processes (ImageNet-size folders)
  config.data.prefetch = 2

  config.optim = ml_collections.ConfigDict()
  config.optim.base_learning_rate = 0.1  # at base_batch_size; scaled linearly with batch_size
  config.optim.base_batch_size = 128
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 5e-4  # kernels only, not biases or BN
  config.optim.schedule = "cosine"  # cosine | step | constant
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = ()  # step schedule boundaries
  config.optim.decay_factor = 0.1

  config.batch_size = 64
  config.num_epochs = 30.0
  config.num_steps = 0  # > 0 overrides num_epochs
  config.label_smoothing = 0.0
  config.log_every_steps = 50
  config.eval_every_epochs = 10.0  # 0: at the end only
  config.checkpoint_every_steps = 0  # 0: every epoch
  config.keep_checkpoints = 3
  config.num_devices = 0  # 0: all local devices
  return config
