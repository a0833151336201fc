"""Accuracy across seeds: trains a list of methods over a list of seeds at one schedule and
tabulates the final validation top-1 (mean and std per method, and the difference to fp32
paired by seed: same initialisation, same batches).

    python -m benchmarks.accuracy --data-dir PATH                  # 5 methods x 3 seeds
    python -m benchmarks.accuracy --data-dir PATH --jobs 2         # two runs, one core each
    python -m benchmarks.accuracy --data-dir PATH --methods fp32,daq --seeds 0,1,2,3 \
        --set num_epochs=4 --out benchmarks/results/accuracy_4ep.json

Each run is `train.py` in its own workdir under --root (its own resume guarantees). The
results file is rewritten after every finished run and is the harness's memory: a run
recorded there with the same command is skipped, so the measurement can be spread over
sessions (interrupt it at any time; run the same command again). A markdown table goes
beside the JSON (.md): per method the mean ± std, the difference to fp32 paired by seed with
the 95 % t interval of its mean, the same against daq, and the final train loss (the mean
over the last 100 steps) paired with fp32's. `--table-only` rewrites both from the file's
runs, reading the losses again from the workdirs still under --root. One file holds one
machine's runs: the same seed on another CPU follows another trajectory (its float kernels
round differently), so the harness refuses to add runs made on another CPU to a file;
`--pool A.json,B.json` prints one table over several files, pairing a seed only within its
file. The data split is the training set's own validation split (the config's
`data.eval_split`), never a test set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time

import scipy.stats

from benchmarks.common import cpu_name, environment, write_json
from daq_jax.quant.config import RECOMMENDED

METHODS = ("fp32", "daq", "daq_sr", "daq_sr_wgrad", "daq_sr_wgrad_rows", "ui8")
REPO = pathlib.Path(__file__).resolve().parent.parent


def run_key(method: str, seed: int) -> str:
  return f"{method}/seed{seed}"


def workdir_of(args, method: str, seed: int) -> pathlib.Path:
  return pathlib.Path(args.root) / f"{method}_seed{seed}"


def train_command(args, method: str, seed: int) -> list[str]:
  """The train.py command of one run (what the results record, and compare on resume)."""
  workdir = workdir_of(args, method, seed)
  command = [
    "train.py",
    f"--config={args.config}",
    f"--workdir={workdir}",
    f"--config.quant.method={method}",
    f"--config.seed={seed}",
  ]
  if args.data_dir:
    command.append(f"--config.data.dir={args.data_dir}")
  command += [f"--config.{item}" for item in args.set]
  return command


def train_records(workdir: pathlib.Path) -> list[dict]:
  """The training records of a run's metrics.jsonl, in step order."""
  path = workdir / "metrics.jsonl"
  records = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if "train/loss" in record:
      records.append(record)
  return sorted(records, key=lambda r: r["step"])


def train_seconds(records: list[dict]) -> float:
  """The run's time in training steps: each logged window's mean step time times its steps
  (compilation, evaluation and start-up left out; whole across resumed invocations)."""
  total, previous = 0.0, 0
  for record in records:
    total += record["train/step_time_s"] * (record["step"] - previous)
    previous = record["step"]
  return total


# The final training loss is the mean over this many last steps (each logged value is its
# window's mean; a run whose length is not a multiple of the log interval logs a short last
# window, two steps at the 702-step schedule, too few to compare runs by).
LOSS_STEPS = 100


def final_train_loss(records: list[dict], steps: int = LOSS_STEPS) -> float | None:
  """The mean training loss over the run's last `steps` steps, from its logged windows (each
  weighted by how many of its steps fall among the last ones)."""
  if not records:
    return None
  last = records[-1]["step"]
  total = weight = 0.0
  previous = 0
  for record in records:
    inside = max(0, record["step"] - max(previous, last - steps))
    total += record["train/loss"] * inside
    weight += inside
    previous = record["step"]
  return total / weight


def train_one(args, method: str, seed: int, core: int | None) -> dict:
  """Runs (or resumes) one run to its end and returns its record."""
  workdir = workdir_of(args, method, seed)
  command = train_command(args, method, seed)
  log = workdir.with_name(workdir.name + ".log")
  log.parent.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  # One core per job (taskset, not a preexec_fn: forking this multithreaded process to run
  # Python before exec can deadlock); the run's threads and decoding workers inherit it.
  pin = ["taskset", "-c", str(core)] if core is not None else []
  start = time.monotonic()
  with open(log, "a") as out:
    code = subprocess.call(
      [*pin, sys.executable, *command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
    )
  seconds = time.monotonic() - start
  summary_path = workdir / "summary.json"
  diverged = DIVERGED.search(log.read_text()) if code != 0 else None
  if diverged:  # a result too: the method does not train this config at this seed
    return {
      "method": method,
      "seed": seed,
      "command": " ".join(["python", *command]),
      "diverged_at": int(diverged.group(1)),
      "seconds": round(seconds, 1),
      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
  if code != 0 or not summary_path.exists():
    raise RuntimeError(f"{run_key(method, seed)} exited {code}; see {log}")
  summary = json.loads(summary_path.read_text())
  records = train_records(workdir)
  return {
    "method": method,
    "seed": seed,
    "command": " ".join(["python", *command]),
    **(
      {"mAP": summary["eval_mAP"], "mAP50": summary["eval_mAP50"]}
      if "eval_mAP" in summary
      else {"top1": summary["eval_top1"]}
    ),
    "eval_split": summary.get("eval_split"),
    **({"video_top1": summary["eval_video_top1"]} if "eval_video_top1" in summary else {}),
    "eval_loss": summary["eval_loss"],
    "train_loss": final_train_loss(records),
    "train_loss_steps": LOSS_STEPS,
    "steps": summary["step"],
    "train_seconds": round(train_seconds(records), 1),
    "seconds": round(seconds, 1),  # this invocation's wall time (a resumed run: its rest)
    "cores": 1 if core is not None else os.cpu_count(),
    "cpu": cpu_name(),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }


def mean_std(values: list[float]) -> dict:
  """Mean, sample std (None for one value) and count."""
  return {
    "mean": statistics.fmean(values),
    "std": statistics.stdev(values) if len(values) > 1 else None,
    "n": len(values),
  }


def _paired(diffs: list[float], seeds: list[int]) -> dict:
  """Mean and sample std of paired differences, with the 95 % confidence interval of the mean
  (Student's t over n - 1 degrees of freedom) where there are two or more."""
  stat = {**mean_std(diffs), "seeds": seeds}
  if len(diffs) > 1:
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * stat["std"] / math.sqrt(len(diffs))
    stat["ci95"] = [stat["mean"] - half, stat["mean"] + half]
  return stat


# The methods every other one is paired with by seed: float32, and the paper's DAQ (the
# project's accuracy target is to match the first and beat the second).
REFERENCES = ("fp32", "daq")


def headline(run: dict) -> str:
  """The metric a run is ranked by: `mAP` (detection) or `top1`."""
  return "mAP" if "mAP" in run else "top1"


# train.py's line for a run that stopped at a non-finite loss (`metrics.NonFiniteLossError`).
DIVERGED = re.compile(r"error: (?:the loss is \S+|the parameters became non-finite) at step (\d+)")


def _versus(runs: dict, method: str, reference: str, seeds, field: str, agree: str = ""):
  """`field` of `method` minus that of `reference`, paired over the seeds where the reference
  has it (and, if `agree` names a field, where the two runs' values of it are equal); None
  where no seed pairs."""
  paired = [
    s
    for s in seeds
    if runs.get(run_key(reference, s), {}).get(field) is not None
    and (not agree or runs[run_key(reference, s)].get(agree) == runs[run_key(method, s)].get(agree))
  ]
  if not paired:
    return None
  diffs = [runs[run_key(method, s)][field] - runs[run_key(reference, s)][field] for s in paired]
  return _paired(diffs, paired)


def _references_of(method: str) -> tuple[str, ...]:
  """The references a method is paired with: all of them, or for a reference the ones before
  it (daq against fp32; fp32 against none)."""
  if method in REFERENCES:
    return REFERENCES[: REFERENCES.index(method)]
  return REFERENCES


def tabulate(runs: dict, methods, seeds) -> dict:
  """Per method: the headline metric's (top-1's, or a detector's mAP's) mean/std over the
  finished seeds, and the paired difference to fp32."""
  table = {}
  for method in methods:
    recorded = [s for s in seeds if run_key(method, s) in runs]
    diverged = [s for s in recorded if "diverged_at" in runs[run_key(method, s)]]
    done = [s for s in recorded if s not in diverged]
    if diverged and not done:
      table[method] = {"seeds": [], "diverged": diverged}
      continue
    if not done:
      continue
    key = headline(runs[run_key(method, done[0])])
    scores = [runs[run_key(method, s)][key] for s in done]
    row = {key: mean_std(scores), "seeds": done}
    for extra in ("video_top1", "mAP50"):
      values = [runs[run_key(method, s)].get(extra) for s in done]
      if None not in values:
        row[extra] = mean_std(values)
    for reference in _references_of(method):
      if stat := _versus(runs, method, reference, done, key):
        row[f"vs_{reference}"] = stat
    losses = [runs[run_key(method, s)]["train_loss"] for s in done]
    if None not in losses:
      row["train_loss"] = mean_std(losses)
      # The final training loss (a mean over the last logged steps) varies less from seed to
      # seed than a 5,000-image validation score, so its paired differences are shown too,
      # between runs whose losses have one definition.
      for reference in _references_of(method):
        stat = _versus(runs, method, reference, done, "train_loss", agree="train_loss_steps")
        if stat:
          row[f"train_loss_vs_{reference}"] = stat
    minutes = [runs[run_key(method, s)]["train_seconds"] / 60 for s in done]
    row["minutes"] = mean_std(minutes)
    if diverged:
      row["diverged"] = diverged
    table[method] = row
  return table


def _pm(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
  if stat["std"] is None:
    return f"{stat['mean'] * scale:.{digits}f}"
  return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _loss_note(runs: dict) -> str:
  """What "final train loss" means for these runs."""
  older = sorted(k for k, run in runs.items() if "train_loss_steps" not in run and "top1" in run)
  note = f"Final train loss: the mean over a run's last {LOSS_STEPS} steps"
  if older:
    note += (
      f"; for {len(older)} run(s) recorded before that definition, over its last logged "
      "window (2 steps at the 702-step schedule), paired only with runs of the same definition"
    )
  return note + ". "


def _paired_cell(stat: dict, scale: float = 100, digits: int = 2) -> str:
  cell = _pm(stat, scale, digits)
  if "ci95" in stat:
    lo, hi = (scale * x for x in stat["ci95"])
    cell += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
  return cell


def markdown(payload: dict) -> str:
  splits = {run.get("eval_split") or "val" for run in payload["runs"].values()}
  split = {"val": "validation", "test": "test"}.get(min(splits), min(splits)) if splits else "val"
  video = any("video_top1" in row for row in payload["table"].values())
  detection = any("mAP" in row for row in payload["table"].values())
  what = "clip top-1 and video top-1" if video else "top-1"
  if detection:
    what = "COCO mAP@[.5:.95] and mAP@.5"
  lines = [
    f"Final {split} {what} (%) of `{payload['config']}` "
    f"({' '.join(payload['set']) or 'as configured'}); seeds {payload['seeds']}.",
    f"Machine: {payload['machine']['cpu']}, {payload['machine']['cpu_count']} cores; "
    f"command: `{payload['command']}`; written {payload['date']}.",
    "",
    f"| method | seeds done | {'clip top-1 | video top-1' if video else 'top-1'} | "
    "vs fp32 (paired by seed) | final train loss | train minutes |",
    "|---|---|---|---|---|---|" + ("---|" if video else ""),
  ]
  if detection:
    lines[-2:] = [
      "| method | seeds done | mAP | mAP@.5 | vs fp32 (mAP, paired by seed) | final train loss "
      "| train minutes |",
      "|---|---|---|---|---|---|---|",
    ]
  for method, row in payload["table"].items():
    if not row["seeds"]:  # every seed diverged
      cells = 6 if detection else 5 + video
      lines.append(f"| {method} | 0 (diverged: seeds {row['diverged']}) |" + " - |" * (cells - 1))
      continue
    paired = _paired_cell(row["vs_fp32"]) if "vs_fp32" in row else "-"
    diverged = f" (+ diverged: seeds {row['diverged']})" if row.get("diverged") else ""
    loss = _pm(row["train_loss"], 1, 3) if "train_loss" in row else "-"
    top1 = _pm(row["mAP"], 100) + " | " + _pm(row["mAP50"], 100) if detection else ""
    top1 = top1 or _pm(row["top1"], 100)
    if video:
      top1 += " | " + (_pm(row["video_top1"], 100) if "video_top1" in row else "-")
    lines.append(
      f"| {method} | {len(row['seeds'])}{diverged} | {top1} | {paired} | {loss} | "
      f"{_pm(row['minutes'], 1, 1)} |"
    )
  against_daq = [(m, row["vs_daq"]) for m, row in payload["table"].items() if "vs_daq" in row]
  if against_daq:
    lines.append("")
    lines.append("Paired with daq by seed:")
    for method, stat in against_daq:
      lines.append(f"- {method} - daq: {_paired_cell(stat)} over seeds {stat['seeds']}")
  for reference in REFERENCES:
    field = f"train_loss_vs_{reference}"
    against_loss = [(m, r[field]) for m, r in payload["table"].items() if field in r]
    if against_loss:
      lines.append("")
      lines.append(f"Final train loss minus {reference}'s, paired by seed:")
      for method, stat in against_loss:
        lines.append(f"- {method}: {_paired_cell(stat, 1, 3)} over seeds {stat['seeds']}")
  lines.append("")
  lines.append(
    "[lo, hi]: the 95 % confidence interval of the paired mean (Student's t). "
    + _loss_note(payload["runs"])
    + "mean ± sample std over seeds; the fp32 row's std is the seed-to-seed spread; a seed "
    "whose loss became non-finite is listed as diverged and left out of the mean. Train "
    "minutes: the steps' time (no compilation or evaluation), one core a run, the machine "
    "shared."
  )
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/cifar10_resnet20_short.py")
  parser.add_argument("--data-dir", default=None, help="--config.data.dir of every run")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument(
    "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, repeated"
  )
  parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="2: one core each")
  parser.add_argument("--root", default="runs/accuracy", help="where the workdirs go")
  parser.add_argument("--out", default="benchmarks/results/accuracy_cifar10_resnet20.json")
  parser.add_argument(
    "--pool",
    default=None,
    metavar="A.json,B.json",
    help="print one table over the runs of several results files (seeds paired within a "
    "file, named file:seed); train nothing",
  )
  parser.add_argument(
    "--table-only",
    action="store_true",
    help="rewrite the table and markdown of --out from its runs; train nothing",
  )
  parser.add_argument(
    "--readme-table",
    action="store_true",
    help="rewrite README.md's results table from the stored results files (README_ROWS); "
    "train nothing",
  )
  args = parser.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  seeds = [int(s) for s in args.seeds.split(",")]
  out = pathlib.Path(args.out)
  before = json.loads(out.read_text()) if out.exists() else {}
  runs = before.get("runs", {})
  if args.pool:
    print(pooled_markdown(args.pool.split(",")), flush=True)
    return
  if args.readme_table:
    print(write_readme_table(REPO / "README.md"), flush=True)
    return
  if args.table_only:
    if not runs:
      raise SystemExit(f"--table-only: {out} holds no runs")
    _refresh_losses(args, runs)
    _rewrite_table(out, before)
    return

  def record(done: dict):
    runs[run_key(done["method"], done["seed"])] = done
    # Every method with a run in the file (earlier invocations' methods stay in the table),
    # in the order of METHODS, then any other in the order given.
    payload = {
      **environment("benchmarks.accuracy"),
      "config": args.config,
      "set": args.set,
      "methods": methods,
      "seeds": seeds,
      "table": tabulate(runs, method_order(runs, methods), seeds),
      "runs": runs,
    }
    _write(out, payload)

  # Seed-major, so that every method gets its first seeds before any gets its last.
  todo = []
  for seed in seeds:
    for method in methods:
      previous = runs.get(run_key(method, seed))
      command = " ".join(["python", *train_command(args, method, seed)])
      if previous and previous["command"] == command:
        continue
      todo.append((method, seed))
  print(f"{len(todo)} run(s) to go: {todo}", flush=True)
  # The same seed on another CPU is another trajectory (float kernels differ), so runs of two
  # machines are not paired by seed: one results file, one machine.
  theirs = {run.get("cpu", before.get("machine", {}).get("cpu")) for run in runs.values()}
  if todo and runs and theirs != {cpu_name()}:
    raise SystemExit(
      f"{out} holds runs made on {sorted(map(str, theirs))}, this machine is {cpu_name()!r}: "
      "the same seed on another CPU is another trajectory, not a pair; give another --out"
    )
  if args.jobs == 1:
    for method, seed in todo:
      record(train_one(args, method, seed, None))
    return
  # Two workers, each pinned to its own core, take the runs in order.
  queue = list(reversed(todo))
  lock = threading.Lock()
  failures = []

  def worker(core: int):
    while True:
      with lock:
        if not queue or failures:
          return
        method, seed = queue.pop()
      try:
        done = train_one(args, method, seed, core)
      except RuntimeError as e:
        with lock:
          failures.append(str(e))
        return
      with lock:
        record(done)

  threads = [threading.Thread(target=worker, args=(core,)) for core in (0, 1)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  if failures:
    raise SystemExit("; ".join(failures))


def pooled_markdown(paths: list[str]) -> str:
  """One table over several results files (each its own machine): a seed is paired only with
  the same seed of the same file, and is named `file-stem:seed`."""
  runs, machines = {}, []
  for path in paths:
    payload = json.loads(pathlib.Path(path).read_text())
    stem = pathlib.Path(path).stem
    machines.append(f"{stem}: {payload['machine']['cpu']}")
    for run in payload["runs"].values():
      seed = f"{stem}:{run['seed']}"
      runs[run_key(run["method"], seed)] = {**run, "seed": seed}
  seeds = sorted({run["seed"] for run in runs.values()})
  table = tabulate(runs, method_order(runs), seeds)
  lines = [f"Pooled over {', '.join(machines)}.", ""]
  lines += [
    "| method | seeds | top-1 | vs fp32 | vs daq | final train loss vs fp32 | vs daq |",
    "|---|---|---|---|---|---|---|",
  ]
  for method, row in table.items():
    if not row["seeds"]:
      continue
    against = [_paired_cell(row[k]) if k in row else "-" for k in ("vs_fp32", "vs_daq")]
    for k in ("train_loss_vs_fp32", "train_loss_vs_daq"):
      against.append(_paired_cell(row[k], 1, 3) if k in row else "-")
    top1 = _pm(row[headline(runs[run_key(method, row["seeds"][0])])], 100)
    lines.append(f"| {method} | {len(row['seeds'])} | {top1} | {' | '.join(against)} |")
  lines += ["", "mean ± sample std; [lo, hi]: the 95 % t interval of the paired mean."]
  return "\n".join(lines) + "\n"


# The README's results table: its rows (task, metric, results file) and columns (methods).
README_ROWS = (
  (
    "CIFAR-10 ResNet-20, 2 epochs",
    "validation top-1 %",
    "benchmarks/results/accuracy_cifar10_resnet20_xeon.json",
  ),
  (
    "CIFAR-10 ResNet-20, 4 epochs",
    "validation top-1 %",
    "benchmarks/results/accuracy_cifar10_resnet20_4ep.json",
  ),
  (
    "video: small 3-D CNN, 6 epochs",
    "test clip top-1 %",
    "benchmarks/results/accuracy_video_default_xeon.json",
  ),
  (
    "detection: small RetinaNet, 12 epochs",
    "test COCO mAP %",
    "benchmarks/results/accuracy_detection_default_clip2_xeon.json",
  ),
)
README_METHODS = ("fp32", "daq", RECOMMENDED, "daq_sr_wgrad", "per_tensor")
README_BEGIN = "<!-- results table: python -m benchmarks.accuracy --readme-table -->"
README_END = "<!-- end of the results table -->"


def readme_table(root: pathlib.Path = REPO) -> str:
  """The results table: per task (row) and method (column), mean ± std over seeds and the
  difference to fp32 paired by seed with its 95 % interval, from the stored results."""
  head = "| task | " + " | ".join(
    f"**{m}** (recommended)" if m == RECOMMENDED else m for m in README_METHODS
  )
  lines = [head + " |", "|---|" + "---|" * len(README_METHODS)]
  for task, metric, path in README_ROWS:
    payload = json.loads((root / path).read_text())
    runs = payload["runs"]
    seeds = sorted({run["seed"] for run in runs.values()})
    table = tabulate(runs, method_order(runs), seeds)
    cells = []
    for method in README_METHODS:
      row = table.get(method)
      if not row or not row["seeds"]:
        cells.append("-")
        continue
      key = headline(runs[run_key(method, row["seeds"][0])])
      cell = f"{_pm(row[key], 100)} (n={len(row['seeds'])})"
      paired = row.get("vs_fp32")
      if paired and "ci95" in paired:
        lo, hi = (100 * x for x in paired["ci95"])
        cell += f"<br>{100 * paired['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
      cells.append(cell)
    machine = payload["machine"]["cpu"].replace("(R)", "")
    date = payload["date"][:10]
    lines.append(f"| {task}<br>{metric}; {machine}, {date} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
    "Mean ± std over seeds (n), and below it the mean difference to fp32 paired by seed "
    "[its 95 % t interval]. Files: " + ", ".join(f"`{p}`" for *_, p in README_ROWS) + "."
  )
  return "\n".join(lines)


def write_readme_table(readme: pathlib.Path) -> str:
  """README.md with the table between its markers replaced by `readme_table()`."""
  text = readme.read_text()
  if README_BEGIN not in text or README_END not in text:
    raise SystemExit(f"{readme} has no results-table markers ({README_BEGIN!r}, {README_END!r})")
  before, rest = text.split(README_BEGIN, 1)
  _, after = rest.split(README_END, 1)
  table = readme_table(readme.parent)
  readme.write_text(f"{before}{README_BEGIN}\n{table}\n{README_END}{after}")
  return table


def _refresh_losses(args, runs: dict) -> None:
  """The final train loss of every run whose workdir is still under --root, over the last
  LOSS_STEPS steps (runs recorded before that definition kept the last logged window's)."""
  for run in runs.values():
    records = train_records(workdir_of(args, run["method"], run["seed"]))
    if records and records[-1]["step"] == run.get("steps"):
      run["train_loss"] = final_train_loss(records)
      run["train_loss_steps"] = LOSS_STEPS


def _rewrite_table(out: pathlib.Path, payload: dict) -> None:
  """The table and markdown of a results file from its runs, its machine and command kept."""
  runs = payload["runs"]
  seeds = sorted({run["seed"] for run in runs.values()})
  _write(out, {**payload, "seeds": seeds, "table": tabulate(runs, method_order(runs), seeds)})


def method_order(runs: dict, given=()) -> list[str]:
  """Every method with a run (earlier invocations' methods stay in the table) and every one
  `given`, in the order of METHODS, then any other in the order given, then by name."""
  recorded = {run["method"] for run in runs.values()} | set(given)
  listed = [m for m in METHODS if m in recorded]
  return listed + [m for m in dict.fromkeys([*given, *sorted(recorded)]) if m not in listed]


def _write(out: pathlib.Path, payload: dict) -> None:
  """The results file, the markdown table beside it, and the table on stdout."""
  write_json(out, payload)
  table = markdown(payload)
  out.with_suffix(".md").write_text(table)
  print(table, flush=True)


if __name__ == "__main__":
  main()
