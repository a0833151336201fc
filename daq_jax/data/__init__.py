"""Input pipelines: the embedded digits, CIFAR pickles, image folders; deterministic batches."""

from daq_jax.data.arrays import ArrayDataset, load_cifar_pickle, load_digits, validation_split
from daq_jax.data.batches import Batches
from daq_jax.data.config import DataConfig
from daq_jax.data.image_folder import FileDataset, list_images
from daq_jax.data.info import DatasetInfo
from daq_jax.data.prefetch import prefetch
from daq_jax.data.sources import load, read_dir

__all__ = [
  "ArrayDataset",
  "Batches",
  "DataConfig",
  "DatasetInfo",
  "FileDataset",
  "list_images",
  "load",
  "load_cifar_pickle",
  "load_digits",
  "prefetch",
  "read_dir",
  "validation_split",
]
