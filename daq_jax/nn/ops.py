"""The op modules a quantized Flax layer runs its contraction through: a small module that
replaces the layer's contraction and owns its quantization state, as Flax's fp8 ops do.

    QuantConvOp            lax.conv_general_dilated's signature   nn.Conv (its hook)
    QuantConvTransposeOp   lax.conv_transpose's                   nn.ConvTranspose
    QuantDotGeneralOp      lax.dot_general's                      nn.Dense, nn.DenseGeneral
    QuantEinsumOp          jnp.einsum's                           nn.Einsum

Flax's own hooks (`nn.Conv(conv_general_dilated_cls=...)`, `nn.Dense(dot_general_cls=...)`)
make them where a layer has one; `daq_jax.nn.quantized_model` makes them in place of the
function for the layers that have none. Either way the op is created inside the layer's call,
as its child.

The state lives in the `quant_state` collection under the layer's path, in a child named
`quant` (`quant_state/<layer>/quant/wgrad_clip`). The forward pass never changes it: the new
state is the cotangent of these variables under `jax.grad` (see `daq_jax.quant.value_and_grad`).
What the quantizer saw in the step (`gradient.STATISTICS`: the share of inverted-T channels,
the clip ratio, the dgrad scale) comes out the same way from a collection of its own,
`quant_stats`, of zeros: apply the model with it and differentiate with respect to it too to
get them; without it they are not computed. Stochastic gradient rounding draws from the
`quant` rng stream. A layer applied several times in one call of the model (a shared head)
counts its applications (`quant.state.Site`): its new state and statistics are the mean over
them.

A contraction the quantized ops cannot compute (a kernel axis that is a batch axis of the
product, a `preferred_element_type`, ...) is an error naming the layer and the reason when
the op is `strict` (the default); otherwise the layer computes in float and says so once, in
one logged line.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref

import flax.linen as nn
import jax
from jax import lax

from daq_jax.quant import conv_op, general, gradient
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.state import STATE_COLLECTION, STATS_COLLECTION, Site

RNG_STREAM = "quant"
OP_NAME = "quant"
log = logging.getLogger("daq_jax.quant")

# Per model application (its root scope): the site of each quantized layer applied in it.
_SITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_path(module: nn.Module) -> str:
  """The path of the layer an op module belongs to ("<root>" for the model itself)."""
  return "/".join(module.path[:-1]) or "<root>"


def quant_inputs(module: nn.Module, cfg: QuantConfig, features: int):
  """The layer's quantization state (created at init), its statistics input (zeros; empty
  when the variables passed to apply have no `quant_stats`), its PRNG key for stochastic
  rounding, and its site (counting this application).

  Raises:
    ValueError: when the variables lack the `quant_state` collection.
  """
  sites = _SITES.setdefault(module.scope.root, {})
  site = sites.setdefault(module.path, Site(layer_path(module))).applied()
  init = gradient.init_state(cfg, features)
  if not module.is_initializing() and not module.has_variable(STATE_COLLECTION, next(iter(init))):
    raise ValueError(
      f"quantized layer {site.name}: quantized layers need the '{STATE_COLLECTION}' "
      "collection in the variables passed to apply (take it from model.init)"
    )
  state = {
    name: module.variable(STATE_COLLECTION, name, lambda v=value: v).value
    for name, value in init.items()
  }
  stats = {}
  if module.is_initializing() or module.has_variable(STATS_COLLECTION, gradient.STATISTICS[0]):
    stats = {
      name: module.variable(STATS_COLLECTION, name, lambda v=value: v).value
      for name, value in gradient.init_statistics().items()
    }
  key = module.make_rng(RNG_STREAM) if cfg.stochastic and module.has_rng(RNG_STREAM) else None
  return state, stats, key, site


@functools.cache
def log_float(layer: str, reason: str) -> None:
  """Says once that a layer matched by a config stays float (strict=False), and why."""
  log.warning("quantized layer %s stays float (strict=False): %s", layer, reason)


class QuantOp(nn.Module):
  """What every op module is: a contraction with a quantization config and the layer's
  state.

  Attributes:
    quant: the quantization config.
    strict: a contraction the quantized ops cannot compute is an error (True), or the
      layer computes in float and says so once (False).
  """

  quant: QuantConfig
  strict: bool = True

  def refuse(self, reason: str, compute_float):
    """An error naming the layer and `reason` (strict), or `compute_float()` with one logged
    line."""
    if self.strict:
      raise ValueError(
        f"quantized layer {layer_path(self)}: {reason} (strict=False keeps it float)"
      )
    log_float(layer_path(self), reason)
    return compute_float()


class QuantConvOp(QuantOp):
  """`lax.conv_general_dilated`'s signature over `quant.conv_general`, with the layer's state."""

  @nn.compact
  def __call__(
    self,
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides=None,
    padding="SAME",
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,  # int8 products are exact: there is no precision to choose
    preferred_element_type=None,
  ) -> jax.Array:
    geometry = dict(
      window_strides=window_strides,
      padding=padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
    )
    if batch_group_count != 1 or preferred_element_type is not None:
      return self.refuse(
        "batch_group_count and preferred_element_type are not supported",
        lambda: lax.conv_general_dilated(
          lhs,
          rhs,
          batch_group_count=batch_group_count,
          precision=precision,
          preferred_element_type=preferred_element_type,
          **geometry,
        ),
      )
    state, stats, key, site = quant_inputs(self, self.quant, rhs.shape[-1])
    return conv_op.conv_general(
      lhs, rhs, state, key, cfg=self.quant, stats=stats, site=site, **geometry
    )


class QuantConvTransposeOp(QuantOp):
  """`lax.conv_transpose`'s signature over `quant.general.conv_transpose`."""

  @nn.compact
  def __call__(
    self,
    lhs,
    rhs,
    strides,
    padding,
    rhs_dilation=None,
    dimension_numbers=None,
    transpose_kernel: bool = False,
    precision=None,
    preferred_element_type=None,
    use_consistent_padding: bool = False,
  ):
    if preferred_element_type is not None:
      return self.refuse(
        "preferred_element_type is not supported",
        lambda: _ORIGINAL["conv_transpose"](
          lhs,
          rhs,
          strides,
          padding,
          rhs_dilation=rhs_dilation,
          dimension_numbers=dimension_numbers,
          transpose_kernel=transpose_kernel,
          precision=precision,
          preferred_element_type=preferred_element_type,
        ),
      )
    features = rhs.shape[-2] if transpose_kernel else rhs.shape[-1]
    state, stats, key, site = quant_inputs(self, self.quant, features)
    return general.conv_transpose(
      lhs,
      rhs,
      state,
      key,
      cfg=self.quant,
      strides=strides,
      padding=padding,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      transpose_kernel=transpose_kernel,
      use_consistent_padding=use_consistent_padding,
      stats=stats,
      site=site,
    )


class QuantDotGeneralOp(QuantOp):
  """`lax.dot_general`'s signature over `quant.general.dot_general` (an input with the
  layer's kernel; `quant.dense` itself for x (..., K) @ w (K, N))."""

  @nn.compact
  def __call__(
    self,
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    **kwargs,  # out_sharding and the like: int8 products choose their own layout
  ) -> jax.Array:
    reason = general.unsupported_dot_general(lhs.shape, rhs.shape, dimension_numbers)
    if preferred_element_type is not None:
      reason = "preferred_element_type is not supported"
    if reason:
      return self.refuse(
        reason,
        lambda: lax.dot_general(
          lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        ),
      )
    (_, contracted), _ = dimension_numbers
    features = general.kernel_features(rhs.shape, contracted)
    state, stats, key, site = quant_inputs(self, self.quant, features)
    return general.dot_general(
      lhs, rhs, dimension_numbers, state, key, cfg=self.quant, stats=stats, site=site
    )


class QuantEinsumOp(QuantOp):
  """`jnp.einsum(equation, inputs, kernel)`'s signature over `quant.general.einsum`."""

  @nn.compact
  def __call__(
    self, equation: str, lhs, rhs, precision=None, preferred_element_type=None, **kwargs
  ):
    reason = general.unsupported_einsum(equation, lhs.shape, rhs.shape)
    if preferred_element_type is not None:
      reason = "preferred_element_type is not supported"
    if reason:
      return self.refuse(
        f"einsum {equation!r}: {reason}",
        lambda: _ORIGINAL["einsum"](
          equation, lhs, rhs, precision=precision, preferred_element_type=preferred_element_type
        ),
      )
    features = general.einsum_features(equation, lhs.shape, rhs.shape)
    state, stats, key, site = quant_inputs(self, self.quant, features)
    return general.einsum(equation, lhs, rhs, state, key, cfg=self.quant, stats=stats, site=site)


# The functions the hook-less layers call, as JAX defines them (what a float layer runs).
_ORIGINAL = {"conv_transpose": lax.conv_transpose, "einsum": jax.numpy.einsum}


@dataclasses.dataclass(frozen=True)
class OpFactory:
  """What a Flax layer's `*_cls` hook calls: a hashable maker of one op module per call."""

  op: type[QuantOp]
  quant: QuantConfig
  strict: bool = True

  def __call__(self) -> QuantOp:
    return self.op(quant=self.quant, strict=self.strict, name=OP_NAME)
