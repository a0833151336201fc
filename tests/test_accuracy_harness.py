"""benchmarks/accuracy.py: the table's statistics on known numbers (mean, sample std, the
difference to fp32 paired by seed), and two real train.py runs of the default config end to
end, then skipped when asked again (the results file is the harness's memory)."""

import json
import statistics

import pytest

from benchmarks import accuracy


def _run(method, seed, top1):
  return {"method": method, "seed": seed, "top1": top1, "train_loss": 1.0, "train_seconds": 60.0}


def test_the_table_pairs_each_method_with_fp32_by_seed():
  runs = {}
  for method, values in {"fp32": (0.60, 0.62, 0.61), "daq_sr": (0.61, 0.62, 0.63)}.items():
    for seed, top1 in enumerate(values):
      runs[accuracy.run_key(method, seed)] = _run(method, seed, top1)
  runs[accuracy.run_key("daq", 0)] = _run("daq", 0, 0.55)  # one seed: no std
  table = accuracy.tabulate(runs, ["fp32", "daq", "daq_sr"], [0, 1, 2])
  assert table["fp32"]["top1"]["mean"] == pytest.approx(0.61)
  assert table["fp32"]["top1"]["std"] == pytest.approx(statistics.stdev([0.60, 0.62, 0.61]))
  assert "vs_fp32" not in table["fp32"]
  paired = table["daq_sr"]["vs_fp32"]
  assert paired["mean"] == pytest.approx(0.01) and paired["std"] == pytest.approx(0.01)
  assert paired["seeds"] == [0, 1, 2]
  assert table["daq"]["vs_fp32"]["mean"] == pytest.approx(-0.05)
  assert table["daq"]["top1"]["std"] is None and table["daq"]["seeds"] == [0]
  assert table["daq"]["minutes"]["mean"] == pytest.approx(1.0)


def test_paired_differences_carry_a_t_interval_and_daq_is_a_reference():
  runs = {}
  table_values = {
    "fp32": (0.60, 0.62, 0.61),
    "daq": (0.59, 0.60, 0.60),
    "daq_sr_wgrad": (0.61, 0.64, 0.64),
  }
  for method, values in table_values.items():
    for seed, top1 in enumerate(values):
      runs[accuracy.run_key(method, seed)] = _run(method, seed, top1)
  table = accuracy.tabulate(runs, list(table_values), [0, 1, 2])
  paired = table["daq_sr_wgrad"]["vs_fp32"]  # differences 0.01, 0.02, 0.03
  half = 4.302653 * 0.01 / 3**0.5  # t(0.975, 2 degrees of freedom) * s / sqrt(n)
  assert paired["ci95"] == pytest.approx([0.02 - half, 0.02 + half], abs=1e-6)
  against_daq = table["daq_sr_wgrad"]["vs_daq"]  # 0.02, 0.04, 0.04
  assert against_daq["mean"] == pytest.approx(0.10 / 3) and against_daq["seeds"] == [0, 1, 2]
  assert "vs_daq" not in table["daq"] and "vs_daq" not in table["fp32"]
  text = accuracy.markdown(_payload("c", table, runs, seeds=(0, 1, 2)))
  assert f"| 2.00 ± 1.00 [{2 - 100 * half:+.2f}, {2 + 100 * half:+.2f}] |" in text
  assert "- daq_sr_wgrad - daq: 3.33 ± 1.15 [" in text
  # Every _run has train loss 1.0: the paired loss difference is 0 with no spread.
  assert table["daq"]["train_loss_vs_fp32"]["mean"] == 0.0
  assert "- daq: 0.000 ± 0.000 [+0.000, +0.000] over seeds [0, 1, 2]" in text
  # The loss is paired with daq too, as the score is, and only where the score is.
  assert table["daq_sr_wgrad"]["train_loss_vs_daq"]["seeds"] == [0, 1, 2]
  assert "train_loss_vs_daq" not in table["daq"] and "train_loss_vs_fp32" not in table["fp32"]
  assert "Final train loss minus daq's, paired by seed:\n- daq_sr_wgrad: 0.000 ± 0.000" in text


def test_the_table_is_rewritten_from_the_file_and_machines_are_not_mixed(tmp_path, capsys):
  out = tmp_path / "acc.json"
  runs = {accuracy.run_key(m, 0): _run(m, 0, v) for m, v in (("fp32", 0.6), ("daq", 0.58))}
  payload = _payload("c", {}, runs, seeds=(0,))
  payload["machine"]["cpu"] = "another cpu"
  out.write_text(json.dumps(payload))
  # A workdir still there: its loss is read again over the last 100 steps.
  workdir = tmp_path / "runs" / "daq_seed0"
  workdir.mkdir(parents=True)
  lines = [{"step": 100, "train/loss": 2.0}, {"step": 102, "train/loss": 4.0}]
  (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  runs[accuracy.run_key("daq", 0)]["steps"] = 102
  out.write_text(json.dumps(payload))
  accuracy.main([f"--out={out}", "--table-only", f"--root={tmp_path / 'runs'}"])
  rewritten = json.loads(out.read_text())
  refreshed = rewritten["runs"][accuracy.run_key("daq", 0)]
  assert refreshed["train_loss"] == pytest.approx((98 * 2.0 + 2 * 4.0) / 100)
  assert refreshed["train_loss_steps"] == 100
  assert "train_loss_steps" not in rewritten["runs"][accuracy.run_key("fp32", 0)]
  assert rewritten["table"]["daq"]["vs_fp32"]["mean"] == pytest.approx(-0.02)
  assert rewritten["machine"]["cpu"] == "another cpu"  # the runs' machine, not this one
  assert "| daq | 1 | 58.00 | -2.00 |" in out.with_suffix(".md").read_text()
  with pytest.raises(SystemExit, match="holds runs made on \\['another cpu'\\]"):
    accuracy.main([f"--out={out}", "--methods=daq", "--seeds=1", f"--root={tmp_path}"])
  with pytest.raises(SystemExit, match="holds no runs"):
    accuracy.main([f"--out={tmp_path / 'none.json'}", "--table-only"])


def test_pooled_files_pair_seeds_only_within_a_file(tmp_path):
  paths = []
  for name, (fp32, daq) in {"a": (0.60, 0.59), "b": (0.70, 0.66)}.items():
    runs = {accuracy.run_key(m, 0): _run(m, 0, v) for m, v in (("fp32", fp32), ("daq", daq))}
    payload = _payload("c", {}, runs, seeds=(0,))
    payload["machine"]["cpu"] = f"cpu {name}"
    (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    paths.append(str(tmp_path / f"{name}.json"))
  text = accuracy.pooled_markdown(paths)
  assert "Pooled over a: cpu a, b: cpu b." in text
  # Differences -1 and -4 points (never 0.59 - 0.70): mean -2.5, std 2.12.
  assert "| daq | 2 | 62.50 ± 4.95 | -2.50 ± 2.12 [" in text
  # daq is no reference of its own: its train loss is paired with fp32's only.
  assert text.splitlines()[-3].endswith(" | - | 0.000 ± 0.000 [+0.000, +0.000] | - |")


def test_the_final_train_loss_is_the_mean_of_the_last_steps():
  records = [
    {"step": 100, "train/loss": 3.0},
    {"step": 200, "train/loss": 2.0},
    {"step": 202, "train/loss": 5.0},
  ]
  # The last 100 steps: 98 of the window ending at 200, the 2 of the short last one.
  assert accuracy.final_train_loss(records) == pytest.approx((98 * 2.0 + 2 * 5.0) / 100)
  assert accuracy.final_train_loss(records, steps=2) == pytest.approx(5.0)
  assert accuracy.final_train_loss(records, steps=1000) == pytest.approx(
    (100 * 3.0 + 100 * 2.0 + 2 * 5.0) / 202
  )
  assert accuracy.final_train_loss([]) is None


def test_losses_of_two_definitions_are_not_paired():
  runs = {
    accuracy.run_key("fp32", 0): _run("fp32", 0, 0.6),
    accuracy.run_key("daq", 0): {**_run("daq", 0, 0.6), "train_loss_steps": 100},
    accuracy.run_key("fp32", 1): {**_run("fp32", 1, 0.6), "train_loss_steps": 100},
    accuracy.run_key("daq", 1): {**_run("daq", 1, 0.6), "train_loss_steps": 100},
  }
  table = accuracy.tabulate(runs, ["fp32", "daq"], [0, 1])
  assert table["daq"]["train_loss_vs_fp32"]["seeds"] == [1]
  assert table["daq"]["vs_fp32"]["seeds"] == [0, 1]


def test_train_time_sums_each_logged_windows_steps():
  records = [
    {"step": 100, "train/step_time_s": 2.0},
    {"step": 250, "train/step_time_s": 3.0},
    {"step": 251, "train/step_time_s": 1.0},
  ]
  assert accuracy.train_seconds(records) == 200 + 450 + 1


@pytest.mark.slow
def test_two_runs_end_to_end_then_skipped(tmp_path, capsys):
  out = tmp_path / "acc.json"
  argv = [
    "--config=configs/default.py",
    "--methods=fp32,daq_sr",
    "--seeds=0",
    "--set=num_steps=2",
    f"--root={tmp_path / 'runs'}",
    f"--out={out}",
  ]
  accuracy.main(argv)
  result = json.loads(out.read_text())
  assert set(result["runs"]) == {"fp32/seed0", "daq_sr/seed0"}
  for run in result["runs"].values():
    assert 0 <= run["top1"] <= 1 and run["steps"] == 2 and run["train_loss"] > 0
    assert run["train_seconds"] > 0
    assert "--config.num_steps=2" in run["command"]
  assert {"machine", "versions", "command", "date"} <= set(result)
  assert "vs_fp32" in result["table"]["daq_sr"]
  assert "| daq_sr | 1 |" in out.with_suffix(".md").read_text()
  capsys.readouterr()
  accuracy.main(argv)
  assert "0 run(s) to go" in capsys.readouterr().out


def _payload(config, table, runs, seeds=(0, 1)) -> dict:
  """What `accuracy.main` hands `markdown`, with a fixed machine, command and date."""
  return {
    "config": config,
    "set": [],
    "seeds": list(seeds),
    "machine": {"cpu": "cpu", "cpu_count": 2},
    "command": "python -m benchmarks.accuracy",
    "date": "today",
    "table": table,
    "runs": runs,
  }


def test_detection_runs_are_tabulated_by_map():
  runs = {}
  for method, values in {"fp32": (0.30, 0.34), "daq": (0.25, 0.27)}.items():
    for seed, value in enumerate(values):
      run = _run(method, seed, 0.0)
      del run["top1"]
      runs[accuracy.run_key(method, seed)] = {**run, "mAP": value, "mAP50": 2 * value}
  table = accuracy.tabulate(runs, ["fp32", "daq"], [0, 1])
  assert table["fp32"]["mAP"]["mean"] == pytest.approx(0.32) and "top1" not in table["fp32"]
  assert table["daq"]["mAP50"]["mean"] == pytest.approx(0.52)
  assert table["daq"]["vs_fp32"]["mean"] == pytest.approx(-0.06)
  text = accuracy.markdown(_payload("configs/detection_default.py", table, runs))
  assert "COCO mAP@[.5:.95] and mAP@.5" in text and "| mAP | mAP@.5 |" in text
  assert "| daq | 2 | 26.00 ± 1.41 | 52.00 ± 2.83 | -6.00 ± 1.41 [-18.71, +6.71] |" in text


def test_a_diverged_run_is_recorded_and_left_out_of_the_mean(tmp_path):
  log = tmp_path / "x.log"
  log.write_text("...\nerror: the loss is nan at step 484: stopping. The last good checkpoint\n")
  assert accuracy.DIVERGED.search(log.read_text()).group(1) == "484"
  runs = {
    accuracy.run_key("fp32", 0): _run("fp32", 0, 0.6),
    accuracy.run_key("fp32", 1): _run("fp32", 1, 0.62),
    accuracy.run_key("per_tensor", 0): {"method": "per_tensor", "seed": 0, "diverged_at": 484},
    accuracy.run_key("per_tensor", 1): _run("per_tensor", 1, 0.5),
    accuracy.run_key("ui8", 0): {"method": "ui8", "seed": 0, "diverged_at": 9},
  }
  table = accuracy.tabulate(runs, ["fp32", "per_tensor", "ui8"], [0, 1])
  assert table["per_tensor"]["top1"]["n"] == 1 and table["per_tensor"]["diverged"] == [0]
  assert table["per_tensor"]["vs_fp32"]["mean"] == pytest.approx(-0.12)
  assert table["ui8"] == {"seeds": [], "diverged": [0]}
  text = accuracy.markdown(_payload("c", table, runs))
  assert "| per_tensor | 1 (+ diverged: seeds [0]) | 50.00 |" in text
  assert "| ui8 | 0 (diverged: seeds [0]) | - | - | - | - |" in text


def test_the_readmes_results_table_is_the_stored_results():
  readme = (accuracy.REPO / "README.md").read_text()
  stored = readme.split(accuracy.README_BEGIN, 1)[1].split(accuracy.README_END, 1)[0]
  assert stored.strip() == accuracy.readme_table().strip(), (
    "README's results table is stale: python -m benchmarks.accuracy --readme-table"
  )
  # every row names its recommended-method cell, with seeds and a paired interval
  rows = [line for line in stored.splitlines() if line.startswith("| ") and "<br>" in line]
  assert len(rows) == len(accuracy.README_ROWS)
  column = 1 + accuracy.README_METHODS.index(accuracy.RECOMMENDED)
  for row in rows:
    cell = row.split(" | ")[column]
    assert "(n=" in cell and "[" in cell, row


def test_the_readme_table_is_written_between_its_markers_only(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# x\n")
  with pytest.raises(SystemExit, match="has no results-table markers"):
    accuracy.write_readme_table(readme)
  # the rows' files, copied under the tmp root
  for *_, path in accuracy.README_ROWS:
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text((accuracy.REPO / path).read_text())
  readme.write_text(f"before\n{accuracy.README_BEGIN}\nold\n{accuracy.README_END}\nafter\n")
  table = accuracy.write_readme_table(readme)
  assert readme.read_text() == (
    f"before\n{accuracy.README_BEGIN}\n{table}\n{accuracy.README_END}\nafter\n"
  )
