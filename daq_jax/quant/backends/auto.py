"""impl="auto": which implementation computes each contraction, per platform.

Each row lists, per contraction, the implementations to try in order; the first that supports
the layer (`Backend.unsupported`) is used, and each one skipped is logged once with its reason.
No row lists `simulate`: auto never computes in float. When every listed implementation
refuses, the error names them and their reasons.

Where the rows come from:
- cpu: measured (`python -m benchmarks.ops --out benchmarks/results/ops_impls_cpu.json`:
  ResNet-20's convolutions at batch 128 on the 2-core AVX2 machine, jax 0.10.2). Over the 19
  convolutions, im2col takes 1.78x xla's time for the forward pass, 1.92x for dgrad and 2.40x
  for wgrad; only the 3-channel stem's wgrad is faster on im2col (0.55x). So: xla.
- cpu, 3-D convs (video models): measured (`python -m benchmarks.ops --video --repeats 3`,
  benchmarks/results/ops3d_cpu.json: R3D-18's and R(2+1)D-18's first two stages on 8x56x56
  clips, batch 4). XLA's int8 3-D convolutions are slow there: the xla path takes 4.27x
  float32's time over the 7 shapes. On im2col views the forward pass takes 0.20x and dgrad
  0.16x xla's time, wgrad 4.69x. So: im2col for forward and dgrad, xla for wgrad. The sum of
  those parts (with the gradient quantizer) is 45.2 s against float32's 54.7 s, 0.83x; the
  whole plan was not timed as one program.
- cuda: PREDICTED, not measured: no session has had a GPU (benchmarks/gpu_check.sh measures
  the table's inputs, and this row is to be rewritten from its JSON). A conv whose shapes are
  known gets the plan the roofline model (`cost`, H100 SXM peaks) predicts fastest among the
  implementations that support it: on ResNet-50 (benchmarks/roofline.py) the implicit-GEMM
  kernels for every ungrouped conv product, quantizing g on load only where its tiles are
  loaded few times (the model's ALU term), never an im2col patch tensor. The row below is the
  order without shapes, and breaks the model's ties: the implicit-GEMM kernels, then XLA's
  int8 dot_general on im2col views (cuBLASLt's or XLA's Triton int8 GEMM), `xla` (its forward
  and dgrad are int8 convolutions that XLA hands to cuDNN), the Pallas GEMM on im2col views.
- any other platform: `im2col`, then `xla`.
"""

from __future__ import annotations

import functools
import logging

import jax.numpy as jnp

from daq_jax.quant.backends import cost
from daq_jax.quant.config import CONTRACTIONS

log = logging.getLogger("daq_jax.quant")

TABLE: dict[str, dict[str, tuple[str, ...]]] = {
  "cpu": {"forward": ("xla", "im2col"), "dgrad": ("xla", "im2col"), "wgrad": ("xla", "im2col")},
  "cuda": dict.fromkeys(CONTRACTIONS, ("implicit", "im2col", "xla", "pallas", "implicit_fused")),
}
# The platforms whose row is the cost model's prediction: `predicted` picks the plan there.
MODELLED = ("cuda",)
OTHER = dict.fromkeys(CONTRACTIONS, ("im2col", "xla"))


# 3-D convolutions (video models) on the CPU: XLA's int8 3-D convolutions are many times
# slower than its float ones there, its int8 dots on im2col views are not (see above).
TABLE_3D = {
  "cpu": {"forward": ("im2col", "xla"), "dgrad": ("im2col", "xla"), "wgrad": ("xla", "im2col")},
}


def candidates(platform: str, contraction: str, spec=None) -> tuple[str, ...]:
  """The implementations auto tries for `contraction` on `platform`, in order; `spec`, the
  conv's geometry (None for a dense layer), picks the 3-D row where there is one."""
  if spec is not None and len(spec.window_strides) == 3 and platform in TABLE_3D:
    return TABLE_3D[platform][contraction]
  return TABLE.get(platform, OTHER)[contraction]


@functools.cache
def predicted(cfg, spec, shapes, dtype: str, options) -> tuple[str, str, str]:
  """The (forward, dgrad, wgrad) implementations the cost model predicts fastest for a conv of
  `shapes` ((lhs, rhs)) in `dtype`, each from its `options` (the supported ones, in the
  table's order, which breaks ties)."""
  layer = cost.Layer("conv", *shapes, spec)
  act_bytes = jnp.dtype(dtype).itemsize
  candidates = dict(zip(CONTRACTIONS, options, strict=True))
  plan = cost.fastest(layer, candidates, cost.Method.of(cfg), act_bytes, cost.Hardware())
  log.info("impl=auto (predicted by the cost model): %s for a conv %s -> %s", plan, *shapes)
  return plan


@functools.cache
def log_skip(
  platform: str, contraction: str, name: str, reason: str, chosen: str, expected: bool = False
) -> None:
  """Logs (once) that auto passed over `name` for `chosen`, and why: a warning, or at info
  level where the skip is `expected` (the plan a config always gets, such as the per-row
  dgrad of the recommended method on the CPU: no surprise to warn of)."""
  level = logging.INFO if expected else logging.WARNING
  log.log(
    level,
    "impl=auto on %s: %s skips %s (%s) and uses %s",
    platform,
    contraction,
    name,
    reason,
    chosen,
  )
