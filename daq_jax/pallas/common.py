"""What every Pallas kernel module shares: Triton's compiler parameters, the check that a
compiled kernel is traced for a CUDA GPU, whole-array operands, and the quantizer kernels
apply in registers."""

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as _pltriton

from daq_jax.quant import numerics
from daq_jax.quant.backends.platform import target_platform
from daq_jax.quant.numerics import QMAX


def triton_params(**kwargs):
  """Triton compiler parameters for `pl.pallas_call`.

  They select Pallas's Triton lowering, which JAX 0.11 deprecates in favour of Mosaic GPU (a
  DeprecationWarning as the kernel lowers). The kernels here rely on Triton's dot lowering,
  which Mosaic GPU does not have (a Mosaic GPU kernel issues wgmma itself), so the warning is
  expected: the test suite ignores it by its text, and nothing else hides it."""
  return _pltriton.CompilerParams(**kwargs)


def vector(v, dtype):
  """An optional operand as a kernel input: `v` flattened, or one zero of `dtype` for None."""
  return jnp.zeros((1,), dtype) if v is None else jnp.reshape(v, (-1,))


def whole(v) -> pl.BlockSpec:
  """The BlockSpec that gives every grid step the whole of `v`."""
  return pl.BlockSpec(v.shape, lambda *_: (0,) * v.ndim)


def check_compilable(interpret: bool, what: str) -> None:
  """A clear error for compiled kernels in a program traced for anything but a CUDA GPU (the
  Triton lowering would fail deep inside JAX)."""
  platform = target_platform()
  if not interpret and platform != "cuda":
    raise ValueError(
      f"{what} compiles its Pallas kernels for CUDA GPUs only, and this program is traced for "
      f"{platform}: pass interpret=True to run them in the Pallas interpreter (slow), or use "
      "impl='auto'"
    )


def _round_half_even(t):
  """jnp.round (ties to even) from floor and exact float arithmetic: Triton has no round."""
  f = jnp.floor(t)
  frac = t - f  # exact
  odd = (f - 2.0 * jnp.floor(f * 0.5)) != 0
  up = (frac > 0.5) | ((frac == 0.5) & odd)
  return f + up.astype(t.dtype)


def quantize_in_kernel(v, inverse, rounding: str, seed, index):
  """`numerics.quantize_tensor` inside a kernel, given 127/s (`numerics.inverse_step`, divided
  in XLA: Triton's division is approximate): a multiply, a clip, a rounding (nearest, or
  stochastic with the jnp quantizer's dither of `seed` and the elements' row-major `index`).
  Only exact float operations, so the int8 codes equal the jnp quantizer's on every platform.
  """
  t = jnp.clip(v.astype(jnp.float32) * inverse, -QMAX, QMAX)  # the bounds are integers
  if rounding == "stochastic":
    return jnp.floor(t + numerics.dither(seed, index)).astype(jnp.int8)
  return _round_half_even(t).astype(jnp.int8)
