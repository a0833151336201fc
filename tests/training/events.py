"""Reads TensorBoard event files (TFRecord framing, tensorboardX's Event protos) for tests."""

import struct

from tensorboardX.proto import event_pb2


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an events file, in order."""
  with open(path, "rb") as f:
    data = f.read()
  out, i = [], 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i : i + 8])
    event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
    i += 12 + length + 4  # length, its CRC, the record, its CRC
    for value in event.summary.value:
      out.append((event.step, value.tag, value.simple_value))
  return out
