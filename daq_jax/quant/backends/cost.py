"""A roofline model of the quantized ops on a GPU: per layer, product and implementation, the
kernels it launches, the bytes each moves through HBM and the operations it issues, and the
time predicted as max(tensor ops / tensor peak, bytes / bandwidth, other ops / ALU peak).

Every number this module gives is a PREDICTION from the stated assumptions, not a
measurement; `benchmarks/gpu_check.sh` measures what it can on a GPU.

A design is a way of computing a layer's three products with their quantization:
- `bf16`: the float reference: cuDNN's bf16 conv reads each operand once and writes its
  output once, on the bf16 tensor-core peak; no quantization.
- `im2col`: today's int8 path on CUDA: x and g quantized in their own passes, int8 patch
  tensors (T times the input for T kernel taps) written to HBM and read back by XLA's int8
  GEMM, int32 GEMM outputs rescaled and cast in a pass of their own; a per-row dgrad writes
  float32 columns (T * C per row) and adds them back (col2im).
- `pallas`: the same patches on the Pallas int8 GEMM, whose epilogue scales and casts.
- `xla`: the int8 `xla` implementation on CUDA: cuDNN int8 convs for forward and dgrad
  (float32 outputs, then a rescaling pass), one int8 dot per kernel tap for wgrad over a
  shifted or strided copy of g or x.
- `implicit`: the implicit-GEMM Pallas kernels (`daq_jax.pallas.implicit`): no patch tensor;
  each kernel reads its int8 operands and writes its output in the layer's dtype, scales
  applied in its epilogue; quantization in separate passes.
- `implicit_fused`: the same kernels reading g in float and quantizing it as they load it
  (quantize-on-load): no int8 copy of g is written. Each g element is quantized again every
  time a kernel loads it (once per kernel tap and tile of the other operand), on the CUDA
  cores: the ALU term, which is what makes fusion lose where a tile is loaded many times.
- `delayed` (NOT implemented, a method change): `implicit` with every scale taken from the
  previous step, so that x and both int8 copies of g are written by their producers'
  epilogues (BatchNorm's forward and backward) and no pass reads x or g for statistics or
  quantization. It is here to show what bounds the others and what would remove the bound.

Assumptions, all of them:
- Each operand of an implicit-GEMM kernel comes from HBM once: the reloads of a tile by
  neighbouring kernel taps and output tiles hit the L2 cache (50 MB on an H100). Its
  tensor-core work counts the channel tiles' padding (a 3-channel stem fills 3/32 of each
  int8 wgmma step).
- Statistics passes: x's max|x| is one read of x; DAQ's per-channel statistics of g (max and
  the fraction of |g| above its standard deviation) are two reads of g (mean and variance,
  then the count); a per-row max (`dgrad_granularity="per_row"`) is one more read; a
  per-tensor dgrad scale is the max of the channel maxima (free).
- A quantize pass reads the float tensor and writes int8; the two quantizations of g (dgrad,
  wgrad) share one read of g (XLA's sibling fusion).
- The weights: the float32 master copy is read and an int8 copy (and a flipped one for
  dgrad) written each step; the bf16 reference reads it and writes a bf16 copy.
- Quantize-on-load costs `QUANTIZE_OPS` CUDA-core operations per element for nearest
  rounding and `STOCHASTIC_QUANTIZE_OPS` with the counter-based hash of stochastic rounding.
- Outputs of int8 GEMMs that are not rescaled in their epilogue (XLA's) are int32 or float32
  (4 bytes) and rescaled in a pass of their own.
- Per conv output (its BatchNorm and ReLU, or the add of a residual): the forward pass reads
  it three times and writes once worth of its elements (statistics, normalise), the backward
  pass five (statistics of g, then dx from g and the input): `ELEMENTWISE_FORWARD`,
  `ELEMENTWISE_BACKWARD` times its bytes, the same in every design.
- The optimizer (SGD with momentum, float32) reads and writes 20 bytes per parameter.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from daq_jax.quant.config import CONTRACTIONS, QuantConfig
from daq_jax.quant.geometry import ConvSpec, out_spatial

DESIGNS = ("bf16", "im2col", "pallas", "xla", "implicit", "implicit_fused", "delayed")
PRODUCTS = CONTRACTIONS  # forward, dgrad, wgrad

QUANTIZE_OPS = 6  # scale, round, clip, convert (and the mask of a padded load)
STOCHASTIC_QUANTIZE_OPS = 22  # + the index, MurmurHash3's finalizer (9), the uniform, floor
# (reads, writes) of a conv output's elements by its BatchNorm and ReLU (or residual add):
# forward statistics (1 read), normalise (1 read, 1 write), the next conv's input read by the
# residual add (1 read); backward statistics of g and the input (2 reads), dx (3 reads, 1 write).
ELEMENTWISE_FORWARD = (3, 1)
ELEMENTWISE_BACKWARD = (5, 1)
# SGD with momentum in float32: reads the parameter, its gradient and momentum, writes two.
OPTIMIZER_BYTES = (12, 8)

# The implicit kernels' tiles (daq_jax.pallas.implicit), for reload counts and split-K.
BLOCK_M = BLOCK_N = 128
TARGET_PROGRAMS = 264  # two programs per SM of an H100


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hardware:
  """Peaks (NVIDIA's datasheet, H100 SXM, dense) and the fractions of them reached.

  Attributes:
    name: for reports.
    bf16_tflops, int8_tops: dense tensor-core peaks.
    hbm_tbs: HBM bandwidth, TB/s.
    alu_tops: simple 32-bit operations per second on the CUDA cores, in T: 132 SMs x 128
      lanes x 1.98 GHz, one operation a lane a clock (an FMA counted as one).
    compute_efficiency: the fraction of the tensor-core peak a kernel reaches.
    memory_efficiency: the fraction of the HBM bandwidth a kernel reaches.
  """

  name: str = "H100 SXM"
  bf16_tflops: float = 989.0
  int8_tops: float = 1979.0
  hbm_tbs: float = 3.35
  alu_tops: float = 33.5
  compute_efficiency: float = 0.7
  memory_efficiency: float = 1.0


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel (or XLA fusion) of a product: what it moves and computes.

  Attributes:
    name: what it is ("quantize g", "GEMM", ...).
    read, written: HBM bytes.
    mma_ops: tensor-core operations (2 per multiply-add).
    mma: "int8" or "bf16", the peak `mma_ops` run at.
    alu_ops: other operations (quantize-on-load), on the CUDA cores.
  """

  name: str
  read: float
  written: float
  mma_ops: float = 0.0
  mma: str = "int8"
  alu_ops: float = 0.0

  def times(self, hw: Hardware) -> dict[str, float]:
    """Seconds per bound: tensor cores, memory, ALU."""
    peak = hw.int8_tops if self.mma == "int8" else hw.bf16_tflops
    return {
      "mma": self.mma_ops / (peak * 1e12 * hw.compute_efficiency),
      "memory": (self.read + self.written) / (hw.hbm_tbs * 1e12 * hw.memory_efficiency),
      "alu": self.alu_ops / (hw.alu_tops * 1e12),
    }

  def seconds(self, hw: Hardware) -> float:
    return max(self.times(hw).values())

  def bound(self, hw: Hardware) -> str:
    times = self.times(hw)
    return max(times, key=times.get)


@dataclasses.dataclass(frozen=True)
class Layer:
  """A conv (`spec` set) or dense layer (`spec` None, lhs (M, K), rhs (K, N)) by its shapes."""

  name: str
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  spec: ConvSpec | None = None

  @property
  def out(self) -> tuple[int, ...]:
    if self.spec is None:
      return (*self.lhs[:-1], self.rhs[-1])
    return (self.lhs[0], *out_spatial(self.lhs, self.rhs, self.spec), self.rhs[-1])

  @property
  def taps(self) -> int:
    return 1 if self.spec is None else math.prod(self.rhs[:-2])

  @property
  def groups(self) -> int:
    return 1 if self.spec is None else self.spec.feature_group_count

  @property
  def x_elements(self) -> int:
    return math.prod(self.lhs)

  @property
  def y_elements(self) -> int:
    return math.prod(self.out)

  @property
  def w_elements(self) -> int:
    return math.prod(self.rhs)

  @property
  def rows(self) -> int:
    """Output positions (the GEMM's M): N * prod(out spatial), or a dense layer's rows."""
    return self.y_elements // self.rhs[-1]

  @property
  def macs(self) -> int:
    """Multiply-adds of one product (forward, dgrad and wgrad have the same)."""
    return self.rows * self.rhs[-1] * self.taps * self.rhs[-2]

  @property
  def patch_bytes(self) -> int:
    """The int8 im2col patch tensor of x: N * prod(out) rows of T * C_in."""
    return self.rows * self.taps * self.lhs[-1] if self.spec is not None else self.x_elements

  def dgrad_phases(self) -> list[tuple[int, int]]:
    """(input positions, kernel taps) of each output phase of the input gradient (one phase
    for stride 1), as the sub-pixel dgrad runs it."""
    if self.spec is None or all(s == 1 for s in self.spec.window_strides):
      return [(self.x_elements // self.lhs[-1], self.taps)]
    from daq_jax.quant.backends.xla import _subpixel_plan  # the plan the kernels run

    phases = []
    for combo in _subpixel_plan(self.lhs, self.rhs, self.spec):
      positions = self.lhs[0] * math.prod(p.count for p in combo)
      phases.append((positions, math.prod(p.taps for p in combo)))
    return phases


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """What a quantization config costs beyond its products: its statistics and rounding."""

  per_channel_stats: bool  # DAQ's per-channel max and bell test: two reads of g
  per_row: bool  # a per-row dgrad scale: one more read of g (its rows' max)
  stochastic_wgrad: bool
  stochastic_dgrad: bool

  @classmethod
  def of(cls, cfg: QuantConfig) -> Method:
    return cls(
      per_channel_stats=cfg.wgrad_granularity == "per_channel" and cfg.wgrad_clip != "max",
      per_row=cfg.dgrad_granularity == "per_row",
      stochastic_wgrad=cfg.wgrad_rounding == "stochastic",
      stochastic_dgrad=cfg.dgrad_rounding == "stochastic",
    )


def _ceil(a: int, b: int) -> int:
  return -(-a // b)


def _pow2(n: int, least: int, most: int) -> int:
  return min(most, max(least, 1 << (n - 1).bit_length()))


def _padding(k: int, n: int, fused: bool = False, wgrad: bool = False) -> float:
  """The tensor-core work an implicit-GEMM kernel does over the useful work for a reduction
  over `k` channels (an output tile of `n` channels for wgrad: `k` is then its other tile
  axis), the tiles padded to whole steps: `daq_jax.pallas.implicit_conv.ConvBlockSizes`."""
  if wgrad:
    bm, bn = _pow2(k, 16, BLOCK_M), _pow2(n, 16, BLOCK_N)
    return _ceil(k, bm) * bm / k * (_ceil(n, bn) * bn / n)
  bk, bn = _pow2(k, 32, 32 if fused else 64), _pow2(n, 16, BLOCK_N)
  return _ceil(k, bk) * bk / k * (_ceil(n, bn) * bn / n)


Plan = tuple[str, str, str]  # the design of the forward product, dgrad and wgrad


def as_plan(plan: str | Plan) -> Plan:
  """A design name for all three products, or three names; `bf16` and `delayed` come whole."""
  names = (plan,) * 3 if isinstance(plan, str) else tuple(plan)
  for name in names:
    if name not in DESIGNS:
      raise ValueError(f"roofline: design {name!r} is not one of {DESIGNS}")
  whole = {n for n in names if n in ("bf16", "delayed")}
  if whole and len(set(names)) > 1:
    raise ValueError(f"roofline: {sorted(whole)} covers all three products, got {names}")
  return names


def _quantization(layer: Layer, plan: Plan, method: Method, a: int) -> dict[str, list[Kernel]]:
  """The passes that quantize x and w (the forward product's) and g (dgrad's and wgrad's)."""
  ex, ey, ew = layer.x_elements, layer.y_elements, layer.w_elements
  passes = {"forward": [Kernel("quantize w (+ its dgrad copy)", 4 * ew, 2 * ew)]}
  if plan[0] == "delayed":  # last step's scales: the producers write int8 as they write float
    passes["forward"].append(Kernel("int8 x in its producer's epilogue", 0, ex))
    passes["dgrad"] = [Kernel("int8 g in its producer's epilogue", 0, ey)]
    passes["wgrad"] = [Kernel("int8 g in its producer's epilogue", 0, ey)]
    return passes
  passes["forward"] += [
    Kernel("max|x|", a * ex, 0),
    Kernel("quantize x (the residual)", a * ex, ex),
  ]
  stats = "g per-channel statistics (2 passes)" if method.per_channel_stats else "max|g|"
  passes["wgrad"] = [Kernel(stats, (2 if method.per_channel_stats else 1) * a * ey, 0)]
  passes["dgrad"] = [Kernel("g per-row max", a * ey, 0)] if method.per_row else []
  # One fusion reads g and writes the int8 copy of every path that does not quantize on load.
  copies = sum(name != "implicit_fused" for name in plan[1:])
  if copies:
    passes["wgrad" if plan[2] != "implicit_fused" else "dgrad"].append(
      Kernel(f"quantize g ({copies} int8 copies)", a * ey, copies * ey)
    )
  return passes


def _forward(layer: Layer, impl: str, method: Method, a: int) -> list[Kernel]:
  del method  # x's quantization is the same for every method
  ex, ey, ew = layer.x_elements, layer.y_elements, layer.w_elements
  ops = 2.0 * layer.macs
  if impl in ("im2col", "pallas"):
    kernels = [
      Kernel("int8 patches of x", ex, layer.patch_bytes),
      Kernel("int8 GEMM", layer.patch_bytes + ew, (a if impl == "pallas" else 4) * ey, ops),
    ]
    return kernels if impl == "pallas" else [*kernels, Kernel("rescale, cast", 4 * ey, a * ey)]
  if impl == "xla":
    return [
      Kernel("cuDNN int8 conv (float32 out)", ex + ew, 4 * ey, ops),
      Kernel("rescale, cast", 4 * ey, a * ey),
    ]
  c_in, c_out = layer.rhs[-2] * layer.groups, layer.rhs[-1]
  padded = ops * _padding(c_in, c_out)
  return [Kernel("implicit-GEMM conv", ex + ew, a * ey, padded)]  # implicit*, delayed


def _dgrad(layer: Layer, impl: str, method: Method, a: int) -> list[Kernel]:
  ex, ey, ew = layer.x_elements, layer.y_elements, layer.w_elements
  c_in, c_out = layer.rhs[-2] * layer.groups, layer.rhs[-1]
  phases = layer.dgrad_phases()
  strided = len(phases) > 1
  epilogue = impl == "pallas"  # the Pallas GEMM scales and casts in its epilogue
  if impl in ("im2col", "pallas") or (impl == "xla" and method.per_row):
    # (xla has no per-row dgrad: auto falls back to im2col's)
    if method.per_row:  # g (M, O) @ w^T: float32 columns (M, T * C), then col2im
      cols = 4 * layer.rows * layer.taps * c_in
      return [
        Kernel("int8 GEMM to float32 columns", ey + ew, cols, 2.0 * layer.macs),
        Kernel("col2im", cols, a * ex),
      ]
    kernels = []
    for positions, taps in phases:
      patches = positions * taps * c_out
      out = (a if epilogue else 4) * positions * c_in
      kernels += [
        Kernel("int8 patches of g", ey, patches),
        Kernel("int8 GEMM", patches + ew, out, 2.0 * patches * c_in),
      ]
    if not epilogue or strided:
      what = "interleave" if epilogue else "rescale, cast"
      kernels.append(Kernel(what, (a if epilogue else 4) * ex, a * ex))
    return kernels
  if impl == "xla":
    kernels = [
      Kernel("cuDNN int8 conv (float32 out)", ey + ew, 4 * p * c_in, 2.0 * p * t * c_out * c_in)
      for p, t in phases
    ]
    return [*kernels, Kernel("rescale, cast" + (", interleave" if strided else ""), 4 * ex, a * ex)]
  fused = impl == "implicit_fused"
  row_scales = 4 * layer.rows if method.per_row else 0
  per = STOCHASTIC_QUANTIZE_OPS if method.stochastic_dgrad else QUANTIZE_OPS
  kernels = [
    Kernel(
      "implicit-GEMM dgrad" + (" (one phase)" if strided else ""),
      (a if fused else 1) * ey + ew + row_scales,
      a * p * c_in,
      2.0 * p * t * c_out * c_in * _padding(c_out, c_in, fused),
      # every tap and every input-channel tile of the kernel loads (and requantizes) g
      alu_ops=p * c_out * t * _ceil(c_in, BLOCK_N) * per if fused else 0.0,
    )
    for p, t in phases
  ]
  return [*kernels, Kernel("interleave the phases", a * ex, a * ex)] if strided else kernels


def _wgrad(layer: Layer, impl: str, method: Method, a: int) -> list[Kernel]:
  ex, ey, ew = layer.x_elements, layer.y_elements, layer.w_elements
  c_in, c_out = layer.rhs[-2] * layer.groups, layer.rhs[-1]
  ops = 2.0 * layer.macs
  if impl in ("im2col", "pallas"):
    return [
      Kernel("int8 patches of x", ex, layer.patch_bytes),
      Kernel("int8 GEMM", layer.patch_bytes + ey, 4 * ew, ops),
    ]
  if impl == "xla":  # one dot per tap over a shifted copy of g (stride 1) or a strided x
    stride1 = layer.spec is None or all(s == 1 for s in layer.spec.window_strides)
    copy = ey if stride1 else ex
    return [
      Kernel("copy of g or x per tap", layer.taps * copy, layer.taps * copy),
      Kernel("int8 dot per tap", layer.taps * (ex + ey), 4 * ew, ops),
      Kernel("stack, rescale", 4 * ew, 4 * ew),
    ]
  fused = impl == "implicit_fused"
  tiles = layer.taps * _ceil(c_in, BLOCK_M) * _ceil(c_out, BLOCK_N)
  splits = max(1, min(_ceil(TARGET_PROGRAMS, tiles), _ceil(layer.rows, 64) // 4))
  partials = 4 * splits * ew
  per = STOCHASTIC_QUANTIZE_OPS if method.stochastic_wgrad else QUANTIZE_OPS
  return [
    Kernel(
      "implicit-GEMM wgrad",
      ex + (a if fused else 1) * ey,
      partials,
      ops * _padding(c_in, c_out, wgrad=True),
      # every tap and input-channel tile loads (and requantizes) g
      alu_ops=ey * layer.taps * _ceil(c_in, BLOCK_M) * per if fused else 0.0,
    ),
    Kernel(f"sum {splits} split-K partials", partials, 4 * ew),
  ]


def contraction(
  layer: Layer, design: str, product: str, method: Method, act_bytes: int
) -> list[Kernel]:
  """The kernels of one product alone, its operands quantized ahead (no quantization pass):
  what the GPU check's contractions stage times."""
  if design == "bf16":
    return products(layer, "bf16", method, act_bytes)[product][-1:]
  build = {"forward": _forward, "dgrad": _dgrad, "wgrad": _wgrad}[product]
  return build(layer, design, method, act_bytes)


def products(
  layer: Layer, plan: str | Plan, method: Method, act_bytes: int
) -> dict[str, list[Kernel]]:
  """The kernels of each product of `layer` under `plan` (a design, or one per product), with
  the quantization passes: x's and w's are the forward product's, g's the dgrad's and
  wgrad's.

  Args:
    layer: the layer's shapes.
    plan: one of `DESIGNS`, or a design per product (forward, dgrad, wgrad).
    method: the quantization's statistics and rounding (ignored by `bf16`).
    act_bytes: the bytes of a float activation, gradient and layer output (2: bf16 float
      parts, 4: float32).
  """
  plan = as_plan(plan)
  a = act_bytes
  ex, ey, ew = layer.x_elements, layer.y_elements, layer.w_elements
  ops = 2.0 * layer.macs
  if plan[0] == "bf16":
    return {
      "forward": [
        Kernel("cast w to bf16", 4 * ew, a * ew),
        Kernel("conv", a * (ex + ew), a * ey, ops, "bf16"),
      ],
      "dgrad": [Kernel("conv dgrad", a * (ey + ew), a * ex, ops, "bf16")],
      "wgrad": [Kernel("conv wgrad", a * (ex + ey), 4 * ew, ops, "bf16")],
    }
  passes = _quantization(layer, plan, method, a)
  return {
    "forward": passes["forward"] + _forward(layer, plan[0], method, a),
    "dgrad": passes["dgrad"] + _dgrad(layer, plan[1], method, a),
    "wgrad": passes["wgrad"] + _wgrad(layer, plan[2], method, a),
  }


def layer_seconds(layer: Layer, plan, method: Method, act_bytes: int, hw: Hardware) -> float:
  """The predicted time of a layer's three products under `plan`."""
  return sum(seconds(k, hw) for k in products(layer, plan, method, act_bytes).values())


def fastest(
  layer: Layer,
  candidates: dict[str, tuple[str, ...]],
  method: Method,
  act_bytes: int,
  hw: Hardware,
) -> Plan:
  """The plan with the least predicted time among every combination of `candidates` (per
  product, the designs allowed; ties go to the earlier one)."""
  best, best_time = None, math.inf
  for plan in itertools.product(*(candidates[p] for p in PRODUCTS)):
    time = layer_seconds(layer, plan, method, act_bytes, hw)
    if time < best_time:
      best, best_time = plan, time
  return best


def elementwise(layer: Layer, act_bytes: int) -> list[Kernel]:
  """The float work around a conv output (BatchNorm, ReLU, residual adds), forward and
  backward: the same in every design."""
  if layer.spec is None:
    return []
  y = act_bytes * layer.y_elements
  (fr, fw), (br, bw) = ELEMENTWISE_FORWARD, ELEMENTWISE_BACKWARD
  return [Kernel("BN/ReLU forward", fr * y, fw * y), Kernel("BN/ReLU backward", br * y, bw * y)]


def optimizer(params: int) -> Kernel:
  """The float32 optimizer update of `params` parameters."""
  read, written = OPTIMIZER_BYTES
  return Kernel("SGD with momentum", read * params, written * params)


def seconds(kernels: list[Kernel], hw: Hardware) -> float:
  """The predicted time of kernels run one after another."""
  return sum(k.seconds(hw) for k in kernels)
