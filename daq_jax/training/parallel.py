"""Data parallelism with jax.sharding: one mesh axis `data`, the batch split over it, the
train state replicated. Across hosts, each process feeds its slice of the global batch and
`jax.make_array_from_process_local_data` assembles the global array (join the run first:
`daq_jax.training.launch`)."""

from __future__ import annotations

import jax
import numpy as np
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
    raise ValueError(
      f"config batch_size={batch_size} is not divisible by the {len(devices)} devices "
      f"({devices[0].platform}); pick a multiple of {len(devices)} or set num_devices"
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
