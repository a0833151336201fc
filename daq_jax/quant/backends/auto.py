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
- cuda: NOT measured yet: no session has had a GPU (benchmarks/gpu_check.sh measures the
  table's inputs, and this row is to be rewritten from its JSON). Until then it is the
  implementation most likely to compile and run fast: XLA's int8 dot_general on im2col views
  (cuBLASLt's int8 GEMM, or XLA's Triton GEMM with an s32 output, both autotuned, with the
  scale epilogue fused). `xla` follows (its forward and dgrad are int8 convolutions, which XLA
  hands to cuDNN; whether they compile there is the GPU check's first question), then the
  Pallas GEMM.
- any other platform: `im2col`, then `xla`.
"""

from __future__ import annotations

import functools
import logging

from daq_jax.quant.config import CONTRACTIONS

log = logging.getLogger("daq_jax.quant")

TABLE: dict[str, dict[str, tuple[str, ...]]] = {
  "cpu": {"forward": ("xla", "im2col"), "dgrad": ("xla", "im2col"), "wgrad": ("xla", "im2col")},
  "cuda": {
    "forward": ("im2col", "xla", "pallas"),
    "dgrad": ("im2col", "xla", "pallas"),
    "wgrad": ("im2col", "xla", "pallas"),
  },
}
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
def log_skip(platform: str, contraction: str, name: str, reason: str, chosen: str) -> None:
  """Logs (once) that auto passed over `name` for `chosen`, and why."""
  log.warning(
    "impl=auto on %s: %s skips %s (%s) and uses %s", platform, contraction, name, reason, chosen
  )
