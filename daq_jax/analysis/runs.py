"""Training runs side by side (the library side of `python -m daq_jax.compare`): what each
workdir's `config.json`, `summary.json` and `metrics.jsonl` say about its method, length,
accuracy and speed, and its learning curves."""

from __future__ import annotations

import json
import os

import numpy as np

from daq_jax.analysis import plots
from daq_jax.training.files import replace, write_json


def run_summary(workdir: str) -> dict:
  """One row of the comparison, with the curves; a one-line error if `workdir` is no run."""
  paths = {name: os.path.join(workdir, name) for name in ("config.json", "metrics.jsonl")}
  missing = [name for name, path in paths.items() if not os.path.isfile(path)]
  if missing:
    raise ValueError(f"{workdir} is not a train.py run: it has no {' or '.join(missing)}")
  with open(paths["config.json"]) as f:
    cfg = json.load(f)
  records = []
  with open(paths["metrics.jsonl"]) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue  # a partial last line of a killed run
  split = cfg.get("data", {}).get("eval_split", "test")
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if f"{split}/top1" in r]
  if not train:
    raise ValueError(f"{workdir} is not a train.py run with metrics: no training step logged")
  steps_per_epoch = train[-1]["step"] / train[-1]["train/epoch"] if train[-1]["train/epoch"] else 1
  seconds, previous = 0.0, 0
  for r in train:
    seconds += r["train/step_time_s"] * (r["step"] - previous)
    previous = r["step"]
  # The first window holds the compilation: leave it out of the speed.
  speeds = [r["train/images_per_s"] for r in train[1:]] or [train[0]["train/images_per_s"]]
  summary_path = os.path.join(workdir, "summary.json")
  summary = None
  if os.path.isfile(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  final = summary["eval_top1"] if summary else (evals[-1][f"{split}/top1"] if evals else None)
  return {
    "workdir": os.path.abspath(workdir),
    "label": os.path.basename(os.path.normpath(workdir)),
    "method": cfg.get("quant", {}).get("method"),
    "model": cfg.get("model", {}).get("name"),
    "seed": cfg.get("seed"),
    "eval_split": split,
    "steps": train[-1]["step"],
    "epochs": round(train[-1]["train/epoch"], 3),
    "finished": summary is not None,
    "final_top1": final,
    "best_top1": max((r[f"{split}/top1"] for r in evals), default=None),
    "train_seconds": round(seconds, 1),
    "images_per_s": round(float(np.median(speeds)), 1),
    "eval_curve": [(r["step"] / steps_per_epoch, r[f"{split}/top1"]) for r in evals],
    "loss_curve": [(r["train/epoch"], r["train/loss"]) for r in train],
  }


def markdown(rows: list[dict]) -> str:
  def pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"

  lines = [
    "| run | method | model | epochs | final top-1 | best top-1 | split | train time | images/s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    unfinished = "" if r["finished"] else " (unfinished)"
    lines.append(
      f"| {r['label']} | {r['method']} | {r['model']} | {r['epochs']:g}{unfinished} | "
      f"{pct(r['final_top1'])} | {pct(r['best_top1'])} | {r['eval_split']} | "
      f"{r['train_seconds']:.0f} s | {r['images_per_s']:.0f} |"
    )
  return "\n".join(lines) + "\n"


def compare(workdirs: list[str], out: str) -> list[dict]:
  """Writes `out/comparison.md`, `comparison.json` and `curves.png`; returns the rows."""
  if not workdirs:
    raise ValueError("compare needs at least one workdir")
  plots.pyplot()  # fail before reading anything if the figure cannot be drawn
  rows = [run_summary(w) for w in workdirs]
  os.makedirs(out, exist_ok=True)
  with replace(os.path.join(out, "comparison.md")) as f:
    f.write(markdown(rows))
  write_json(os.path.join(out, "comparison.json"), rows)
  plots.curves(rows, os.path.join(out, "curves.png"))
  return rows
