"""Evaluates a trained workdir on any dataset the loaders read.

    python -m daq_jax.evaluate --workdir runs/r20                      # the run's eval split
    python -m daq_jax.evaluate --workdir runs/r20 --data_dir /data/cifar10_test_folder
    python -m daq_jax.evaluate --workdir runs/r20 --data_dir /data/cifar-10-batches-py
    python -m daq_jax.evaluate --workdir runs/r20 --quant_method fp32   # its float forward

`--data_dir` takes a CIFAR python-pickle directory (its test batch), an image folder with
`val/` or `test/` inside, or the class folders themselves; class folders are matched to the
model's classes by name. `--quant_method` evaluates the trained weights with another method's
forward pass (fp32: the float forward of an INT8-trained run; daq: the int8 forward of a
float-trained one). Prints top-1 (and top-5 for more than 10 classes) and writes them to
`<workdir>/eval-<name>.json` (`eval-<name>-<method>.json` with `--quant_method`). absl flags,
like train.py; the work is `daq_jax.training.evaluation.evaluate_workdir`.
"""

from __future__ import annotations

import sys

from absl import flags

from daq_jax import cli
from daq_jax.training.evaluation import describe_result, evaluate_workdir

__all__ = ["evaluate_workdir", "main"]

# Flags of their own (not absl's global FLAGS), so that importing this module next to
# train.py or another absl program defines nothing twice.
FLAGS = flags.FlagValues()
cli.define_run_flags(FLAGS, "Evaluation batch (default: the run's).")
flags.DEFINE_string(
  "data_dir", None, "Data to evaluate on (default: the run's).", flag_values=FLAGS
)
flags.DEFINE_string(
  "quant_method",
  None,
  "Evaluate with this method spec's forward pass instead of the run's (e.g. fp32, daq).",
  flag_values=FLAGS,
)
flags.DEFINE_alias("step", "restore_step", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  """Parses `argv` (default: the command line), evaluates, prints; returns the exit status."""
  parsed = cli.parse(FLAGS, "daq_jax.evaluate", __doc__, argv)
  if isinstance(parsed, int):
    return parsed
  try:
    result = evaluate_workdir(
      FLAGS.workdir,
      FLAGS.data_dir,
      FLAGS.batch_size,
      FLAGS.restore_step,
      report=lambda note: print(note, file=sys.stderr),
      quant_method=FLAGS.quant_method,
    )
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  method = f" with the {FLAGS.quant_method} forward" if FLAGS.quant_method else ""
  print(
    f"{FLAGS.workdir} step {result['step']} on {result['data']}{method}: {describe_result(result)}"
  )
  if result.get("written", "").startswith("not written"):
    print(f"warning: the result was {result['written']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
