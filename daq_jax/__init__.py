"""daq_jax: INT8 training of convolutional networks in JAX/Flax with DAQ."""

__version__ = "0.1.0"
