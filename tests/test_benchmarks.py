"""The benchmark scripts keep running: each one's smallest configuration, end to end, writes
its JSON with the machine, versions and command (no timing is asserted)."""

import json
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
  "module, args, keys",
  [
    ("benchmarks.ops", ["--batch", "2", "--repeats", "1"], ["rows", "net"]),
    ("benchmarks.train_step", ["--model", "small_cnn", "--batch", "2", "--repeats", "1"], []),
    ("benchmarks.gpu_bench", ["--smoke", "--repeats", "1", "--sections", "gemm,conv"], ["gemm"]),
    ("benchmarks.any_model", ["--batch", "2", "--repeats", "1"], ["resnet20_ms", "cnn_ms"]),
  ],
)
def test_benchmark_runs_and_writes_json(tmp_path, module, args, keys):
  out = tmp_path / "result.json"
  proc = subprocess.run(
    [sys.executable, "-m", module, *args, "--out", str(out)],
    cwd=pathlib.Path(__file__).resolve().parent.parent,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert {"machine", "versions", "command", "date"} <= set(result)
  for key in keys:
    assert isinstance(result[key], (list, dict)) and "error" not in result[key]
  if module == "benchmarks.train_step":
    assert all("ms" in row for row in result["rows"].values()), result["rows"]
