"""GPU check, stage `env`: the machine and versions; what impl="auto" picks there for a
plain, a strided, a grouped conv and a dense layer; and whether each implementation
(`record.IMPLS` and auto) compiles one small conv layer's forward and backward passes and
matches `simulate` (the float oracle)."""

from __future__ import annotations

import functools
import subprocess
import time
import traceback

import numpy as np

from benchmarks.gpu.record import IMPLS, Recorder, error


def run(rec: Recorder, smoke: bool) -> None:
  import jax
  import jax.numpy as jnp

  from daq_jax import quant
  from daq_jax.quant import backends, gradient
  from daq_jax.quant.geometry import make_spec

  rec.set("devices", [str(d) for d in jax.devices()])
  rec.set("platform", backends.target_platform())
  try:
    smi = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
      capture_output=True,
      text=True,
      timeout=20,
      check=False,
    )
    rec.set("nvidia_smi", smi.stdout.strip() or smi.stderr.strip())
  except (OSError, subprocess.TimeoutExpired) as e:
    rec.set("nvidia_smi", error(e))
  n, hw, c = (2, 8, 8) if smoke else (8, 16, 32)
  cases = {
    "plain 3x3": ((n, hw, hw, c), (3, 3, c, 2 * c), dict(padding="SAME")),
    "strided 3x3 /2": ((n, hw, hw, c), (3, 3, c, 2 * c), dict(padding="SAME", window_strides=2)),
    "grouped 3x3 (4)": (
      (n, hw, hw, c),
      (3, 3, c // 4, 2 * c),
      dict(padding="SAME", feature_group_count=4),
    ),
  }
  plans = {}
  for name, (lhs, rhs, kw) in cases.items():
    spec = make_spec(lhs, rhs, **kw)
    for method in ("daq", "daq_sr_rows"):  # auto's pick by the cost model, at bf16
      try:
        chosen = backends.plan(quant.preset(method), spec, shapes=(lhs, rhs), dtype="bfloat16")
        plans[f"{name}, {method}"] = chosen.names
      except ValueError as e:
        plans[f"{name}, {method}"] = error(e)
  plans["dense"] = backends.plan(quant.daq(), None).names
  rec.set("auto_plan", plans)
  if smoke:  # the plan of each case above, the numbers of one
    cases = {"plain 3x3": cases["plain 3x3"]}

  keys = jax.random.split(jax.random.key(0), 3)
  for name, (lhs, rhs, kw) in cases.items():
    x = jax.random.normal(keys[0], lhs)
    w = 0.1 * jax.random.normal(keys[1], rhs)

    def layer(cfg, x, w, kw=kw):
      state = gradient.init_state(cfg, w.shape[-1])

      def loss(x, w, s):
        y = quant.conv_general(x, w, s, cfg=cfg, **kw)
        return jnp.sum(y * y), y

      (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, w, state)
      return y, grads[0], grads[1], grads[2]["wgrad_clip"]

    want = jax.jit(functools.partial(layer, quant.daq(impl="simulate")))(x, w)
    for impl in (*IMPLS, "auto"):
      row = {"case": name, "impl": impl}
      try:
        start = time.perf_counter()
        got = jax.block_until_ready(jax.jit(functools.partial(layer, quant.daq(impl=impl)))(x, w))
        row["compile_and_run_s"] = round(time.perf_counter() - start, 2)
        for label, a, b in zip(("forward", "dgrad", "wgrad", "state"), got, want, strict=True):
          a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
          row[f"{label}_rel_err"] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
      except Exception as e:
        traceback.print_exc()
        row["error"] = error(e)
      rec.row(**row)
