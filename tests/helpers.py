"""Test data and comparisons shared by the test files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def pow2_tensor(key, shape, exponent: int, per_channel_max: bool = False) -> jax.Array:
  """Integers in [-127, 127] times 2**exponent with max|.| = 127 * 2**exponent (per channel
  on the last axis when `per_channel_max`), so that every max-abs scale / 127 is a power of
  two and int8 quantization is exact."""
  q = jax.random.randint(key, shape, -127, 128).astype(jnp.float32)
  if per_channel_max:
    q = q.reshape(-1, shape[-1]).at[0].set(127.0).reshape(shape)
  else:
    q = q.reshape(-1).at[0].set(-127.0).reshape(shape)
  return q * 2.0**exponent


def cosine(a, b) -> float:
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_close(actual, desired, rtol: float) -> None:
  """Elementwise rtol, with an absolute floor of rtol * max|desired| for values near zero."""
  desired = np.asarray(desired, np.float64)
  scale = float(np.max(np.abs(desired))) if desired.size else 0.0
  np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=rtol, atol=rtol * scale)


class CompiledOrInterpreted:
  """Base of kernel test classes: as written they run the compiled kernels and skip without a
  GPU; a subclass with `interpret = True` reruns every test in Pallas's interpreter."""

  interpret = False

  @pytest.fixture(autouse=True)
  def _needs_gpu(self):
    if not self.interpret and jax.default_backend() != "gpu":
      pytest.skip("compiled Pallas kernels need a GPU")
