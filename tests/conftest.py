"""Shared test set-up: JAX's persistent compilation cache, so that repeated runs (CI included)
compile each program once."""

import os
import pathlib

_CACHE = pathlib.Path(
  os.environ.get("DAQ_JAX_TEST_CACHE", pathlib.Path(__file__).parent.parent / ".jax_cache")
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
