"""The training loop: config dataclasses, optimizer, steps, checkpoints, metrics, parallelism."""

from daq_jax.training.checkpoint import Checkpoints
from daq_jax.training.config import (
  ModelConfig,
  OptimConfig,
  QuantSettings,
  TrainConfig,
  from_dict,
  to_dict,
)
from daq_jax.training.optim import make_optimizer, scale_by_deviation, schedule
from daq_jax.training.trainer import NonFiniteLossError, evaluate, train_and_evaluate

__all__ = [
  "Checkpoints",
  "ModelConfig",
  "NonFiniteLossError",
  "OptimConfig",
  "QuantSettings",
  "TrainConfig",
  "evaluate",
  "from_dict",
  "make_optimizer",
  "scale_by_deviation",
  "schedule",
  "to_dict",
  "train_and_evaluate",
]
