"""Checkpoints with Orbax: atomic, periodic and final, keeping the last N.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-
write leaves the previous checkpoints intact and no half-written step is ever restored. A
checkpoint holds the whole `TrainState` (parameters, optimizer state, BN statistics,
quantization state, step, PRNG key); the data position is the step itself, because the batch
order is a function of (seed, step) (daq_jax.data.loader).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The checkpoints of one workdir (`<workdir>/checkpoints/<step>`)."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, target, step: int | None = None):
    """The checkpoint at `step` (default: the latest), shaped and sharded like `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory}; there are {self.all_steps()}"
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
      raise ValueError(
        f"checkpoint {self.directory}/{step} does not match this model and config: {e}"
      ) from e

  def close(self) -> None:
    self._manager.close()
