"""Data parallelism with jax.sharding: one mesh axis `data`, the batch split over it, the
train state replicated. Across hosts, each process feeds its slice of the global batch and
`jax.make_array_from_process_local_data` assembles the global array (join the run first:
`daq_jax.training.launch`). What the processes of a run must agree on before they train (their
configs, the lock of the workdir) goes through `process_texts`, a gather over the processes."""

from __future__ import annotations

import json

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int, batch_size: int) -> Mesh:
  """A 1-D mesh over `num_devices` devices (0: all); the batch must split evenly over it."""
  available = jax.devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f"config num_devices={num_devices}, but there are {len(available)} devices")
  if num_devices and jax.process_count() > 1 and num_devices != len(available):
    raise ValueError("config num_devices must be 0 (all devices) in a multi-process run")
  devices = available[: num_devices or len(available)]
  if batch_size % len(devices):
    across = (
      f" ({jax.process_count()} processes of {jax.local_device_count()})"
      if jax.process_count() > 1
      else ""
    )
    raise ValueError(
      f"config batch_size={batch_size} is not divisible by the {len(devices)} devices{across} "
      f"({devices[0].platform}); pick a multiple of {len(devices)}"
      + ("" if across else " or set num_devices")
    )
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of a batch to the global array split over the `data` axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def is_main_process() -> bool:
  return jax.process_index() == 0


_gathers = 0  # how many process_texts calls this process made: the barriers' names


def process_texts(text: str) -> list[str]:
  """Every process's `text`, in process order; a collective that every process must call."""
  if jax.process_count() == 1:
    return [text]
  global _gathers
  _gathers += 1
  barrier(f"texts {_gathers}")  # a slow process (a long dataset scan) must not time gloo out
  data = np.frombuffer(text.encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(row[:size]).decode() for row, size in zip(rows, sizes, strict=True)]


def _flat(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def check_same(what: str, value: dict) -> None:
  """Refuses, on every process alike, a run whose processes differ in `value` (a config, a
  dataset record): one line naming the first process that differs from process 0 and the
  keys. A collective: every process must call it."""
  texts = process_texts(json.dumps(value, sort_keys=True))
  first = _flat(json.loads(texts[0]))
  for index, text in enumerate(texts[1:], start=1):
    if text == texts[0]:
      continue
    other = _flat(json.loads(text))
    keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
    shown = "; ".join(
      f"{k}: {first.get(k)!r} on process 0, {other.get(k)!r} on process {index}" for k in keys[:4]
    )
    more = f"; and {len(keys) - 4} more" if len(keys) > 4 else ""
    raise ValueError(
      f"process {index} was started with another {what} than process 0 ({shown}{more}): "
      "start every process with the same command"
    )


def from_process_zero(text: str) -> str:
  """Process 0's `text`, on every process; a collective that every process must call."""
  return process_texts(text)[0]


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process of the run has come here, through JAX's coordination service
  (no collective, so no gloo timeout); nothing with one process. `name`: unique per use."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client jax.distributed.initialize made

  distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


def compiled_together(fn, name: str):
  """`fn` (jitted) compiled at its first call, and run, with several processes, only once
  every process has compiled it. Gloo gives a process 30 s to join a collective that another
  one has entered (it is fixed in XLA's CPU collectives), and compiling the train step can
  take longer than that on one process than on another; they meet after compiling instead.
  One process: `fn` itself."""
  if jax.process_count() == 1:
    return fn
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      compiled = fn.lower(*args).compile()
      barrier(f"compiled {name}")
    return compiled(*args)

  return call
