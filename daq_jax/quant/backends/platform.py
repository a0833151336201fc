"""The platform a program is being traced for: what `impl="auto"` and the Pallas kernels
decide by, at trace time.

It is the platform of the abstract device in scope, when an abstract mesh names one (how a
program is lowered for a GPU on a machine without one: `daq_jax.pallas.ptx.lower_for_cuda`),
and otherwise JAX's default backend, with "gpu" spelled "cuda" or "rocm".
"""

from __future__ import annotations

import jax


def _normal(name: str) -> str:
  name = name.lower()
  if name != "gpu":
    return name
  try:
    version = jax.devices("gpu")[0].client.platform_version.lower()
  except (RuntimeError, AttributeError, IndexError):
    return "cuda"
  return "rocm" if "rocm" in version else "cuda"


def target_platform() -> str:
  """ "cpu", "cuda", "rocm", "tpu", ...: the platform this trace is for."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  if device is not None and getattr(device, "platform", None):
    return _normal(device.platform)
  return _normal(jax.default_backend())
