"""Training runs side by side: method, model, epochs, final and best eval top-1, training time
and images/s, and the learning curves.

    python -m daq_jax.compare runs/r20_fp32 runs/r20_daq runs/r20_per_tensor --out cmp

Prints the table (markdown) and writes `<out>/comparison.md`, `comparison.json` and
`curves.png` (eval top-1 and train loss against epoch; needs matplotlib:
`pip install 'daq_jax[plots]'`).
"""

from __future__ import annotations

import sys

from absl import flags

from daq_jax import cli
from daq_jax.analysis.runs import compare, markdown

__all__ = ["main"]

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", "comparison", "Where the table and figure go.", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  """Parses `argv` (default: the command line), compares, prints; returns the exit status."""
  workdirs = cli.parse(FLAGS, "daq_jax.compare", __doc__, argv)
  if isinstance(workdirs, int):
    return workdirs
  if not workdirs:
    print(
      "error: name the run directories to compare: python -m daq_jax.compare DIR1 DIR2 ...",
      file=sys.stderr,
    )
    return 2
  try:
    rows = compare(workdirs, FLAGS.out)
  except (ValueError, OSError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(markdown(rows), end="")
  print(f"wrote {FLAGS.out}/comparison.md, comparison.json, curves.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
