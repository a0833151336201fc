"""Float arithmetic whose every product and quotient is rounded on its own, however XLA fuses
it.

XLA contracts a float multiply and the add that consumes it into one fused multiply-add
(rounded once, not twice) wherever the two land in the same fused kernel, and no flag turns
that off (XLA:CPU always allows LLVM to fuse them; GPUs likewise). Which values land together
depends on the whole program: a value that a training step keeps for its backward pass is
written out and read back, while one that it recomputes is fused into its consumers. So two
programs that compute the same values, a step that keeps everything and one that recomputes
(`daq_jax.quant.memory`), round some of them differently and end up a few ulp apart.

`exact(fn)` removes the choice: it rewrites `fn`'s program (its jaxpr, every nested one
included) so that each float product and quotient passes through an integer identity on its
bits, which neither XLA nor LLVM can see through: the bits xor a zero that the program
computes at run time (whether the first element of the jaxpr's first float input is NaN;
were it, the step is NaN-poisoned anyway). A value so fenced is rounded to its dtype before
anything adds to it, in every fusion, and no constant folds into it, so every value has one
rounding, the one its jaxpr says. The cost: one xor per element of every product and
quotient, and the multiply-adds not fused (benchmarks/train_step.py measures it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import source_info_util
from jax.extend import core

# The primitives whose float result XLA could use without rounding it: products (a multiply-add
# fused) and quotients (XLA turns x / c into x * (1/c), then folds c' * (x * (1/c)) into one
# multiply by c'/c where nothing stands between them).
PRODUCTS = frozenset({"mul", "div", "square", "integer_pow"})
_BITS = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}
# The higher-order primitives whose programs XLA compiles and fuses with the rest, rewritten
# too. Others keep theirs as they are: a Pallas kernel's arithmetic is its own, the same in
# every program that calls it (and its operands are references, not arrays).
NESTED = frozenset(
  {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat2",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "cond",
    "while",
    "scan",
  }
)


def opaque_false(source: jax.Array) -> jax.Array:
  """A boolean false that no compiler can prove: whether `source`'s first element is NaN."""
  first = lax.reshape(lax.slice(source, (0,) * source.ndim, (1,) * source.ndim), ())
  return lax.ne(first, first)


def fence(value: jax.Array, false: jax.Array | None = None) -> jax.Array:
  """`value`, rounded where it stands: its bits xor a zero the compiler cannot prove zero
  (`false`, `opaque_false`'s, converted; by default made of `value` itself)."""
  if not jnp.issubdtype(value.dtype, jnp.floating) or value.size == 0:
    return value
  bits = _BITS[value.dtype.itemsize]
  zero = lax.convert_element_type(opaque_false(value) if false is None else false, bits)
  return lax.bitcast_convert_type(lax.bitcast_convert_type(value, bits) ^ zero, value.dtype)


def _false_of(values) -> jax.Array | None:
  """`opaque_false` of the first float value that has elements: a jaxpr's inputs, which exist
  before any of its products (a product's own first element would hold its kernel back)."""
  for v in values:
    if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating) and jnp.size(v):
      return opaque_false(jnp.asarray(v))
  return None


def _rewrite(jaxpr):
  """A (closed or open) jaxpr with its products and quotients fenced, same signature."""
  if isinstance(jaxpr, core.ClosedJaxpr):
    avals = [v.aval for v in jaxpr.jaxpr.invars]
    return jax.make_jaxpr(functools.partial(_evaluate, jaxpr.jaxpr, jaxpr.consts))(*avals)
  avals = [v.aval for v in jaxpr.invars]
  closed = jax.make_jaxpr(functools.partial(_evaluate, jaxpr, ()))(*avals)
  if jaxpr.constvars or closed.consts:  # open jaxprs (remat's) take no constants
    raise NotImplementedError("exact: an open jaxpr with constants")
  return closed.jaxpr


def _params(params: dict) -> dict:
  def rewritten(value):
    if isinstance(value, core.ClosedJaxpr | core.Jaxpr):
      return _rewrite(value)
    if isinstance(value, tuple) and any(
      isinstance(v, core.ClosedJaxpr | core.Jaxpr) for v in value
    ):
      return tuple(rewritten(v) for v in value)
    return value

  return {name: rewritten(value) for name, value in params.items()}


def _evaluate(jaxpr: core.Jaxpr, consts, *args):
  """`jaxpr` evaluated (traced) with its products and quotients fenced: JAX's eval_jaxpr,
  plus the fence."""
  env = dict(zip(jaxpr.constvars, consts, strict=True)) | dict(zip(jaxpr.invars, args, strict=True))

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  false = _false_of((*args, *consts))
  for eqn in jaxpr.eqns:
    nested = eqn.primitive.name in NESTED
    params = eqn.primitive.get_bind_params(_params(eqn.params) if nested else eqn.params)
    with source_info_util.user_context(
      eqn.source_info.traceback, name_stack=eqn.source_info.name_stack
    ):
      out = eqn.primitive.bind(*map(read, eqn.invars), **params)
      if eqn.primitive.name in PRODUCTS:
        out = fence(out, false)
    outs = out if eqn.primitive.multiple_results else [out]
    env.update(zip(eqn.outvars, outs, strict=True))
  return [read(v) for v in jaxpr.outvars]


def exact(fn: Callable) -> Callable:
  """`fn` (any pytree function: a training step, a gradient) with every float product and
  quotient rounded on its own, so its numbers do not depend on how XLA fuses its program
  (module docstring). Wrap what is already differentiated (the step, `jax.grad(loss)`): the
  derivative of an `exact` function is not rewritten.

  Two programs that compute the same values under `exact` give the same bits: a step that
  keeps everything for its backward pass and one that recomputes (`memory="int8"`).
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args, **kwargs)
    flat = jax.tree.leaves((args, kwargs))
    out = _evaluate(closed.jaxpr, closed.consts, *flat)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped
