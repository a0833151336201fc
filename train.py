"""Trains a model with INT8 (DAQ) or float layers; the logic lives in daq_jax.training.

    python train.py                                   # configs/default.py: digits, under a minute
    python train.py --config configs/cifar10_resnet20.py --workdir runs/r20 \
        --config.data.dir=../shared/data/cifar10/train --config.quant.method=fp32

Every config key can be overridden (`--config.optim.base_learning_rate=0.05`); a misspelt key
is an error. Run again with the same --workdir to resume from its newest intact checkpoint
(`--restore_step N` picks another); SIGTERM and Ctrl-C save a checkpoint before they stop it.
Several processes (hosts) run one training with `--coordinator_address`, `--num_processes` and
`--process_id` (daq_jax.training.launch; docs/training.md).
"""

import os
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from daq_jax.training import NonFiniteLossError, launch, train_and_evaluate
from daq_jax.training.stops import Stopped

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (default runs/<config>).")
flags.DEFINE_integer(
  "restore_step",
  None,
  "Resume from this checkpoint step (default: the newest intact one); later steps are moved "
  "to <workdir>/checkpoints_aside.",
  lower_bound=0,
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs: host:port of process 0 (default $DAQ_JAX_COORDINATOR_ADDRESS).",
)
flags.DEFINE_integer(
  "num_processes", None, "Multi-process runs: how many processes ($DAQ_JAX_NUM_PROCESSES)."
)
flags.DEFINE_integer(
  "process_id", None, "Multi-process runs: this process's index ($DAQ_JAX_PROCESS_ID)."
)
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)


def _flag_error(e: Exception):
  message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
  if isinstance(e, (KeyError, AttributeError)):
    message = f"unknown config key {message}"
  sys.exit(f"error: bad command line {sys.argv[1:]}: {message}")


try:  # ml_collections reads the --config.* overrides already here
  config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "A configs/*.py file.", lock_config=True
  )
except _FLAG_ERRORS as e:
  _flag_error(e)


def _parse_flags(argv):
  """absl's parser, with config override errors (a misspelt key) as one clear line."""
  try:
    return FLAGS(argv)
  except _FLAG_ERRORS as e:
    _flag_error(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
  config_file = FLAGS["config"].config_filename
  workdir = FLAGS.workdir or os.path.join(
    "runs", os.path.splitext(os.path.basename(config_file))[0]
  )
  try:
    joining = launch.from_args(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    watchdog = None
    if joining is not None:
      watchdog = launch.join(joining, lost=lambda reason: _lost_the_run(reason, workdir))
  except ValueError as e:
    sys.exit(f"error: {e}")
  try:
    _train(config_file, workdir)
  finally:  # leaving on purpose (an error of its own is one too): the others stop watching
    if watchdog is not None:
      watchdog.done()


def _train(config_file: str, workdir: str):
  try:
    config = FLAGS.config.to_dict()
  except OSError as e:  # ml_collections defers a failed config load to the first access
    sys.exit(f"error: --config={config_file} cannot be loaded: {e}")
  try:
    train_and_evaluate(config, workdir, restore_step=FLAGS.restore_step)
  except Stopped as e:  # a signal: the checkpoint is saved and the message printed
    for signum in (signal.SIGINT, signal.SIGTERM):  # a late second one: no traceback on exit
      signal.signal(signum, signal.SIG_IGN)
    sys.exit(e.exit_status)
  except (ValueError, OSError, NonFiniteLossError) as e:
    sys.exit(f"error: {e}")
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    _lost_the_run(f"a collective with the other processes failed ({first})", workdir)


def _lost_the_run(reason: str, workdir: str):
  """Another process ended (killed, or its host lost) or stopped answering: a collective
  failed, or (from the watchdog's thread) its heartbeat stopped. `launch.lost_the_run`'s one
  line with how to resume, then out at once (checkpoints are whole or not there): JAX's own
  shutdown would wait for the lost process and then end this one with pages of its log."""
  launch.lost_the_run(
    f"{reason}; start every process again with the same command to resume from the newest "
    f"checkpoint in {os.path.abspath(workdir)}/checkpoints"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
