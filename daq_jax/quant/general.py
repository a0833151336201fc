"""The other contractions of Flax's layers, as the two quantized ops: a transposed conv is a
conv with its input dilated by the strides (`conv_general`); a `dot_general` or a two-operand
`einsum` of an input with a kernel is a dense product (`dense`) on views that put the
contracted axes last in the input and first in the kernel.

    conv_transpose   nn.ConvTranspose, nnx.ConvTranspose     (as lax.conv_transpose)
    dot_general      nn.DenseGeneral, nnx.LinearGeneral      (as lax.dot_general)
    einsum           nn.Einsum, nnx.Einsum                   (as jnp.einsum)

Each gives what the float function gives, with DAQ's int8 forward and backward passes; the
per-output-channel gradient state has one entry per kernel output element (the kernel's axes
that are not contracted, flattened). What cannot be a dense product (a kernel axis that is a
batch axis of the product, an axis summed in one operand alone) is refused with the reason
(`unsupported_dot_general`, `unsupported_einsum`), so a layer is quantized or refused, never
silently computed in float.
"""

from __future__ import annotations

import math
import string

import jax.numpy as jnp

from daq_jax.quant import gradient
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.conv_op import conv_general
from daq_jax.quant.dense_op import dense


def _transpose_padding(k: int, s: int, padding) -> tuple[int, int]:
  """lax.conv_transpose's padding of one spatial dim (kernel extent k, stride s)."""
  if padding == "SAME":
    pad_len = k + s - 2
    pad_a = k - 1 if s > k - 1 else math.ceil(pad_len / 2)
  elif padding == "VALID":
    pad_len = k + s - 2 + max(k - s, 0)
    pad_a = k - 1
  else:
    pads = tuple(k - p - 1 for p in padding)
    pad_a, pad_len = pads[0], sum(pads)
  return pad_a, pad_len - pad_a


def transpose_padding(rhs_shape, strides, padding, rhs_dilation=None, consistent=False):
  """The explicit (low, high) pads of `lax.conv_transpose`'s conv with these arguments."""
  n = len(strides)
  dilation = rhs_dilation or (1,) * n
  if not (consistent or (isinstance(padding, str) and padding in ("SAME", "VALID"))):
    return tuple(tuple(p) for p in padding)
  per_dim = [padding] * n if isinstance(padding, str) else list(padding)
  extents = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:-2], dilation)]
  return tuple(_transpose_padding(k, s, p) for k, s, p in zip(extents, strides, per_dim))


def conv_transpose(
  lhs,
  rhs,
  state: gradient.State,
  key=None,
  *,
  cfg: QuantConfig,
  strides,
  padding,
  rhs_dilation=None,
  dimension_numbers=None,
  transpose_kernel: bool = False,
  use_consistent_padding: bool = False,
  stats=None,
  site=None,
):
  """`lax.conv_transpose` (channels last) with DAQ int8 forward and backward passes: the
  conv with input dilation `strides` and lax's padding; `transpose_kernel` flips the kernel
  and swaps its channel axes (in float, before quantization)."""
  strides = tuple(strides)
  pads = transpose_padding(rhs.shape, strides, padding, rhs_dilation, use_consistent_padding)
  if transpose_kernel:
    rhs = jnp.swapaxes(jnp.flip(rhs, axis=tuple(range(rhs.ndim - 2))), -1, -2)
  return conv_general(
    lhs,
    rhs,
    state,
    key,
    cfg=cfg,
    window_strides=(1,) * len(strides),
    padding=pads,
    lhs_dilation=strides,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    stats=stats,
    site=site,
  )


def unsupported_dot_general(lhs_shape, rhs_shape, dimension_numbers) -> str | None:
  """Why `dot_general(x, kernel)` is not a dense product (None when it is)."""
  (lc, _), (lb, rb) = dimension_numbers
  if lb or rb:
    return (
      f"kernel axes {tuple(rb)} are batch axes of the product (a batched GEMM, one kernel "
      "slice per batch element), which the quantized dense op does not implement"
    )
  if not lc:
    return "nothing is contracted (an outer product)"
  return None


def kernel_features(rhs_shape, contracted) -> int:
  """The per-output-channel state's width: the kernel's non-contracted elements."""
  return math.prod(d for i, d in enumerate(rhs_shape) if i not in tuple(contracted))


def dot_general(
  lhs,
  rhs,
  dimension_numbers,
  state: gradient.State,
  key=None,
  *,
  cfg: QuantConfig,
  stats=None,
  site=None,
):
  """`lax.dot_general(lhs, rhs, dimension_numbers)` of an input with a kernel, with DAQ int8
  passes: the input's contracted axes moved last and flattened, the kernel's first, the
  dense product, the result reshaped to lax's order (input's free axes, then kernel's); x
  (..., K) @ w (K, N), the dense layout itself, goes to the dense product as it is.

  Raises:
    ValueError: naming the reason when it is not a dense product (`unsupported_dot_general`).
  """
  reason = unsupported_dot_general(lhs.shape, rhs.shape, dimension_numbers)
  if reason:
    raise ValueError(f"quantized dot_general{_of(site)}: {reason}")
  (lc, rc), _ = dimension_numbers
  lc, rc = tuple(lc), tuple(rc)
  if lc == (lhs.ndim - 1,) and rc == (0,) and rhs.ndim == 2:
    return dense(lhs, rhs, state, key, cfg=cfg, stats=stats, site=site)
  lhs_free = [i for i in range(lhs.ndim) if i not in lc]
  rhs_free = [i for i in range(rhs.ndim) if i not in rc]
  k = math.prod(lhs.shape[i] for i in lc)
  x = jnp.transpose(lhs, (*lhs_free, *lc)).reshape(*(lhs.shape[i] for i in lhs_free), k)
  w = jnp.transpose(rhs, (*rc, *rhs_free)).reshape(k, -1)
  y = dense(x, w, state, key, cfg=cfg, stats=stats, site=site)
  return y.reshape(*(lhs.shape[i] for i in lhs_free), *(rhs.shape[i] for i in rhs_free))


def _parse_einsum(equation: str, lhs_ndim: int, rhs_ndim: int) -> tuple[str, str, str]:
  """(lhs, rhs, out) subscripts with any ellipsis spelt out in unused letters."""
  equation = equation.replace(" ", "")
  if "->" not in equation or equation.count(",") != 1:
    raise ValueError(
      f"quantized einsum: {equation!r} must have two operands and an explicit output ('->')"
    )
  inputs, out = equation.split("->")
  lhs, rhs = inputs.split(",")
  spare = [c for c in string.ascii_letters if c not in equation]
  for name, ndim in (("lhs", lhs_ndim), ("rhs", rhs_ndim)):
    subs = lhs if name == "lhs" else rhs
    if "..." in subs:
      fill = "".join(spare[: ndim - len(subs.replace("...", ""))])
      subs = subs.replace("...", fill)
      out = out.replace("...", fill)
      if name == "lhs":
        lhs = subs
      else:
        rhs = subs
  return lhs, rhs, out


def einsum_dimension_numbers(equation: str, lhs_ndim: int, rhs_ndim: int):
  """(dot_general dimension numbers, output permutation, reason or None) of a two-operand
  einsum: the output of `dot_general` transposed by the permutation is the einsum's."""
  lhs, rhs, out = _parse_einsum(equation, lhs_ndim, rhs_ndim)
  summed = [c for c in lhs + rhs if c not in out and (c in lhs) != (c in rhs)]
  if summed:
    return None, None, f"axes {sorted(set(summed))} are summed in one operand alone"
  contract = [c for c in lhs if c in rhs and c not in out]
  batch = [c for c in lhs if c in rhs and c in out]
  dims = (
    (tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
    (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)),
  )
  produced = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
  perm = tuple(produced.index(c) for c in out)
  return dims, perm, None


def unsupported_einsum(equation: str, lhs_shape, rhs_shape) -> str | None:
  """Why `einsum(equation, x, kernel)` is not a dense product (None when it is)."""
  dims, _, reason = einsum_dimension_numbers(equation, len(lhs_shape), len(rhs_shape))
  return reason or unsupported_dot_general(lhs_shape, rhs_shape, dims)


def einsum(
  equation: str,
  lhs,
  rhs,
  state: gradient.State,
  key=None,
  *,
  cfg: QuantConfig,
  stats=None,
  site=None,
):
  """`jnp.einsum(equation, lhs, rhs)` of an input with a kernel, with DAQ int8 passes (as a
  `dot_general`, then the einsum's output order).

  Raises:
    ValueError: naming the reason when it is not a dense product (`unsupported_einsum`).
  """
  reason = unsupported_einsum(equation, lhs.shape, rhs.shape)
  if reason:
    raise ValueError(f"quantized einsum {equation!r}{_of(site)}: {reason}")
  dims, perm, _ = einsum_dimension_numbers(equation, lhs.ndim, rhs.ndim)
  y = dot_general(lhs, rhs, dims, state, key, cfg=cfg, stats=stats, site=site)
  return jnp.transpose(y, perm) if perm != tuple(range(y.ndim)) else y


def einsum_features(equation: str, lhs_shape, rhs_shape) -> int:
  """The per-output-channel state's width of an einsum's kernel."""
  dims, _, _ = einsum_dimension_numbers(equation, len(lhs_shape), len(rhs_shape))
  return kernel_features(rhs_shape, dims[0][1])


def _kernel_subscripts(equation: str) -> tuple[str, str] | None:
  """(kernel subscripts, output subscripts without any ellipsis), or None when the kernel's
  own subscripts hold an ellipsis."""
  inputs, _, out = equation.replace(" ", "").partition("->")
  _, _, rhs = inputs.partition(",")
  return None if "..." in rhs else (rhs, out.replace("...", ""))


def unsupported_einsum_kernel(equation: str, rhs_shape) -> str | None:
  """Why a layer's einsum of its input with a kernel of `rhs_shape` cannot be quantized, read
  off the equation and the kernel alone (None when it can)."""
  if "->" not in equation or equation.count(",") != 1:
    return f"einsum {equation!r} is not two operands with an explicit output"
  subscripts = _kernel_subscripts(equation)
  if subscripts is None:
    return f"einsum {equation!r}: the kernel's subscripts hold an ellipsis"
  rhs, out = subscripts
  lhs = equation.replace(" ", "").split(",")[0]
  batch = sorted(c for c in rhs if c in out and c in lhs)
  if batch:
    return (
      f"einsum {equation!r}: kernel axes {batch} are batch axes of the product (a batched "
      "GEMM), which the quantized dense op does not implement"
    )
  if len(rhs) != len(rhs_shape):
    return f"einsum {equation!r}: the kernel {tuple(rhs_shape)} does not fit its subscripts"
  return None


def einsum_kernel_features(equation: str, rhs_shape) -> int:
  """The per-output-channel state's width of an einsum's kernel, from the equation alone."""
  rhs, out = _kernel_subscripts(equation)
  return math.prod(d for c, d in zip(rhs, rhs_shape) if c in out)


def _of(site) -> str:
  return f" of layer {site.name}" if site is not None and site.name else ""
