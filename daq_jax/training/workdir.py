"""The workdir of a run: one writer at a time, and a record that a resume is checked against.

A workdir holds one run. `prepare` checks that it can be one (a writable directory, no file
where `checkpoints/` goes); `RunLock` keeps a second process out while a run is in it; and
`check_record` compares the run recorded there (`config.json`, `dataset.json`) with the run
about to start, before anything is written. A workdir without a checkpoint holds no run yet:
whatever a failed start left there is replaced.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from daq_jax.data.info import DatasetInfo
from daq_jax.training import files

LOCK_FILE = "run.lock"

# Config keys that define what a checkpoint holds and which batches a step sees: a resumed run
# must agree on them with the run that wrote the checkpoints (`memory` is not one: both modes
# compute the same numbers).
RESUME_KEYS = (
  "seed",
  "model",
  # Every quant setting but impl: the implementations give the same int8 values, so a run
  # may resume on another one (a CPU run on a GPU, say).
  "quant.method",
  "quant.quantize_first_conv",
  "quant.quantize_last_dense",
  "quant.rules",
  "batch_size",
  "data.name",
  "data.image_size",
  "data.val_fraction",
)
# The data a run was trained on (DatasetInfo fields), checked the same way.
DATA_KEYS = ("dir", "class_names", "image_shape", "train_examples", "eval_examples")


class WorkdirError(ValueError):
  """The workdir cannot hold this run; the message is one line naming the path and the fix."""


def read_json(path: str):
  """The JSON at `path`, or None if there is none; a one-line error if it is unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} cannot be read: {e}") from None


def prepare(workdir: str) -> str:
  """The absolute workdir, created if needed; a one-line error if it cannot hold a run."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} cannot be created: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {workdir} is not writable")
  for name in ("checkpoints", "tensorboard"):
    path = os.path.join(workdir, name)
    if os.path.exists(path) and not os.path.isdir(path):
      raise WorkdirError(f"{path} is a file; the run needs a directory there: move it away")
  return workdir


def _holder(text: str) -> str:
  try:
    info = json.loads(text)
    return f"pid {info['pid']} on {info['host']} (since {info['started']})"
  except (ValueError, KeyError, TypeError):
    return "another process"


class RunLock:
  """An exclusive lock on a workdir (`flock` on `<workdir>/run.lock`), held for the run.

  The kernel drops the lock when its process dies, however it dies, so a lock left by a killed
  run is free: it is taken over, and `stale` names the run that left it. The file records the
  holder (pid, host, start time, command) for the error a second process gets.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    try:
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"workdir {workdir} is not writable: {self.path}: {e.strerror}") from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(os.pread(self._fd, 4096, 0).decode(errors="replace"))
      os.close(self._fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(f"workdir {workdir} cannot be locked: {e.strerror}") from None
      raise WorkdirError(
        f"workdir {workdir} is in use by {holder}: wait for that run to end, or use another "
        "--workdir"
      ) from None
    previous = os.pread(self._fd, 4096, 0).decode(errors="replace").strip()
    self.stale = _holder(previous) if previous else None
    me = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": time.strftime("%Y-%m-%d %H:%M:%S"),
      "command": " ".join(sys.argv),
    }
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps(me).encode(), 0)
    except OSError as e:
      self.release()
      raise files.write_failed(
        self.path, e, "; nothing was started or changed: free space and run the same command"
      ) from None

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # an empty lock file: the run ended cleanly
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _lookup(d: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return None
    d = d[part]
  return d


def _normal(value):
  return json.loads(json.dumps(value))


def check_record(workdir: str, config: dict, info: DatasetInfo) -> None:
  """Refuses, in one line naming every differing field, a run that is not the recorded one.

  Called only when the workdir holds a checkpoint; writes nothing.
  """
  saved_config = read_json(os.path.join(workdir, "config.json"))
  saved_data = read_json(os.path.join(workdir, "dataset.json"))
  if saved_config is None or saved_data is None:
    raise WorkdirError(
      f"workdir {workdir} has checkpoints but no config.json or dataset.json, so its run cannot "
      "be checked: use another --workdir"
    )
  now_config, now_data = _normal(config), _normal(info.to_json())
  differ = [
    (key, _lookup(saved_config, key), _lookup(now_config, key))
    for key in RESUME_KEYS
    if _lookup(saved_config, key) != _lookup(now_config, key)
  ]
  differ += [
    (f"data {key}", saved_data[key], now_data[key])
    for key in DATA_KEYS
    if key in saved_data and saved_data[key] != now_data[key]
  ]
  if differ:
    what = "; ".join(f"{key}={old!r}, not {new!r}" for key, old, new in differ)
    raise WorkdirError(
      f"workdir {workdir} holds another run ({what}): use another --workdir, or the same config "
      "and data to resume"
    )
