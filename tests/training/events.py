"""Reads TensorBoard event files (TFRecord framing, tensorboardX's Event protos) for tests."""

import os
import struct

from tensorboardX.proto import event_pb2


def _events(path: str):
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i : i + 8])
    yield event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
    i += 12 + length + 4  # length, its CRC, the record, its CRC


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an events file, in order."""
  return [(e.step, v.tag, v.simple_value) for e in _events(path) for v in e.summary.value]


def read_run_scalars(directory: str) -> list[tuple[int, str, float]]:
  """The scalars of every events file in a directory as TensorBoard shows them: a session
  START event at step P (a writer's purge_step) drops the earlier scalars at steps >= P."""
  out = []
  for name in sorted(os.listdir(directory)):  # events.out.tfevents.<time>.<host>
    for event in _events(os.path.join(directory, name)):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        out = [s for s in out if s[0] < event.step]
      out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return out
