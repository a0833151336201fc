"""Shared test set-up: JAX's persistent compilation cache, so that repeated runs (CI included)
compile each program once.

The cache lives outside the checkout (~/.cache/daq_jax/jax_test_cache, or $DAQ_JAX_TEST_CACHE)
so that a fresh clone on the same machine reuses it. Every compilation is cached, the many
small eager ones of the tests included (the suite's times, cold and warm: docs/speed.md).
"""

import os
import pathlib

# With JAX's CUDA plugin installed (the `ptx` extra) and no GPU, JAX would probe for one and
# log a CUDA error at start-up: on a machine without NVIDIA's device files, ask for the CPU.
if "JAX_PLATFORMS" not in os.environ and not os.path.exists("/dev/nvidiactl"):
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax

_DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "daq_jax" / "jax_test_cache"
_CACHE = {
  "jax_compilation_cache_dir": os.environ.get("DAQ_JAX_TEST_CACHE", str(_DEFAULT_CACHE)),
  "jax_persistent_cache_min_compile_time_secs": 0,
  "jax_persistent_cache_min_entry_size_bytes": 0,
}
for _name, _value in _CACHE.items():
  jax.config.update(_name, _value)
  # The subprocesses of the tests (train.py, the benchmark scripts) read JAX's options from
  # the environment: they share the cache.
  os.environ.setdefault(_name.upper(), str(_value))
