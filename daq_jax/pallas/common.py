"""What every Pallas kernel module shares: Triton's compiler parameters and the check that a
compiled kernel is traced for a CUDA GPU."""

from jax.experimental.pallas import triton as _pltriton

from daq_jax.quant.backends.platform import target_platform


def triton_params(**kwargs):
  """Triton compiler parameters for `pl.pallas_call`.

  They select Pallas's Triton lowering, which JAX 0.11 deprecates in favour of Mosaic GPU (a
  DeprecationWarning as the kernel lowers). The kernels here rely on Triton's dot lowering,
  which Mosaic GPU does not have (a Mosaic GPU kernel issues wgmma itself), so the warning is
  expected: the test suite ignores it by its text, and nothing else hides it."""
  return _pltriton.CompilerParams(**kwargs)


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
