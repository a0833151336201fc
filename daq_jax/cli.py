"""What the `python -m daq_jax.<command>` programs share: absl flags in a FlagValues of their
own (so that importing one next to train.py or another absl program defines nothing twice),
`--help` from the module docstring, and a flag error as one line with exit status 2."""

from __future__ import annotations

import sys

from absl import flags


def parse(flag_values: flags.FlagValues, program: str, doc: str, argv=None) -> list[str] | int:
  """Parses `argv` (default: the command line) into `flag_values`.

  Returns:
    The positional arguments, or the exit status to return at once (0 after printing the
    help, 2 after printing a flag error).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if {"-h", "--help", "--helpshort"} & set(argv):
    print(doc.split("\n\n")[0] + "\n\n" + flag_values.get_help())
    return 0
  flag_values.unparse_flags()
  try:
    return flag_values([program, *argv])[1:]
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def define_run_flags(flag_values: flags.FlagValues, batch_help: str) -> None:
  """The flags of a command on a trained run: --workdir (required), --batch_size,
  --restore_step."""
  flags.DEFINE_string("workdir", None, "A train.py workdir.", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 0, batch_help, lower_bound=0, flag_values=flag_values)
  flags.DEFINE_integer(
    "restore_step",
    None,
    "Checkpoint step (default: the newest intact one).",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.mark_flag_as_required("workdir", flag_values=flag_values)
