"""Compile the Pallas kernels of a program for Hopper without a GPU, and read the result.

Lowering a program for CUDA only packs each Pallas kernel's Triton IR into an
`xla.gpu.triton` custom call; Triton's passes, the PTX it emits and ptxas run inside XLA's
compile on the GPU. This module runs that part on any machine where JAX's CUDA plugin (which
carries Triton's compiler) and NVIDIA's ptxas are installed (the `ptx` extra), so a test on a
CPU-only machine can see what the GPU would run:

    kernels = ptx.triton_kernels(ptx.lower_for_cuda(f, *args))
    report = ptx.compile_kernel(kernels[0])      # PTX for sm_90a, then ptxas -v
    reports = ptx.compile_program(f, *args)      # both steps, every kernel
    report.wgmma, report.local_memory, report.registers, report.spill_bytes

Works with the custom call JAX 0.10 emits (IR bytes in the backend config); `missing()` says
why it cannot run here, for tests to skip with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

ARCH = "9.0"  # H100 / H200 (sm_90a)
_TARGET = "xla.gpu.triton"
_DEVICE_KIND = "NVIDIA H100 80GB HBM3"


@contextlib.contextmanager
def cuda_tracing():
  """Traces in scope are for a CUDA GPU (an abstract one-device mesh of an H100), on any
  machine: `backends.target_platform()` says "cuda" inside, so auto and the Pallas kernels
  take their GPU paths (to be lowered, not run)."""
  import jax
  from jax._src.mesh import AbstractDevice

  device = AbstractDevice(_DEVICE_KIND, None, "cuda")
  mesh = jax.sharding.AbstractMesh((1,), ("_",), abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    yield


def lower_for_cuda(fn, *args, **kwargs):
  """`jax.jit(fn)` lowered for CUDA on any machine, a CPU-only one included.

  Since JAX 0.11 a Pallas call lowered for CUDA with no GPU present raises "No supported GPU
  devices found" unless an abstract GPU device is in scope (JAX's own Triton tests do this);
  JAX 0.10 assumed compute capability 9.0. Lowering inside `cuda_tracing` works on both.
  """
  import jax

  with cuda_tracing():
    return jax.jit(fn).trace(*args, **kwargs).lower(lowering_platforms=("cuda",))


@dataclasses.dataclass(frozen=True)
class TritonKernel:
  """One Pallas kernel as XLA would get it: its Triton IR and launch parameters."""

  name: str
  ir: bytes
  num_warps: int
  num_stages: int
  grid: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class PtxReport:
  """What Triton and ptxas made of one kernel for sm_90a."""

  kernel: TritonKernel
  ptx: str
  smem_bytes: int
  registers: int | None  # per thread, from ptxas -v
  spill_bytes: int | None  # spill stores + loads, from ptxas -v

  @property
  def wgmma(self) -> list[str]:
    """The distinct wgmma instructions (Hopper's asynchronous tensor-core MMAs)."""
    return sorted(set(re.findall(r"wgmma\.mma_async[.\w]*", self.ptx)))

  @property
  def mma_sync(self) -> int:
    """How many older, synchronous tensor-core MMAs (what small tiles fall back to)."""
    return len(re.findall(r"\bmma\.sync", self.ptx))

  @property
  def local_memory(self) -> int:
    """How many ld.local / st.local instructions (a stack, or spilled values) in the PTX."""
    return len(re.findall(r"\b(?:ld|st)\.local", self.ptx))

  @property
  def approximate_math(self) -> list[str]:
    """Approximate divisions and square roots in the PTX."""
    return sorted(set(re.findall(r"\b(?:div|sqrt|rcp|rsqrt)\.approx[.\w]*", self.ptx)))


def _ptxas() -> str | None:
  spec = importlib.util.find_spec("nvidia.cuda_nvcc")
  if spec and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      candidate = pathlib.Path(root, "bin", "ptxas")
      if candidate.exists():
        return str(candidate)
  return shutil.which("ptxas")


@functools.cache
def missing() -> str | None:
  """Why kernels cannot be compiled to PTX here (None when they can)."""
  if importlib.util.find_spec("jax_cuda12_plugin") is None and (
    importlib.util.find_spec("jax_cuda13_plugin") is None
  ):
    return "JAX's CUDA plugin is not installed (pip install -e '.[ptx]')"
  import jax
  from jax._src.lib import triton

  jax.devices()  # plugins register their compilation handlers as the backends come up
  if not triton.has_compilation_handler("CUDA"):
    return "the installed CUDA plugin registers no Triton compiler"
  if _ptxas() is None:
    return "ptxas is not installed (nvidia-cuda-nvcc-cu12, in the 'ptx' extra)"
  return None


def triton_kernels(lowered) -> list[TritonKernel]:
  """The Triton kernels of a program lowered for CUDA (`jax.stages.Lowered`), in order."""
  found: list[TritonKernel] = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          if inner.operation.name == "stablehlo.custom_call" and _TARGET in str(
            inner.attributes["call_target_name"]
          ):
            found.append(_kernel(inner))
          walk(inner.operation)

  walk(lowered.compiler_ir("stablehlo").operation)
  return found


def _kernel(op) -> TritonKernel:
  config = op.attributes["mhlo.backend_config"]

  def number(key: str) -> int:
    return int(config[key].value)

  ir = config["ir"]
  return TritonKernel(
    name=str(config["name"].value),
    ir=bytes(getattr(ir, "value_bytes", None) or ir.value.encode("latin-1")),
    num_warps=number("num_warps"),
    num_stages=number("num_stages"),
    grid=(number("grid_x"), number("grid_y"), number("grid_z")),
  )


def compile_program(fn, *args, arch: str = ARCH) -> list[PtxReport]:
  """Every Triton kernel of `jax.jit(fn)` lowered for CUDA on `args` (arrays or
  `jax.ShapeDtypeStruct`s), compiled for `arch`, in program order."""
  return [compile_kernel(k, arch) for k in triton_kernels(lower_for_cuda(fn, *args))]


_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_kernel(kernel: TritonKernel, arch: str = ARCH) -> PtxReport:
  """Triton's compile of `kernel` for `arch` (PTX, shared memory), then `ptxas -v` on the PTX
  for registers and spills."""
  reason = missing()
  if reason:
    raise RuntimeError(f"cannot compile Triton kernels here: {reason}")
  from jax._src.lib import triton
  from jax._src.pallas.triton import lowering

  with lowering._new_ir_context():
    result = triton.compile(
      "cuda",
      kernel.ir,
      arch,
      num_warps=kernel.num_warps,
      num_ctas=1,
      num_stages=kernel.num_stages,
    )
  registers, spills = _ptxas_usage(result.asm, arch)
  return PtxReport(kernel, result.asm, int(result.smem_bytes), registers, spills)


def _ptxas_usage(ptx: str, arch: str) -> tuple[int | None, int | None]:
  sm = "sm_" + arch.replace(".", "") + ("a" if arch == ARCH else "")
  with tempfile.TemporaryDirectory() as tmp:
    source = os.path.join(tmp, "kernel.ptx")
    pathlib.Path(source).write_text(ptx)
    done = subprocess.run(
      [_ptxas(), f"-arch={sm}", "-v", source, "-o", os.path.join(tmp, "kernel.cubin")],
      capture_output=True,
      text=True,
      check=False,
    )
  if done.returncode:
    raise RuntimeError(f"ptxas failed on the PTX of the kernel: {done.stderr.strip()[-2000:]}")
  usage = _PTXAS_USAGE.search(done.stderr)
  spills = _PTXAS_SPILLS.search(done.stderr)
  return (
    int(usage.group(1)) if usage else None,
    int(spills.group(1)) + int(spills.group(2)) if spills else None,
  )
