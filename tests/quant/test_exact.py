"""quant.exact: every float product and quotient rounded on its own, however XLA fuses them.

Strategy: (1) a multiply-add that XLA may contract into one rounding gives the twice-rounded
result under `exact`, the value numpy computes step by step; (2) the same function's gradient
keeping everything and recomputing everything (`jax.checkpoint`) gives the same bits under
`exact`, for a BatchNorm-ReLU chain whose running mean folds two constants (what
memory="int8" relies on; tests/training/test_memory.py does it for train.py's step); (3) the
rewrite keeps the function: nested jit, custom_jvp, scan, cond and checkpoint inside it give
what they give without it, to float32 rounding; (4) a Pallas kernel inside is left as it is
(its arithmetic is its own, the same in every program).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jax_core

from daq_jax.pallas.gemm import int8_matmul
from daq_jax.quant import exact
from daq_jax.quant.exact import fence


def test_a_product_is_rounded_before_the_sum_it_enters():
  # (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46: rounded first, the sum with -(1 + 2^-22) is 0; fused
  # into one multiply-add it is 2^-46.
  x = np.full(64, 1 + 2.0**-23, np.float32)
  z = np.full(64, -(1 + 2.0**-22), np.float32)
  twice_rounded = x * x + z  # numpy rounds each operation
  assert twice_rounded[0] == 0.0
  out = jax.jit(exact(lambda x, z: x * x + z))(x, z)
  np.testing.assert_array_equal(out, twice_rounded)


def test_the_fence_changes_no_bit():
  values = jnp.array([1.5, -0.0, np.inf, -3e-38, 7.0], jnp.float32)
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    v = values.astype(dtype)
    np.testing.assert_array_equal(
      lax.bitcast_convert_type(jax.jit(fence)(v), jnp.uint16 if v.itemsize == 2 else jnp.uint32),
      lax.bitcast_convert_type(v, jnp.uint16 if v.itemsize == 2 else jnp.uint32),
    )
  assert fence(jnp.arange(3)).dtype == jnp.int32  # integers pass through


def _norm_relu(params, x):
  """Two BatchNorm-ReLU layers with a running mean: products, quotients by a constant, sums."""
  mean_total = 0.0
  for w, gamma, beta in params:
    y = x @ w
    mean = y.sum(0) / y.shape[0]
    var = jnp.maximum((y * y).sum(0) / y.shape[0] - mean * mean, 0.0)
    x = jax.nn.relu((y - mean) * (lax.rsqrt(var + 1e-5) * gamma) + beta)
    mean_total = mean_total + 0.1 * mean
  return jnp.sum(x * x) / 7.0, mean_total


def test_keeping_and_recomputing_give_the_same_bits():
  keys = jax.random.split(jax.random.key(0), 4)
  params = [
    (jax.random.normal(k, (96, 96)) / 10, jnp.full(96, 1.3), jnp.full(96, 0.2)) for k in keys[:3]
  ]
  x = jax.random.normal(keys[3], (200, 96))
  keep = jax.grad(_norm_relu, has_aux=True)
  recompute = jax.grad(
    jax.checkpoint(_norm_relu, policy=jax.checkpoint_policies.nothing_saveable), has_aux=True
  )
  kept, recomputed = jax.jit(exact(keep))(params, x), jax.jit(exact(recompute))(params, x)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(recomputed), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(jax.jit(keep)(params, x)), strict=True):
    # the same function, rounded otherwise: BatchNorm's gradient is a difference of near-equal
    # terms, in which last-bit differences grow to 1e-5
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_nested_programs_are_rewritten_and_kept():
  @jax.jit
  def inner(x):
    return jax.nn.relu(x) * 2.0  # custom_jvp inside a nested jit

  def f(x, n):
    x = jax.checkpoint(inner)(x)
    x, _ = lax.scan(lambda c, _: (c * 0.5 + 1.0, None), x, None, length=3)
    x = lax.cond(n > 0, lambda v: v / 3.0, lambda v: v * 3.0, x)
    return jnp.sum(x * x), x

  x = jnp.linspace(-2, 2, 32)
  for n in (0, 1):
    for a, b in zip(
      jax.tree.leaves(jax.jit(exact(jax.value_and_grad(f, has_aux=True)))(x, n)),
      jax.tree.leaves(jax.value_and_grad(f, has_aux=True)(x, n)),
      strict=True,
    ):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  program = str(jax.make_jaxpr(exact(f))(x, 1))
  assert program.count("xor") >= 4  # the products in the scan's and the cond's bodies too


def test_a_kernel_is_left_as_it_is():
  a = jax.random.randint(jax.random.key(1), (16, 32), -127, 128).astype(jnp.int8)
  b = jax.random.randint(jax.random.key(2), (32, 16), -127, 128).astype(jnp.int8)
  scales = jnp.full(16, 0.5), jnp.full(16, 0.25)

  def f(a, b):
    return int8_matmul(a, b, *scales, interpret=True) * 3.0

  def kernels(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        yield eqn.params["jaxpr"]
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from kernels(sub)

  program = str(jax.make_jaxpr(exact(f))(a, b))
  (kernel,) = kernels(jax.make_jaxpr(exact(f))(a, b).jaxpr)
  assert "xor" in program and "xor" not in str(kernel)  # the product after it fenced, not it
  np.testing.assert_array_equal(jax.jit(exact(f))(a, b), jax.jit(f)(a, b))
