"""The interface every implementation of the quantized ops' int8 products implements.

A quantized conv or dense layer has three contractions: the forward product, the input
gradient (dgrad) and the weight gradient (wgrad). Each takes int8 operands with their float32
clip values (`numerics.QTensor`) and returns the float32, rescaled result. An implementation
may keep its operand for the backward pass in a layout of its own (a pre-flipped kernel, a
channels-first input): the forward pass asks the implementation chosen for dgrad what it
keeps of the kernel, and the one chosen for wgrad what it keeps of the input, so the three
contractions can come from different implementations.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

from daq_jax.quant import gradient
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.geometry import ConvSpec
from daq_jax.quant.numerics import QTensor


class Backend(abc.ABC):
  """One way of computing the int8 products of the quantized conv and dense ops.

  Shapes: conv lhs (N, *spatial, C_in), rhs (*spatial, C_in / G, C_out), g (N, *out, C_out);
  dense x (M, K), w (K, N), g (M, N). The wgrad-path g is a 2-D view (M, C_out) whose scale is
  () or (C_out,) (per output channel); the dgrad-path g's scale is () or, per row, (M, 1) for
  dense layers and (N, *out, 1) for convs (`conv_dgrad_rows`); every other operand has one
  scale.
  """

  name: str
  # Whether `conv_dgrad_rows` is implemented: a conv dgrad with one g scale per output
  # position (`dgrad_granularity="per_row"`), which factors out of a GEMM + col2im only.
  dgrad_rows: bool = False
  # Whether the conv products take g as a `numerics.Deferred` (float, quantized as it is
  # loaded) instead of int8; the ops hand every other implementation int8.
  quantizes_on_load: bool = False

  def unsupported(
    self, contraction: str, spec: ConvSpec | None, platform: str, shapes=None
  ) -> str | None:
    """Why this implementation cannot compute `contraction` ("forward", "dgrad", "wgrad") of a
    conv with geometry `spec` (None: a dense layer) on `platform`; None when it can.
    `shapes`: the conv's (lhs, rhs) shapes where known."""
    del contraction, spec, platform, shapes
    return None

  # Conv ------------------------------------------------------------------------------------

  # The conv products return float32 or, where the implementation writes it directly,
  # `out_dtype` (the op casts what it gets to its operands' dtype).

  @abc.abstractmethod
  def conv_forward(self, x: QTensor, w: QTensor, spec: ConvSpec, out_dtype=jnp.float32):
    """The convolution (N, *out, C_out)."""

  def conv_keep_kernel(self, rhs: jax.Array, w: QTensor, spec: ConvSpec, rows: bool = False):
    """What `conv_dgrad` (`conv_dgrad_rows` if `rows`) gets of the kernel (float `rhs`,
    quantized `w`): `w` by default."""
    del rhs, spec, rows
    return w

  @abc.abstractmethod
  def conv_dgrad(
    self, g: QTensor, kernel: Any, lhs_shape, rhs_shape, spec: ConvSpec, out_dtype=jnp.float32
  ):
    """The input gradient (N, *spatial, C_in)."""

  def conv_dgrad_rows(
    self, g: QTensor, kernel: Any, lhs_shape, rhs_shape, spec: ConvSpec, out_dtype=jnp.float32
  ):
    """The input gradient from g with one scale per output position, g.scale (N, *out, 1),
    and the kernel `conv_keep_kernel(..., rows=True)` kept: (N, *spatial, C_in)."""
    raise NotImplementedError(f"impl {self.name!r} has no dgrad with per-row g scales")

  def conv_keep_input(self, lhs: jax.Array, x: QTensor, spec: ConvSpec) -> Any:
    """What `conv_wgrad` gets of the input (float `lhs`, quantized `x`): `x` by default."""
    del lhs, spec
    return x

  @abc.abstractmethod
  def conv_wgrad(self, inputs: Any, g: QTensor, lhs_shape, rhs_shape, spec: ConvSpec):
    """The weight gradient, float32 (*spatial, C_in / G, C_out)."""

  # Dense -----------------------------------------------------------------------------------

  @abc.abstractmethod
  def dense_forward(self, x: QTensor, w: QTensor) -> jax.Array:
    """x @ w, float32 (M, N)."""

  def dense_keep_kernel(self, w: jax.Array, wq: QTensor) -> Any:
    """What `dense_dgrad` gets of the kernel: `wq` by default."""
    del w
    return wq

  @abc.abstractmethod
  def dense_dgrad(self, g: QTensor, kernel: Any) -> jax.Array:
    """g @ w^T, float32 (M, K)."""

  def dense_keep_input(self, x: jax.Array, xq: QTensor) -> Any:
    """What `dense_wgrad` gets of the input: `xq` by default."""
    del x
    return xq

  @abc.abstractmethod
  def dense_wgrad(self, inputs: Any, g: QTensor) -> jax.Array:
    """x^T @ g, float32 (K, N)."""

  # The gradient quantizer ------------------------------------------------------------------

  def quantize_gradient(
    self,
    g: jax.Array,
    state: gradient.State,
    cfg: QuantConfig,
    key: jax.Array | None,
    defer: tuple[str, ...] = (),
  ) -> gradient.QuantizedGradient:
    """Both quantizations of g (the wgrad implementation's is used), the paths in `defer`
    left to be quantized on load: the jnp quantizer."""
    return gradient.quantize_gradient(g, state, cfg, key, defer)
