"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

import jax


def median_ms(fn: Callable, *args, repeats: int = 7, warmup: int = 2) -> float:
  """Median wall time of `fn(*args)` in milliseconds (compiled and warmed up first)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment(module: str) -> dict:
  """The machine, the versions and the command (`python -m module args`), for the results."""
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join(["python", "-m", module, *sys.argv[1:]]),
    "machine": {
      "platform": platform.platform(),
      "cpu": cpu_name(),
      "cpu_count": os.cpu_count(),
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
    },
    "python": platform.python_version(),
    "versions": versions,
  }


def write_json(path: str | os.PathLike, payload: dict) -> pathlib.Path:
  """Writes `payload` atomically (temp file + rename) and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2) + "\n")
  os.replace(tmp, path)
  return path
