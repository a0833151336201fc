"""daq_jax.nn.relu and relu6: JAX's values and gradients bit for bit, the masks kept as bits.

Strategy: values and gradients against jax.nn.relu / relu6 on values at and around the kinks
(0, -0, 6) and a width that is not a multiple of 8; the residual their gradient keeps is the
packed mask, an eighth of JAX's bool.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from daq_jax import nn as qnn

EDGES = [-1.0, 0.0, -0.0, 0.5, 6.0, 7.0, 5.9999, 1e-30, -1e-30, 3.0, 6.0001]


@pytest.mark.parametrize("ours, theirs", [(qnn.relu, jax.nn.relu), (qnn.relu6, jax.nn.relu6)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_are_jaxs(ours, theirs, dtype):
  x = jnp.array([EDGES] * 3, dtype) * jnp.array([[1.0], [2.0], [-1.0]], dtype)
  weights = jnp.arange(x.size, dtype=dtype).reshape(x.shape)
  np.testing.assert_array_equal(ours(x), theirs(x))
  grad = jax.grad(lambda x, f: jnp.sum(f(x) * weights), argnums=0)
  np.testing.assert_array_equal(grad(x, ours), grad(x, theirs))


def test_the_mask_is_kept_as_bits():
  x = jnp.ones((4, 16, 11))
  kept = saved_residuals(lambda x: jnp.sum(qnn.relu(x) ** 2), x)
  masks = [aval for aval, _ in kept if aval.dtype == jnp.uint8]
  assert [m.shape for m in masks] == [(4, 16, 2)]  # 11 bits in 2 bytes, where JAX keeps 11 bools
