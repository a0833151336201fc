"""daq_jax: INT8 training of convolutional networks in JAX/Flax with DAQ."""

__version__ = "0.1.0"


def quantize(model, rules, **kwargs):
  """A Flax model with DAQ int8 training in the contraction layers the rules match.

  flax.linen models go to `daq_jax.nn.quantize` (a wrapper with the model's `init`/`apply`),
  flax.nnx models to `daq_jax.nnx.quantize` (quantized in place; `rngs=` for stochastic
  rounding). Imported here lazily, so that `import daq_jax` loads neither JAX nor Flax.
  """
  from flax import nnx

  if isinstance(model, nnx.Module):
    from daq_jax.nnx import quantize as quantize_nnx

    return quantize_nnx(model, rules, **kwargs)
  from daq_jax.nn.quantized_model import quantize as quantize_linen

  return quantize_linen(model, rules, **kwargs)
