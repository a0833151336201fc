"""Where a run starts: afresh, or from the newest intact (or a chosen) checkpoint of its
workdir, with what that means for the steps after it and for a run that already ended."""

from __future__ import annotations

import dataclasses
import os

from daq_jax.training import checkpoint
from daq_jax.training.workdir import read_json


@dataclasses.dataclass
class Start:
  """The state a run starts from, and what the start found.

  Attributes:
    state: the restored state, or the fresh one.
    resumed: whether it came from a checkpoint.
    notes: lines for the user (a damaged step moved aside, later steps superseded, where
      the run resumed from).
    complete: the run's summary when it had already ended (its final evaluation written),
      else None.
    redo_final_eval: the run had trained every step but its final evaluation was not
      written: its record is replaced by the one done now.
  """

  state: object
  resumed: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)
  complete: dict | None = None
  redo_final_eval: bool = False


def start(
  ckpts: checkpoint.Checkpoints,
  fresh_state,
  num_steps: int,
  restore_step: int | None = None,
) -> Start:
  """Restores the run in `ckpts`' workdir, or starts it afresh.

  Without checkpoints the fresh state is used. Otherwise the chosen step (or the newest
  intact one: a damaged step is moved aside) is restored, and any step after it is moved
  aside as superseded, so the record keeps one timeline. A run restored at its last step is
  complete if its summary is written, or else its final evaluation is to be redone.
  """
  if not ckpts.all_steps():
    return Start(fresh_state)
  notes: list[str] = []
  state = ckpts.restore(fresh_state, restore_step, report=notes.append)
  restored = int(state.step)
  for later in [s for s in ckpts.all_steps() if s > restored]:
    notes.append(f"step {later} moved to {ckpts.set_aside(later, 'superseded')}")
  notes.append(f"resumed from {ckpts.step_dir(restored)}")
  if restored < num_steps:
    return Start(state, resumed=True, notes=notes)
  summary = read_json(os.path.join(ckpts.workdir, "summary.json"))
  if summary and summary.get("step") == num_steps:
    return Start(state, resumed=True, notes=notes, complete=summary)
  return Start(state, resumed=True, notes=notes, redo_final_eval=True)
