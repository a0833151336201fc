"""Where an INT8-trained network loses accuracy: in its int8 forward pass at inference, or in
the weights that quantized training reached. Evaluates finished runs twice, with their own
forward pass and with another method's (`daq_jax.evaluate --quant_method`), and tabulates the
change per method over seeds.

    python -m benchmarks.forward_swap --root runs/accuracy --methods fp32,daq,daq_sr_wgrad \
        --seeds 0,1,2 --out benchmarks/results/forward_swap.json

A run's workdir is ROOT/METHOD_seedSEED (the accuracy harness's layout). fp32 runs are scored
again with the `daq` forward (what int8 inference costs a float model), the others with the
float one (what their own int8 forward costs them). Evaluations are deterministic, so one
of each per run; runs already in --out are kept, so it can be run again as runs finish.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks.accuracy import mean_std, run_key
from benchmarks.common import environment, write_json
from daq_jax.training.evaluation import evaluate_workdir


def swapped(method: str) -> str:
  """The forward a run of `method` is scored with besides its own."""
  return "daq" if method == "fp32" else "fp32"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True, help="the accuracy harness's --root")
  parser.add_argument("--methods", default="fp32,daq")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", default="benchmarks/results/forward_swap.json")
  args = parser.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  seeds = [int(s) for s in args.seeds.split(",")]
  out = pathlib.Path(args.out)
  # Runs already scored in --out (the same workdir) are kept, not evaluated again.
  runs = json.loads(out.read_text())["runs"] if out.exists() else {}
  table = {}
  for method in methods:
    for seed in seeds:
      workdir = pathlib.Path(args.root) / f"{method}_seed{seed}"
      key = run_key(method, seed)
      if runs.get(key, {}).get("workdir") == str(workdir):
        continue
      if not (workdir / "summary.json").exists():
        print(f"{workdir}: not finished, left out", flush=True)
        continue
      own = evaluate_workdir(str(workdir), report=lambda note: None)
      other = evaluate_workdir(str(workdir), quant_method=swapped(method), report=lambda n: None)
      runs[key] = {
        "workdir": str(workdir),
        "own_top1": own["top1"],
        "other_forward": swapped(method),
        "other_top1": other["top1"],
        "own_loss": own["loss"],
        "other_loss": other["loss"],
      }
      print(
        f"{method} seed {seed}: own forward {100 * own['top1']:.2f}, "
        f"{swapped(method)} forward {100 * other['top1']:.2f}",
        flush=True,
      )
    done = [runs[run_key(method, s)] for s in seeds if run_key(method, s) in runs]
    changes = [run["other_top1"] - run["own_top1"] for run in done]
    if changes:
      table[method] = {"other_forward": swapped(method), "change": mean_std(changes)}
  payload = {**environment("benchmarks.forward_swap"), "table": table, "runs": runs}
  write_json(out, payload)
  for method, row in table.items():
    change = row["change"]
    spread = "" if change["std"] is None else f" ± {100 * change['std']:.2f}"
    print(
      f"{method}: top-1 with the {row['other_forward']} forward minus its own: "
      f"{100 * change['mean']:+.2f}{spread} points over {change['n']} seed(s)"
    )


if __name__ == "__main__":
  main()
