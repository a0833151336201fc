"""A tiny training config (digits, the small CNN, a few steps) for the training tests."""

import copy

TINY = {
  "seed": 0,
  "model": {"name": "small_cnn"},
  "quant": {"method": "daq"},
  "data": {"name": "digits", "prefetch": 2},
  "optim": {"base_learning_rate": 0.1, "base_batch_size": 32, "warmup_epochs": 0.0},
  "batch_size": 32,
  "num_steps": 6,
  "log_every_steps": 2,
  "checkpoint_every_steps": 3,
  "keep_checkpoints": 5,
}


def tiny(**overrides) -> dict:
  """TINY with dotted-key overrides: tiny(**{"quant.method": "fp32"})."""
  cfg = copy.deepcopy(TINY)
  for dotted, value in overrides.items():
    *parents, key = dotted.split(".")
    node = cfg
    for p in parents:
      node = node.setdefault(p, {})
    node[key] = value
  return cfg
