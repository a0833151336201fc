"""The example scripts docs/models.md and the README walk through keep running: each one, end
to end, in a fresh process (the two "your own model" ones on 2 host CPU devices), says what it
promises (the loss goes down, the quantizer state moved, every quantized product int8)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the scripts ask for their host devices themselves
  proc = subprocess.run(
    [sys.executable, f"examples/{script}", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _losses(out: str) -> tuple[float, float]:
  first, last = re.search(r"loss (\d+\.\d+) -> (\d+\.\d+)", out).groups()
  return float(first), float(last)


@pytest.mark.slow
def test_your_linen_model_trains_under_pmap_and_its_state_moves_on_every_device():
  out = _run("your_model_linen.py", "--steps", "12")
  first, last = _losses(out)
  assert last < first, out
  assert "clip state moved: True, the same on every device: True" in out


@pytest.mark.slow
def test_your_nnx_model_trains_sharded_and_its_step_is_int8():
  out = _run("your_model_nnx.py", "--steps", "12")
  first, last = _losses(out)
  assert last < first, out
  assert "clip state moved: True" in out
  assert "conv: forward xla int8, dgrad im2col int8, wgrad xla int8" in out
  assert "head: forward xla int8, dgrad xla int8, wgrad xla int8" in out
