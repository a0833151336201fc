"""The gradients of a trained run, layer by layer, under every quantization method.

    python -m daq_jax.analyze --workdir runs/default
    python -m daq_jax.analyze --workdir runs/r20 --batches 4 --methods daq,per_tensor,gvq

Restores the run's checkpoint, takes --batches training batches, captures the gradient at
every quantized layer's output and writes `<workdir>/analysis/`: per-layer histograms of the
most bell-shaped and most inverted-T channel with each method's clip values (the DAQ paper's
Fig. 1), r_c against λ, the inverted-T share, clip/max, each method's error on g, dW and dX,
`analysis.json` and `summary.md`. The figures need matplotlib (`pip install 'daq_jax[plots]'`).
The work is `daq_jax.analysis.report.analyze_workdir`.
"""

from __future__ import annotations

import sys

from absl import flags

from daq_jax import cli
from daq_jax.analysis.report import METHODS, analyze_workdir

__all__ = ["main"]

FLAGS = flags.FlagValues()
cli.define_run_flags(FLAGS, "Batch size (default: the run's).")
flags.DEFINE_integer("batches", 2, "Training batches to analyze.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_list("methods", list(METHODS), "Methods to compare.", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  """Parses `argv` (default: the command line), analyzes, prints; returns the exit status."""
  parsed = cli.parse(FLAGS, "daq_jax.analyze", __doc__, argv)
  if isinstance(parsed, int):
    return parsed
  say = lambda note: print(note, file=sys.stderr)
  try:
    result = analyze_workdir(
      FLAGS.workdir, FLAGS.batches, FLAGS.methods, FLAGS.batch_size, FLAGS.restore_step, say
    )
  except (ValueError, OSError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for key, value in result["comparison"].items():
    print(f"{key}: {len(value['layers'])} of {value['of']} layers")
  print(
    f"wrote {FLAGS.workdir}/analysis/ (summary.md, analysis.json, {len(result['layers'])} "
    "histograms, distributions.png, errors.png)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
