"""The XLA implementation tuned for the CPU: int8 lax convolutions and NN int8 dots.

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
  and spatial positions; x is kept channels first, (C_in, N, *spatial) int8, for this.
Dense layers: all three products are NN-layout int8 dots (the lhs contracts its last
dimension), so the forward pass also keeps x^T and w^T in int8 (transposed in float, then
quantized).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from daq_jax.quant import contract, numerics
from daq_jax.quant.backends.base import Backend
from daq_jax.quant.geometry import ConvSpec, dgrad_kernel, dgrad_spec, out_spatial
from daq_jax.quant.numerics import QTensor

_NN = (((1,), (0,)), ((), ()))


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


def subpixel_dgrad(
  g_q, kernels, lhs_shape, rhs_shape, spec: ConvSpec, conv=contract.int8_conv
) -> jax.Array:
  """The input gradient (float32 int accumulations) from the per-phase int8 kernels; `conv`
  computes each phase's stride-1 int8 conv (`contract.int8_conv`'s signature)."""
  strides = spec.window_strides
  blocks_per_dim = [-(-n // s) for n, s in zip(lhs_shape[1:-1], strides)]
  blocks = {}
  for combo, kernel in zip(_subpixel_plan(lhs_shape, rhs_shape, spec), kernels, strict=True):
    first = tuple(p.first for p in combo)
    shape = (lhs_shape[0], *(p.count for p in combo), lhs_shape[-1])
    if any(p.taps == 0 for p in combo) or any(p.count == 0 for p in combo):
      block = jnp.zeros(shape, jnp.float32)
    else:
      block = conv(
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


def flipped_kernels(rhs: jax.Array, w: QTensor, spec: ConvSpec) -> QTensor | tuple[QTensor, ...]:
  """The int8 kernel(s) whose forward conv with g is the input gradient: flipped and
  group-transposed in float, then quantized with w's scale (quantization is elementwise, so
  this equals transposing w's codes); one per output phase where the dgrad is sub-pixel."""
  if uses_subpixel_dgrad(spec):
    return tuple(QTensor.of(k, w.scale) for k in subpixel_kernels(rhs, spec))
  return QTensor.of(dgrad_kernel(rhs, spec.feature_group_count), w.scale)


GPU_PLATFORMS = ("cuda", "rocm")


class XlaBackend(Backend):
  """int8 lax convolutions and dots in the layouts XLA's CPU backend runs fast."""

  def unsupported(self, contraction, spec, platform, shapes=None):
    # forward and dgrad are int8 convolutions (wgrad is dots): on a GPU XLA hands them to
    # cuDNN, whose grouped int8 convolutions are reported wrong (openxla/xla#49123).
    if (
      platform in GPU_PLATFORMS
      and spec is not None
      and contraction in ("forward", "dgrad")
      and spec.feature_group_count > 1
    ):
      return (
        f"a grouped ({spec.feature_group_count} groups) int8 convolution would go to cuDNN, "
        "which gets grouped int8 convolutions wrong (openxla/xla#49123)"
      )
    return None

  def conv_forward(self, x, w, spec, out_dtype=jnp.float32):
    acc = contract.int8_conv(x.q, w.q, **spec.conv_kwargs())
    return numerics.rescale(acc, x.scale, w.scale)

  def conv_keep_kernel(self, rhs, w, spec, rows=False):
    return flipped_kernels(rhs, w, spec)

  def conv_dgrad(self, g, kernel, lhs_shape, rhs_shape, spec, out_dtype=jnp.float32):
    if uses_subpixel_dgrad(spec):
      acc = subpixel_dgrad(g.q, [k.q for k in kernel], lhs_shape, rhs_shape, spec)
      return numerics.rescale(acc, g.scale, kernel[0].scale)
    d_spec = dgrad_spec(lhs_shape, rhs_shape, spec)
    return numerics.rescale(
      contract.int8_conv(g.q, kernel.q, **d_spec.conv_kwargs()), g.scale, kernel.scale
    )

  def conv_keep_input(self, lhs, x, spec):
    # wgrad contracts over N * spatial with x as the lhs of an NN dot: keep x channels first.
    return QTensor(jnp.moveaxis(x.q, -1, 0), x.scale)

  def conv_wgrad(self, inputs, g, lhs_shape, rhs_shape, spec):
    return numerics.rescale(wgrad_int8(inputs.q, g.q, rhs_shape, spec), inputs.scale, g.scale)

  def dense_forward(self, x, w):
    return numerics.rescale(contract.int8_dot_general(x.q, w.q, _NN), x.scale, w.scale)

  def dense_keep_kernel(self, w, wq):
    return QTensor.of(w.T, wq.scale)

  def dense_dgrad(self, g, kernel):
    return numerics.rescale(contract.int8_dot_general(g.q, kernel.q, _NN), g.scale, kernel.scale)

  def dense_keep_input(self, x, xq):
    return QTensor.of(x.T, xq.scale)

  def dense_wgrad(self, inputs, g):
    acc = contract.int8_dot_general(inputs.q, g.q, _NN)
    return numerics.rescale(acc, inputs.scale, g.scale)
