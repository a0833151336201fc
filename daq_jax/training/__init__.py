"""The training loop: config dataclasses, optimizer, steps, checkpoints, metrics, parallelism."""

from daq_jax.training.checkpoint import CheckpointError, Checkpoints, SaveError
from daq_jax.training.config import (
  ModelConfig,
  OptimConfig,
  QuantSettings,
  TrainConfig,
  from_dict,
  to_dict,
)
from daq_jax.training.evaluation import evaluate_batches
from daq_jax.training.files import WriteError
from daq_jax.training.metrics import NonFiniteLossError
from daq_jax.training.optim import make_optimizer, scale_by_deviation, schedule
from daq_jax.training.stops import Stopped
from daq_jax.training.trainer import train_and_evaluate
from daq_jax.training.workdir import WorkdirError

__all__ = [
  "CheckpointError",
  "Checkpoints",
  "ModelConfig",
  "NonFiniteLossError",
  "OptimConfig",
  "QuantSettings",
  "SaveError",
  "Stopped",
  "TrainConfig",
  "WorkdirError",
  "WriteError",
  "evaluate_batches",
  "from_dict",
  "make_optimizer",
  "scale_by_deviation",
  "schedule",
  "to_dict",
  "train_and_evaluate",
]
