"""TensorBoard event files without TensorFlow: scalars as `Event` protos in TFRecord framing.

The format (tensorflow/core/util/event.proto, tensorflow/core/lib/io/record_writer): each
record is len (uint64 LE), masked CRC-32C of len, the bytes, masked CRC-32C of the bytes.
The first event holds the file version; every scalar is Event{wall_time, step,
summary{value{tag, simple_value}}}. `read_scalars` reads such files back (checking CRCs).
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, summary: bytes = b"", version: str = "") -> bytes:
  out = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
  if version:
    out += _field_bytes(3, version.encode())
  if summary:
    out += _field_bytes(5, summary)
  return out


def _scalar(tag: str, value: float) -> bytes:
  return _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))


class SummaryWriter:
  """Appends scalars to `<logdir>/events.out.tfevents.<time>.<host>`, flushed per call."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
    self._write(_event(0, version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    length = struct.pack("<Q", len(record))
    self._file.write(length + struct.pack("<I", _masked_crc(length)))
    self._file.write(record + struct.pack("<I", _masked_crc(record)))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    summary = b"".join(_scalar(tag, float(v)) for tag, v in values.items())
    self._write(_event(step, summary=summary))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _fields(data: bytes):
  """(field number, wire type, value) of a protobuf message."""
  i = 0
  while i < len(data):
    key, i = _read_varint(data, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _read_varint(data, i)
    elif wire == 1:
      value, i = data[i : i + 8], i + 8
    elif wire == 5:
      value, i = data[i : i + 4], i + 4
    elif wire == 2:
      size, i = _read_varint(data, i)
      value, i = data[i : i + size], i + size
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield number, wire, value


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[i]
    i += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, i


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an event file; raises on a corrupt record."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i : i + 8])
    if struct.unpack("<I", data[i + 8 : i + 12])[0] != _masked_crc(data[i : i + 8]):
      raise ValueError(f"{path}: bad length CRC at byte {i}")
    record = data[i + 12 : i + 12 + length]
    if struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] != _masked_crc(record):
      raise ValueError(f"{path}: bad data CRC at byte {i}")
    i += 16 + length
    fields = list(_fields(record))
    step = next((v for n, _, v in fields if n == 2), 0)
    for number, _, summary in fields:
      if number != 5:
        continue
      for _, _, value in _fields(summary):
        parts = {n: v for n, _, v in _fields(value)}
        out.append((step, parts[1].decode(), struct.unpack("<f", parts[2])[0]))
  return out
