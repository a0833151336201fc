"""The quantized convolution: int8 forward, int8 dgrad (global gradient scale) and int8 wgrad
(per-output-channel gradient scales), as one `jax.custom_vjp`.

Layout is channels last: lhs (N, *spatial, C_in), rhs (*spatial, C_in / groups, C_out), the
layout of `flax.linen.Conv`. 1-D, 2-D and 3-D convolutions, strides, padding, lhs (input) and
rhs (kernel) dilation and feature groups (depthwise included) are supported.

Every contraction keeps XLA's fast int8 layouts on the CPU (jax 0.10.2, measured by
benchmarks/ops.py):
- forward: the forward-layout int8 conv (narrow convs reshaped by `contract.int8_conv`);
- dgrad: a forward-layout int8 conv of the globally quantized g with the flipped,
  group-transposed kernel. That kernel is built in float and quantized in the forward pass
  (quantization is elementwise, so this equals transposing the int8 kernel), because an int8
  transpose inside the backward program falls off XLA's fast path. A strided conv's dgrad
  would need input dilation (also off the fast path), so it runs as one stride-1 conv per
  output phase with that phase's kernel taps ("sub-pixel" decomposition);
- wgrad: one NN int8 dot per kernel tap, (C_in, N*H*W) x (N*H*W, C_out), contracting the batch
  and spatial positions; x is stored channels first, (C_in, N, *spatial) int8, for this.
The residuals are int8 tensors and float32 scales only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.quant import contract, gradient, numerics
from daq_jax.quant.config import QuantConfig
from daq_jax.quant.residuals import Residuals


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
      dimension_numbers=contract.channels_last_dimension_numbers(lhs.ndim),
      precision=lax.Precision.HIGHEST,
      **self.conv_kwargs(),
    )


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


def _check_layout(dimension_numbers, ndim: int, lhs_shape, rhs_shape) -> None:
  if dimension_numbers is None:
    return
  try:
    given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  except (TypeError, ValueError) as e:
    raise ValueError(f"conv: dimension_numbers={dimension_numbers!r} are not valid: {e}") from e
  if given != contract.channels_last_dimension_numbers(ndim):
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


@dataclasses.dataclass(frozen=True)
class _Phase:
  """One output phase of a strided conv's input gradient along one spatial dim: the input
  positions p = first + stride * i (i < count) get g correlated with the kernel taps
  phase, phase + stride, ... (`taps` of them) under `padding`."""

  taps: int
  first: int
  count: int
  padding: tuple[int, int]


def _phases(size: int, out: int, k: int, s: int, lo: int) -> list[_Phase]:
  phases = []
  for phase in range(s):
    taps = len(range(phase, k, s))
    a_min = -((phase - lo) // s)  # ceil((lo - phase) / s)
    a_max = (size - 1 + lo - phase) // s
    count = max(0, a_max - a_min + 1)
    pad_lo = taps - 1 - a_min
    pad_hi = count - out - pad_lo + taps - 1
    phases.append(_Phase(taps, a_min * s + phase - lo, count, (pad_lo, pad_hi)))
  return phases


def uses_subpixel_dgrad(spec: ConvSpec) -> bool:
  """Whether the input gradient is computed as stride-1 convs, one per output phase.

  A strided conv's input gradient is a conv with input dilation, which XLA's CPU backend runs
  4-10x slower in int8 than in float32; split by the phase of the input position it becomes
  prod(strides) small stride-1 convs on the fast path.
  """
  return (
    any(s > 1 for s in spec.window_strides)
    and all(d == 1 for d in spec.lhs_dilation)
    and all(d == 1 for d in spec.rhs_dilation)
  )


def _subpixel_plan(lhs_shape, rhs_shape, spec: ConvSpec) -> list[tuple[_Phase, ...]]:
  out = out_spatial(lhs_shape, rhs_shape, spec)
  per_dim = [
    _phases(n, o, k, s, lo)
    for n, o, k, s, (lo, _) in zip(
      lhs_shape[1:-1], out, rhs_shape[:-2], spec.window_strides, spec.padding
    )
  ]
  return list(itertools.product(*per_dim))


def subpixel_kernels(rhs: jax.Array, spec: ConvSpec) -> list[jax.Array]:
  """The dgrad kernel of every phase combination (empty where a phase has no taps)."""
  kernels = []
  for combo in itertools.product(*(range(s) for s in spec.window_strides)):
    index = tuple(slice(p, None, s) for p, s in zip(combo, spec.window_strides))
    kernels.append(dgrad_kernel(rhs[index], spec.feature_group_count))
  return kernels


def _subpixel_dgrad(g_q, kernels, lhs_shape, rhs_shape, spec: ConvSpec) -> jax.Array:
  """The input gradient (float32 int accumulations) from the per-phase int8 kernels."""
  strides = spec.window_strides
  blocks_per_dim = [-(-n // s) for n, s in zip(lhs_shape[1:-1], strides)]
  blocks = {}
  for combo, kernel in zip(_subpixel_plan(lhs_shape, rhs_shape, spec), kernels, strict=True):
    first = tuple(p.first for p in combo)
    shape = (lhs_shape[0], *(p.count for p in combo), lhs_shape[-1])
    if any(p.taps == 0 for p in combo) or any(p.count == 0 for p in combo):
      block = jnp.zeros(shape, jnp.float32)
    else:
      block = contract.int8_conv(
        g_q,
        kernel,
        window_strides=(1,) * len(strides),
        padding=tuple(p.padding for p in combo),
        lhs_dilation=(1,) * len(strides),
        rhs_dilation=(1,) * len(strides),
        feature_group_count=spec.feature_group_count,
      )
    pad = [(0, 0)] + [(0, b - p.count) for b, p in zip(blocks_per_dim, combo)] + [(0, 0)]
    blocks[first] = jnp.pad(block, pad)
  # Interleave: position first + stride * i of each dim comes from block `first`, index i.
  order = list(itertools.product(*(range(s) for s in strides)))
  stacked = jnp.stack([blocks[f] for f in order]).reshape(
    *strides, lhs_shape[0], *blocks_per_dim, lhs_shape[-1]
  )
  n = len(strides)
  perm = [n] + [a for d in range(n) for a in (n + 1 + d, d)] + [2 * n + 1]
  dx = stacked.transpose(perm).reshape(
    lhs_shape[0], *(b * s for b, s in zip(blocks_per_dim, strides)), lhs_shape[-1]
  )
  return dx[(slice(None), *(slice(0, size) for size in lhs_shape[1:-1]), slice(None))]


def dgrad_int8(g_q, w_d, lhs_shape, rhs_shape, spec: ConvSpec) -> jax.Array:
  """The input gradient's int8 contraction (float32 result, before rescaling).

  Args:
    g_q: int8 g, (N, *out_spatial, C_out), one global scale.
    w_d: the int8 dgrad kernel(s) the forward pass stored: one kernel, or one per output
      phase when `uses_subpixel_dgrad(spec)`.
  """
  if uses_subpixel_dgrad(spec):
    return _subpixel_dgrad(g_q, w_d, lhs_shape, rhs_shape, spec)
  d_spec = dgrad_spec(lhs_shape, rhs_shape, spec)
  return contract.int8_conv(g_q, w_d, **d_spec.conv_kwargs())


def wgrad_int8(x_t, g_q, rhs_shape, spec: ConvSpec) -> jax.Array:
  """The weight gradient's int8 contractions: one NN dot per kernel tap over all N * spatial
  positions (float32 result, before rescaling).

  Stride-1 convs without input dilation shift g against the untouched x,
      dw[t] = sum_q x[q] g[q + lo - t * d],
  which keeps the large operand contiguous (2-3x faster on XLA's CPU backend than slicing x);
  the others take a strided window of the padded x per tap.

  Args:
    x_t: int8 (C_in, N, *spatial): the input, channels first.
    g_q: int8 (M, C_out) with M = N * prod(out spatial), channels last.
  """
  groups = spec.feature_group_count
  *ksize, c_in_g, c_out = rhs_shape
  c_in, n, *in_spatial = x_t.shape
  out_sizes = out_spatial((n, *in_spatial, c_in), rhs_shape, spec)
  # groups > 1: (G, I, M) x (M, G, O) -> (G, I, O)
  dims = (((1,), (0,)), ((), ())) if groups == 1 else (((2,), (0,)), ((0,), (1,)))

  def contract_tap(xs, gs):
    if groups > 1:
      xs = xs.reshape(groups, c_in_g, -1)
      gs = gs.reshape(-1, groups, c_out // groups)
    acc = contract.int8_dot_general(xs, gs, dims)
    if groups > 1:
      acc = jnp.moveaxis(acc, 0, 1).reshape(c_in_g, c_out)  # (I, G, O) -> (I, G*O)
    return acc

  tap_grid = list(itertools.product(*(range(k) for k in ksize)))
  if all(s == 1 for s in spec.window_strides) and all(d == 1 for d in spec.lhs_dilation):
    x2d = x_t.reshape(c_in, -1)
    g = g_q.reshape(n, *out_sizes, c_out)
    shift = [(k - 1) * d - lo for k, d, (lo, _) in zip(ksize, spec.rhs_dilation, spec.padding)]
    pads = [
      (a, size + lo - o, 0)
      for a, size, o, (lo, _) in zip(shift, in_spatial, out_sizes, spec.padding)
    ]
    g_p = lax.pad(g, jnp.int8(0), [(0, 0, 0), *pads, (0, 0, 0)])
    taps = []
    for tap in tap_grid:
      start = [0] + [
        a + lo - t * d for a, (lo, _), t, d in zip(shift, spec.padding, tap, spec.rhs_dilation)
      ]
      limit = [n] + [st + size for st, size in zip(start[1:], in_spatial)]
      gs = lax.slice(g_p, [*start, 0], [*limit, c_out]).reshape(-1, c_out)
      taps.append(contract_tap(x2d, gs))
  else:
    pad_cfg = [(0, 0, 0), (0, 0, 0)] + [
      (lo, hi, ld - 1) for (lo, hi), ld in zip(spec.padding, spec.lhs_dilation)
    ]
    x_p = lax.pad(x_t, jnp.int8(0), pad_cfg)
    taps = []
    for tap in tap_grid:
      start = [0, 0] + [t * rd for t, rd in zip(tap, spec.rhs_dilation)]
      limit = [c_in, n] + [
        st + (o - 1) * s + 1 for st, o, s in zip(start[2:], out_sizes, spec.window_strides)
      ]
      xs = lax.slice(x_p, start, limit, [1, 1, *spec.window_strides]).reshape(c_in, -1)
      taps.append(contract_tap(xs, g_q))
  return jnp.stack(taps).reshape(*ksize, c_in_g, c_out)


# ---------------------------------------------------------------------------------------------
# The custom VJP.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv(cfg: QuantConfig, spec: ConvSpec, lhs, rhs, state, key):
  return _conv_fwd(cfg, spec, lhs, rhs, state, key)[0]


def _conv_fwd(cfg: QuantConfig, spec: ConvSpec, lhs, rhs, state, key):
  out_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
  sx, sw = numerics.max_abs(lhs), numerics.max_abs(rhs)
  if cfg.impl == "simulate":
    x_hat = numerics.fake_quantize(lhs, sx)
    w_hat = numerics.fake_quantize(rhs, sw)
    out = spec.float_conv(x_hat, w_hat)
    saved = (x_hat, w_hat)
  elif cfg.impl == "pallas":
    from daq_jax.pallas import conv as pallas_conv  # Pallas only loads when asked for

    x_q, w_q = numerics.quantize(lhs, sx), numerics.quantize(rhs, sw)
    out = pallas_conv.conv_forward(x_q, w_q, sx, sw, spec, interpret=cfg.pallas_interpret)
    saved = (x_q, w_q, sx, sw)
  else:
    x_q = numerics.quantize(lhs, sx)
    acc = contract.int8_conv(x_q, numerics.quantize(rhs, sw), **spec.conv_kwargs())
    out = numerics.rescale(acc, sx, sw)
    # wgrad contracts over N * spatial with x as the lhs of an NN dot: store x channels first.
    x_t = jnp.moveaxis(x_q, -1, 0)
    if uses_subpixel_dgrad(spec):
      w_d = tuple(numerics.quantize(k, sw) for k in subpixel_kernels(rhs, spec))
    else:
      w_d = numerics.quantize(dgrad_kernel(rhs, spec.feature_group_count), sw)
    saved = (x_t, w_d, sx, sw)
  return out.astype(out_dtype), Residuals.of(saved, state, key, lhs, rhs)


def _conv_bwd(cfg: QuantConfig, spec: ConvSpec, res: Residuals, g):
  gq = gradient.quantize_gradient_for_impl(g, res.state, cfg, res.key)
  if cfg.impl == "simulate":
    x_hat, w_hat = res.saved
    _, vjp = jax.vjp(spec.float_conv, x_hat, w_hat)
    g_dgrad, g_wgrad = gq.dequantized(g.shape)
    dx, dw = vjp(g_dgrad)[0], vjp(g_wgrad)[1]
  elif cfg.impl == "pallas":
    from daq_jax.pallas import conv as pallas_conv

    x_q, w_q, sx, sw = res.saved
    dx = pallas_conv.conv_dgrad(
      gq.dgrad_q, w_q, gq.dgrad_scale, sw, res.lhs_shape, spec, interpret=cfg.pallas_interpret
    )
    dw = pallas_conv.conv_wgrad(
      x_q, gq.wgrad_q, sx, gq.wgrad_scale, res.rhs_shape, spec, interpret=cfg.pallas_interpret
    )
  else:
    x_t, w_d, sx, sw = res.saved
    dx = dgrad_int8(gq.dgrad_q, w_d, res.lhs_shape, res.rhs_shape, spec)
    dx = numerics.rescale(dx, gq.dgrad_scale, sw)
    dw = numerics.rescale(wgrad_int8(x_t, gq.wgrad_q, res.rhs_shape, spec), sx, gq.wgrad_scale)
  return dx.astype(res.lhs_dtype), dw.astype(res.rhs_dtype), gq.new_state, None


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general(
  lhs: jax.Array,
  rhs: jax.Array,
  state: gradient.State,
  key: jax.Array | None = None,
  *,
  cfg: QuantConfig,
  window_strides=None,
  padding="SAME",
  lhs_dilation=None,
  rhs_dilation=None,
  feature_group_count: int = 1,
  dimension_numbers=None,
) -> jax.Array:
  """A channels-last convolution with DAQ int8 forward and backward passes.

  Args:
    lhs: (N, *spatial, C_in) float input.
    rhs: (*spatial, C_in / groups, C_out) float kernel.
    state: the layer's quantization state (`gradient.init_state(cfg, C_out)`). The forward pass
      does not read it; under `jax.grad` its cotangent is the state for the next step.
    key: PRNG key for stochastic gradient rounding, else None.
    cfg: the quantization config.
    window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count: as for
      `lax.conv_general_dilated` (padding: SAME, SAME_LOWER, VALID or (low, high) pairs).
    dimension_numbers: None, or the channels-last layout spelled out (("NHWC", "HWIO",
      "NHWC") and its 1-D/3-D forms); other layouts are refused with a clear error.

  Returns:
    The convolution output (N, *out_spatial, C_out) in the operands' float dtype.
  """
  _check_layout(dimension_numbers, lhs.ndim, lhs.shape, rhs.shape)
  spec = make_spec(
    lhs.shape,
    rhs.shape,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    feature_group_count=feature_group_count,
  )
  gradient.check_state(state, cfg, rhs.shape[-1])
  return _conv(cfg, spec, lhs, rhs, state, key)
