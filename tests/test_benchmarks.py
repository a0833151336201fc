"""The benchmark scripts keep running: each one's smallest configuration, end to end, writes
its JSON with the machine, versions and command (no timing is asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from daq_jax.quant.config import RECOMMENDED


def errors(value) -> list:
  """Every "error" entry anywhere in a benchmark's JSON (rows are dicts in lists in dicts)."""
  if isinstance(value, dict):
    own = [value["error"]] if "error" in value else []
    return own + [e for v in value.values() for e in errors(v)]
  if isinstance(value, list):
    return [e for v in value for e in errors(v)]
  return []


def test_the_error_finder_finds_an_error_at_any_depth():
  assert errors({"rows": [{"ms": 1.0}, {"net": {"error": "XlaRuntimeError: boom"}}]}) == [
    "XlaRuntimeError: boom"
  ]
  assert errors({"rows": [{"ms": 1.0}], "error_rate": 0.0}) == []


# Each runs a benchmark script in a fresh process, compiling its programs: the slow set.
@pytest.mark.slow
@pytest.mark.parametrize(
  "module, args, keys",
  [
    ("benchmarks.ops", ["--batch", "2", "--repeats", "1"], ["rows", "net"]),
    ("benchmarks.ops", ["--video", "--batch", "1", "--repeats", "1"], ["rows", "net"]),
    ("benchmarks.train_step", ["--model", "small_cnn", "--batch", "2", "--repeats", "1"], []),
    ("benchmarks.any_model", ["--batch", "2", "--repeats", "1"], ["resnet20_ms", "cnn_ms"]),
    ("benchmarks.multiprocess", ["--model", "small_cnn", "--batch", "4", "--repeats", "1"], []),
    (
      "benchmarks.detection_step",
      ["--methods", "daq", "--batch", "2", "--rounds", "1", "--repeats", "1"],
      ["rows"],
    ),
    ("benchmarks.roofline", ["--model", "r3d_18", "--batch", "2"], ["designs", "hardware"]),
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
    assert isinstance(result[key], (list, dict)) and result[key], key
  assert errors(result) == []
  if module in ("benchmarks.train_step", "benchmarks.multiprocess", "benchmarks.detection_step"):
    assert all("ms" in row for row in result["rows"].values()), result["rows"]
  if module == "benchmarks.multiprocess":  # the second layout ran as two processes
    assert [r["processes"] for r in result["rows"].values()] == [1, 2], result["rows"]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_stage(tmp_path):
  """`gpu_check.sh --smoke` (what CI can run of the GPU check): every stage writes its JSON
  and finishes; on this CPU every implementation compiles the small layers and matches the
  float oracle, and auto picks today's xla path."""
  root = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(
    ["bash", "benchmarks/gpu_check.sh", "--smoke"],
    cwd=root,
    # No deadlines: every stage runs to its end however slow or loaded the machine is (the
    # timeout only ends a hung check).
    env={**os.environ, "OUT": str(tmp_path), "GPU_CHECK_TOTAL": "0", "PYTHON": sys.executable},
    capture_output=True,
    text=True,
    timeout=3600,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  stages = {
    name: json.loads((tmp_path / f"{name}.json").read_text())
    for name in ("env", "contractions", "resnet50_step", "cifar")
  }
  for name, result in stages.items():
    assert result.get("done") is True, (name, result.get("error"), proc.stdout[-2000:])
    assert result["rows"], name
    assert {"machine", "versions", "command", "date"} <= set(result)
  env = stages["env"]
  # auto's CPU plan: xla, but for the recommended method's per-row dgrad (a GEMM + col2im)
  assert env["auto_plan"]["plain 3x3, daq"] == ["xla", "xla", "xla"]
  assert env["auto_plan"][f"plain 3x3, {RECOMMENDED}"] == ["xla", "im2col", "xla"]
  for row in env["rows"]:
    assert "error" not in row, row
    # int8 implementations against the float oracle: the same int8 values and integer sums,
    # scaled in another order
    assert max(v for k, v in row.items() if k.endswith("_rel_err")) < 1e-5, row
  timed = [r for r in stages["contractions"]["rows"] if "ms" in r]
  assert {r["impl"] for r in timed} >= {"xla", "im2col", "pallas", "xla_bf16", "xla_f32"}
  assert {r["method"] for r in stages["cifar"]["rows"]} == {"fp32", RECOMMENDED, "daq", "daq_sr"}
  step = stages["resnet50_step"]
  assert set(step["compiled_memory"]) >= {"recommended_auto_bf16", "recommended_auto_bf16_int8"}
  assert step["remat_control"]["plain_temp_bytes"] >= step["remat_control"]["activation_bytes"]
  quantizer = [r for r in timed if r["contraction"] == "gradient quantizer"]
  assert {(r["impl"], r["method"]) for r in quantizer} == {
    (impl, method) for impl in ("jnp", "pallas") for method in ("daq", "daq_sr")
  }


def test_train_step_refuses_an_unknown_variant_by_name(capsys):
  from benchmarks import train_step

  with pytest.raises(SystemExit) as e:
    train_step.main(["--variants", "daq,daq_rows"])
  assert e.value.code == 2
  assert "--variants: unknown ['daq_rows']" in capsys.readouterr().err


def test_forward_swap_scores_each_run_with_the_other_forward(tmp_path):
  """Two tiny runs in the accuracy harness's layout: the float one is scored again with DAQ's
  forward and the DAQ one with the float forward; the JSON holds both scores per run and the
  change per method (a run that is not there is left out, not an error)."""
  from benchmarks import forward_swap
  from daq_jax.training import train_and_evaluate
  from tests.training.common import tiny

  for method in ("fp32", "daq"):
    train_and_evaluate(tiny(**{"quant.method": method}), str(tmp_path / f"{method}_seed0"))
  out = tmp_path / "swap.json"
  forward_swap.main([f"--root={tmp_path}", "--methods=fp32,daq", "--seeds=0,1", f"--out={out}"])
  result = json.loads(out.read_text())
  assert set(result["runs"]) == {"fp32/seed0", "daq/seed0"}
  assert result["runs"]["fp32/seed0"]["other_forward"] == "daq"
  assert result["runs"]["daq/seed0"]["other_forward"] == "fp32"
  for run in result["runs"].values():
    assert run["other_loss"] != run["own_loss"]
  change = result["table"]["daq"]["change"]
  run = result["runs"]["daq/seed0"]
  assert change["n"] == 1 and change["mean"] == run["other_top1"] - run["own_top1"]
  assert {"machine", "versions", "command"} <= set(result)
  # Asked again, the scored runs are kept as they are (not evaluated again).
  result["runs"]["daq/seed0"]["own_top1"] = -1.0
  out.write_text(json.dumps(result))
  forward_swap.main([f"--root={tmp_path}", "--methods=daq", "--seeds=0", f"--out={out}"])
  assert json.loads(out.read_text())["runs"]["daq/seed0"]["own_top1"] == -1.0
