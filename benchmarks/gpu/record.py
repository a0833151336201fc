"""What every stage of the GPU check shares: its JSON record, rewritten after each
measurement, and the timing of one function."""

from __future__ import annotations

import json
import pathlib
import time
import traceback

from benchmarks.common import environment, median_ms, write_json

# The int8 implementations each stage compares, the implicit-GEMM kernels first (the ones the
# cost model predicts fastest on a GPU: a stage cut short by its deadline measured them).
IMPLS = ("implicit", "implicit_fused", "im2col", "xla", "pallas")


class Recorder:
  """A stage's JSON: the environment, then rows, rewritten (atomically) after each one."""

  def __init__(self, out: pathlib.Path, stage: str, smoke: bool):
    self.path = out / f"{stage}.json"
    self.data = {**environment(f"benchmarks.gpu_check {stage}"), "stage": stage, "smoke": smoke}
    self.data["rows"] = []
    self.start = time.perf_counter()
    self.save()

  def save(self) -> None:
    self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
    write_json(self.path, self.data)

  def set(self, key: str, value) -> None:
    self.data[key] = value
    self.save()

  def row(self, **row) -> dict:
    self.data["rows"].append(row)
    self.save()
    print(json.dumps(row, default=str), flush=True)
    return row


def error(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"[:800]


def measure(fn, *args, repeats: int) -> dict:
  """{"ms", "compile_s"} of `fn(*args)`, or {"error"}."""
  import jax

  try:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    return {"ms": median_ms(fn, *args, repeats=repeats, warmup=1), "compile_s": compile_s}
  except Exception as e:
    traceback.print_exc()
    return {"error": error(e)}
