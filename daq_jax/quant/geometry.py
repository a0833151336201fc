"""Convolution geometry: the static shape arithmetic every implementation shares.

Layout is channels last, that of `flax.linen.Conv`: lhs (N, *spatial, C_in), rhs (*spatial,
C_in / groups, C_out). 1-D, 2-D and 3-D convolutions, strides, padding, lhs (input) and rhs
(kernel) dilation and feature groups (depthwise included) are described by a `ConvSpec`.
Nothing here depends on how a contraction is computed.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """The static geometry of a convolution (explicit padding, one int per spatial dim)."""

  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  feature_group_count: int

  def conv_kwargs(self) -> dict:
    return dict(
      window_strides=self.window_strides,
      padding=self.padding,
      lhs_dilation=self.lhs_dilation,
      rhs_dilation=self.rhs_dilation,
      feature_group_count=self.feature_group_count,
    )

  def float_conv(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The float convolution with this geometry (the `simulate` path and the oracle)."""
    return lax.conv_general_dilated(
      lhs,
      rhs,
      dimension_numbers=channels_last_dimension_numbers(lhs.ndim),
      precision=lax.Precision.HIGHEST,
      **self.conv_kwargs(),
    )


def channels_last_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """NHWC / HWIO / NHWC (and their 1-D and 3-D forms) for rank-`ndim` operands."""
  spatial = tuple(range(1, ndim - 1))
  lhs = (0, ndim - 1) + spatial
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _tuple(name: str, value, n: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  value = tuple(int(v) for v in value)
  if len(value) != n:
    raise ValueError(f"conv: {name}={value} must have one entry per spatial dim ({n})")
  if any(v < 1 for v in value):
    raise ValueError(f"conv: {name}={value} must be positive")
  return value


def check_layout(dimension_numbers, ndim: int, lhs_shape, rhs_shape) -> None:
  """Refuses, with a clear error, any layout but channels last (None means channels last)."""
  if dimension_numbers is None:
    return
  try:
    given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  except (TypeError, ValueError) as e:
    raise ValueError(f"conv: dimension_numbers={dimension_numbers!r} are not valid: {e}") from e
  if given != channels_last_dimension_numbers(ndim):
    raise ValueError(
      f"conv: dimension_numbers={dimension_numbers!r} are not supported; the quantized conv is "
      "channels last (N, *spatial, C) with kernels (*spatial, I, O), like flax.linen.Conv"
    )


def make_spec(
  lhs_shape: Sequence[int],
  rhs_shape: Sequence[int],
  *,
  window_strides=None,
  padding="SAME",
  lhs_dilation=None,
  rhs_dilation=None,
  feature_group_count: int = 1,
) -> ConvSpec:
  """Validates the operands' shapes and resolves the geometry into a `ConvSpec`."""
  if len(lhs_shape) != len(rhs_shape) or len(lhs_shape) not in (3, 4, 5):
    raise ValueError(
      f"conv: lhs {tuple(lhs_shape)} and rhs {tuple(rhs_shape)} must both be rank 3, 4 or 5 "
      "(N, *spatial, C) and (*spatial, C_in/groups, C_out): 1-D, 2-D or 3-D, channels last"
    )
  n = len(lhs_shape) - 2
  groups = int(feature_group_count)
  c_in, c_out = lhs_shape[-1], rhs_shape[-1]
  if groups < 1 or c_in % groups or c_out % groups:
    raise ValueError(
      f"conv: feature_group_count={groups} must divide the input ({c_in}) and output "
      f"({c_out}) channels"
    )
  if rhs_shape[-2] * groups != c_in:
    raise ValueError(
      f"conv: rhs {tuple(rhs_shape)} has {rhs_shape[-2]} input channels per group, but lhs "
      f"{tuple(lhs_shape)} with feature_group_count={groups} needs {c_in // groups}"
    )
  strides = _tuple("window_strides", window_strides, n)
  lhs_dil = _tuple("lhs_dilation", lhs_dilation, n)
  rhs_dil = _tuple("rhs_dilation", rhs_dilation, n)
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
      raise ValueError(f"conv: padding={padding!r} is not SAME, SAME_LOWER, VALID or pairs")
    dilated_in = [(d - 1) * ld + 1 for d, ld in zip(lhs_shape[1:-1], lhs_dil)]
    dilated_k = [(k - 1) * rd + 1 for k, rd in zip(rhs_shape[:-2], rhs_dil)]
    pads = lax.padtype_to_pads(dilated_in, dilated_k, strides, padding.upper())
  else:
    pads = [tuple(int(p) for p in pair) for pair in padding]
    if len(pads) != n or any(len(p) != 2 for p in pads):
      raise ValueError(f"conv: padding={padding} must be {n} (low, high) pairs")
  spec = ConvSpec(strides, tuple(tuple(p) for p in pads), lhs_dil, rhs_dil, groups)
  out_sizes = out_spatial(lhs_shape, rhs_shape, spec)
  if any(o < 1 for o in out_sizes):
    raise ValueError(
      f"conv: lhs {tuple(lhs_shape)} with kernel {tuple(rhs_shape)} and {spec} gives an empty "
      f"output {tuple(out_sizes)}"
    )
  return spec


def out_spatial(lhs_shape, rhs_shape, spec: ConvSpec) -> list[int]:
  """The output's spatial sizes (0 where the conv would be empty)."""
  out = []
  for d, k, s, (lo, hi), ld, rd in zip(
    lhs_shape[1:-1],
    rhs_shape[:-2],
    spec.window_strides,
    spec.padding,
    spec.lhs_dilation,
    spec.rhs_dilation,
  ):
    span = (d - 1) * ld + 1 + lo + hi - ((k - 1) * rd + 1)
    out.append(span // s + 1 if span >= 0 else 0)
  return out


def dgrad_kernel(rhs: jax.Array, groups: int) -> jax.Array:
  """The kernel whose forward conv with g is the input gradient: spatially flipped, with the
  input and output channels of each group swapped: (*sp, I, G*O) -> (*sp, O, G*I)."""
  *sp, i, c_out = rhs.shape
  o = c_out // groups
  w = jnp.flip(rhs, axis=tuple(range(len(sp))))
  w = w.reshape(*sp, i, groups, o)
  w = jnp.moveaxis(w, (-3, -2, -1), (-1, -2, -3))  # (*sp, O, G, I)
  return w.reshape(*sp, o, groups * i)


def dgrad_spec(lhs_shape, rhs_shape, spec: ConvSpec) -> ConvSpec:
  """The geometry of the input-gradient conv: strides and input dilation swap roles and the
  padding makes the result cover exactly the (dilated) input."""
  out_sizes = out_spatial(lhs_shape, rhs_shape, spec)
  pads = []
  for d, k, o, s, (lo, _), ld, rd in zip(
    lhs_shape[1:-1],
    rhs_shape[:-2],
    out_sizes,
    spec.window_strides,
    spec.padding,
    spec.lhs_dilation,
    spec.rhs_dilation,
  ):
    dilated_in, dilated_k = (d - 1) * ld + 1, (k - 1) * rd + 1
    pads.append((dilated_k - 1 - lo, dilated_in - (o - 1) * s - 1 + lo))
  return ConvSpec(
    window_strides=spec.lhs_dilation,
    padding=tuple(pads),
    lhs_dilation=spec.window_strides,
    rhs_dilation=spec.rhs_dilation,
    feature_group_count=spec.feature_group_count,
  )


def col2im(cols: jax.Array, lhs_shape, rhs_shape, spec: ConvSpec) -> jax.Array:
  """The transpose of `spec_patches`: every column of `cols` (N * prod(out), T * C) added back
  onto the input position its tap was taken from, (N, *spatial, C) in cols' float dtype."""
  take = jax.linear_transpose(
    lambda x: spec_patches(x, rhs_shape, spec), jax.ShapeDtypeStruct(tuple(lhs_shape), cols.dtype)
  )
  (out,) = take(cols)
  return out


def patches(x: jax.Array, ksize, *, window_strides, padding, lhs_dilation, rhs_dilation):
  """im2col of a channels-last input: (N, *spatial, C) -> (N * prod(out), T * C), taps major
  and channels minor, the order of a (*ksize, C, C_out) kernel reshaped to (T * C, C_out).

  Args:
    x: the input; `padding` are explicit (low, high) pairs.

  Returns:
    (patches, output spatial sizes).
  """
  pad_cfg = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation)]
  x_p = lax.pad(x, jnp.zeros((), x.dtype), [*pad_cfg, (0, 0, 0)])
  out = [
    (size - ((k - 1) * d + 1)) // s + 1
    for size, k, d, s in zip(x_p.shape[1:-1], ksize, rhs_dilation, window_strides)
  ]
  cols = []
  for tap in itertools.product(*(range(k) for k in ksize)):
    start = [0, *(t * d for t, d in zip(tap, rhs_dilation)), 0]
    limit = [
      x_p.shape[0],
      *(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, window_strides)),
      x_p.shape[-1],
    ]
    cols.append(lax.slice(x_p, start, limit, [1, *window_strides, 1]))
  return jnp.stack(cols, axis=-2).reshape(-1, len(cols) * x.shape[-1]), out


def spec_patches(x: jax.Array, rhs_shape, spec: ConvSpec) -> jax.Array:
  """`patches` for a kernel of `rhs_shape` under `spec`: (N * prod(out), T * C)."""
  cols, _ = patches(
    x,
    rhs_shape[:-2],
    window_strides=spec.window_strides,
    padding=spec.padding,
    lhs_dilation=spec.lhs_dilation,
    rhs_dilation=spec.rhs_dilation,
  )
  return cols
