"""GPU check, stage `resnet50_step`: `train.py`'s training step (`benchmarks.train_step.
build_step`: the config's model, SGD with momentum, BN, normalisation on the device) of
ResNet-50 at batch 128 on 224x224 images: fp32, bf16, and per_tensor, DAQ, daq_sr and
daq_sr_wgrad_rows on impl="auto" with bf16 float parts. Smoke: the small CNN at 32x32, batch 2."""

from __future__ import annotations

import traceback

from benchmarks.gpu.record import Recorder, error, measure

# name, quant.method, model.dtype
VARIANTS = [
  ("fp32", "fp32", "float32"),
  ("bf16", "fp32", "bfloat16"),
  ("per_tensor_bf16", "per_tensor", "bfloat16"),
  ("daq_auto_bf16", "daq", "bfloat16"),
  ("daq_sr_auto_bf16", "daq_sr", "bfloat16"),
  # per-row dgrad scales: the GEMM + col2im dgrad
  ("daq_sr_wgrad_rows_auto_bf16", "daq_sr_wgrad_rows", "bfloat16"),
]


def run(rec: Recorder, smoke: bool, repeats: int) -> None:
  from benchmarks.train_step import build_step

  model, batch, size, classes = ("small_cnn", 2, 32, 10) if smoke else ("resnet50", 128, 224, 1000)
  rec.set("model", model)
  variants = [VARIANTS[0], VARIANTS[-2], VARIANTS[-1]] if smoke else VARIANTS
  for name, method, dtype in variants:
    try:
      step, state, batch_data = build_step(method, dtype, model, batch, size, classes)
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
