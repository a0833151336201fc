"""GPU check, stage `resnet50_step`: `train.py`'s training step (`benchmarks.train_step.
build_step`: the config's model, SGD with momentum, BN, normalisation on the device) of
ResNet-50 at batch 128 on 224x224 images: fp32, bf16, and per_tensor, DAQ, daq_sr,
daq_sr_wgrad_rows and the recommended method (keeping everything, and memory="int8") on
impl="auto" with bf16 float parts; then XLA's compiled memory of the recommended method's step
in both memory modes and of bf16's (`memory_analysis`: on the GPU, whether XLA keeps the
int8 mode's recomputation, which XLA:CPU does not: `benchmarks.memory.remat_control`, an
MLP's gradient keeping everything and keeping per-layer bf16 copies only, is read beside
them, with the recomputed dots that XLA compiles). Smoke: the small CNN at
32x32, batch 2."""

from __future__ import annotations

import traceback

from benchmarks.gpu.record import Recorder, error, measure
from daq_jax.quant.config import RECOMMENDED

# name, quant.method, model.dtype, memory
VARIANTS = [
  ("fp32", "fp32", "float32", "keep"),
  ("bf16", "fp32", "bfloat16", "keep"),
  ("per_tensor_bf16", "per_tensor", "bfloat16", "keep"),
  ("daq_auto_bf16", "daq", "bfloat16", "keep"),
  ("daq_sr_auto_bf16", "daq_sr", "bfloat16", "keep"),
  # per-row dgrad scales: the GEMM + col2im dgrad
  ("daq_sr_wgrad_rows_auto_bf16", "daq_sr_wgrad_rows", "bfloat16", "keep"),
  ("recommended_auto_bf16", RECOMMENDED, "bfloat16", "keep"),
  ("recommended_auto_bf16_int8", RECOMMENDED, "bfloat16", "int8"),
]
# The variants whose compiled memory is read after the timings.
MEMORY = ("bf16", "recommended_auto_bf16", "recommended_auto_bf16_int8")


def run(rec: Recorder, smoke: bool, repeats: int) -> None:
  from benchmarks.train_step import build_step

  model, batch, size, classes = ("small_cnn", 2, 32, 10) if smoke else ("resnet50", 128, 224, 1000)
  rec.set("model", model)
  variants = [VARIANTS[0], VARIANTS[-2], VARIANTS[-1]] if smoke else VARIANTS
  for name, method, dtype, memory in variants:
    try:
      step, state, batch_data = build_step(
        method, dtype, model, batch, size, classes, memory=memory
      )
      result = measure(step, state, batch_data, repeats=repeats)
      if "ms" in result:
        result["images_per_s"] = batch / (result["ms"] * 1e-3)
      rec.row(name=name, batch=batch, **result)
    except Exception as e:
      traceback.print_exc()
      rec.row(name=name, batch=batch, error=error(e))
  times = {r["name"]: r["ms"] for r in rec.data["rows"] if "ms" in r}
  if "bf16" in times:
    rec.set("vs_bf16", {k: round(v / times["bf16"], 3) for k, v in times.items()})
  import jax

  memory_rows = {}
  for name, method, dtype, memory in variants:
    if name not in MEMORY and not smoke:
      continue
    try:
      step, state, batch_data = build_step(
        method, dtype, model, batch, size, classes, memory=memory
      )
      analysis = jax.jit(step).lower(state, batch_data).compile().memory_analysis()
      memory_rows[name] = {
        "temp_mib": analysis.temp_size_in_bytes / 2**20,
        "argument_mib": analysis.argument_size_in_bytes / 2**20,
      }
    except Exception as e:
      memory_rows[name] = {"error": error(e)}
    rec.set("compiled_memory", memory_rows)
  try:
    from benchmarks.memory import remat_control

    rec.set("remat_control", remat_control())
  except Exception as e:
    rec.set("remat_control", {"error": error(e)})
