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


def candidates(platform: str, contraction: str) -> tuple[str, ...]:
  """The implementations auto tries for `contraction` on `platform`, in order."""
  return TABLE.get(platform, OTHER)[contraction]


@functools.cache
def log_skip(platform: str, contraction: str, name: str, reason: str, chosen: str) -> None:
  """Logs (once) that auto passed over `name` for `chosen`, and why."""
  log.warning(
    "impl=auto on %s: %s skips %s (%s) and uses %s", platform, contraction, name, reason, chosen
  )
