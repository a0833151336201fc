"""GPU check, stage `contractions`: at ResNet-50's conv shapes (batch 128), forward, dgrad and
wgrad timed apart for each implementation (int8 operands ready), against XLA's bf16 and
float32 convs; the gradient quantizer (jnp vs Pallas, nearest rounding (daq) and stochastic
rounding on both paths (daq_sr)); the GEMM at the forward's implicit-GEMM shape (Pallas int8
vs XLA int8 vs bf16 vs float32)."""

from __future__ import annotations

import functools

import numpy as np

from benchmarks.gpu.record import IMPLS, Recorder, error, measure

# (name, batch, spatial, C_in, C_out, kernel, stride): ResNet-50's 3x3 convs at batch 128,
# and its widest 1x1.
RESNET50_CONVS = [
  ("l1 3x3 64->64 @56", 128, 56, 64, 64, 3, 1),
  ("l2 3x3 128->128 @28", 128, 28, 128, 128, 3, 1),
  ("l3 3x3 256->256 @14", 128, 14, 256, 256, 3, 1),
  ("l4 3x3 512->512 @7", 128, 7, 512, 512, 3, 1),
  ("l2 3x3 128->128 /2 @56", 128, 56, 128, 128, 3, 2),
  ("l4 1x1 512->2048 @7", 128, 7, 512, 2048, 1, 1),
]
SMOKE_CONVS = [("smoke 3x3 8->16 @8", 2, 8, 8, 16, 3, 1)]


def run(rec: Recorder, smoke: bool, repeats: int) -> None:
  import jax
  import jax.numpy as jnp

  from daq_jax import quant
  from daq_jax.quant import backends, gradient, numerics
  from daq_jax.quant.geometry import make_spec

  platform = backends.target_platform()
  for name, batch, size, c_in, c_out, ksize, stride in SMOKE_CONVS if smoke else RESNET50_CONVS:
    keys = jax.random.split(jax.random.key(1), 3)
    lhs_shape, rhs_shape = (batch, size, size, c_in), (ksize, ksize, c_in, c_out)
    x = jax.random.normal(keys[0], lhs_shape)
    w = 0.05 * jax.random.normal(keys[1], rhs_shape)
    spec = make_spec(lhs_shape, rhs_shape, padding="SAME", window_strides=stride)
    y_shape = jax.eval_shape(spec.float_conv, x, w).shape
    g = jax.random.laplace(keys[2], y_shape)
    base = {"shape": name}

    for dtype, label in ((jnp.bfloat16, "xla_bf16"), (jnp.float32, "xla_f32")):
      xs, ws, gs = x.astype(dtype), w.astype(dtype), g.astype(dtype)
      fns = _float_contractions(spec, x.shape, w.shape, dtype)
      operands = {"forward": (xs, ws), "dgrad": (ws, gs), "wgrad": (xs, gs)}
      for contraction, fn in fns.items():
        rec.row(
          **base,
          contraction=contraction,
          impl=label,
          **measure(jax.jit(fn), *operands[contraction], repeats=repeats),
        )

    cfg = quant.daq()
    xq = numerics.QTensor.of(x, numerics.max_abs(x))
    wq = numerics.QTensor.of(w, numerics.max_abs(w))
    gq = gradient.quantize_gradient(g, gradient.init_state(cfg, c_out), cfg)
    for impl in IMPLS:
      row = {**base, "impl": impl}
      try:
        b = backends.get(impl)
        fns = _int8_contractions(b, spec, x, w, xq, wq, gq)
      except Exception as e:
        rec.row(**row, contraction="all", error=error(e))
        continue
      for contraction, (fn, args) in fns.items():
        reason = b.unsupported(contraction, spec, platform)
        if reason:
          rec.row(**row, contraction=contraction, error=f"unsupported: {reason}")
          continue
        rec.row(**row, contraction=contraction, **measure(jax.jit(fn), *args, repeats=repeats))

    # The quantizer with nearest rounding (daq) and with stochastic rounding on both paths
    # (daq_sr: counter-based bits drawn in the kernel), jnp and Pallas.
    state = gradient.init_state(cfg, c_out)
    key = jax.random.key(0)
    for method in ("daq", "daq_sr"):
      mcfg = quant.preset(method)
      for impl in ("jnp", "pallas"):
        if impl == "jnp":
          fn = functools.partial(gradient.quantize_gradient, cfg=mcfg)
        else:
          fn = functools.partial(backends.get("pallas").quantize_gradient, cfg=mcfg)
        rec.row(
          **base,
          contraction="gradient quantizer",
          impl=impl,
          method=method,
          **measure(
            jax.jit(lambda g, s, k, fn=fn: fn(g, s, key=k)), g, state, key, repeats=repeats
          ),
        )

    # The forward's implicit GEMM: (N*H*W, k*k*C_in) x (k*k*C_in, C_out).
    m, k = int(np.prod(y_shape[:-1])), ksize * ksize * c_in
    a = jax.random.randint(keys[0], (m, k), -127, 128).astype(jnp.int8)
    bt = jax.random.randint(keys[1], (c_out, k), -127, 128).astype(jnp.int8)
    ones_m, ones_n = jnp.ones((m,)), jnp.ones((c_out,))
    gemms = {
      "pallas_int8": (
        lambda a, bt, r, c: backends.get("pallas").int8_gemm_nt(a, bt, r, c),
        (a, bt, ones_m, ones_n),
      ),
      "xla_int8": (
        lambda a, bt, r, c: backends.get("im2col").int8_gemm_nt(a, bt, r, c),
        (a, bt, ones_m, ones_n),
      ),
      "xla_bf16": (
        lambda a, bt: jnp.dot(a, bt.T, preferred_element_type=jnp.float32),
        (a.astype(jnp.bfloat16), bt.astype(jnp.bfloat16)),
      ),
      "xla_f32": (lambda a, bt: a @ bt.T, (a.astype(jnp.float32), bt.astype(jnp.float32))),
    }
    for impl, (fn, args) in gemms.items():
      row = rec.row(
        **base,
        contraction="gemm",
        impl=impl,
        mkn=(m, k, c_out),
        **measure(jax.jit(fn), *args, repeats=repeats),
      )
      if "ms" in row:
        row["tops"] = 2.0 * m * k * c_out / (row["ms"] * 1e-3) / 1e12
        rec.save()
  rec.set("summary", summarize_contractions(rec.data["rows"]))


def _float_contractions(spec, lhs_shape, rhs_shape, dtype) -> dict:
  """XLA's forward conv, input gradient and weight gradient, one function each."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  def conv(a, b):
    return lax.conv_general_dilated(
      a, b, spec.window_strides, spec.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def dgrad(b, g):
    return jax.vjp(lambda a: conv(a, b), jnp.zeros(lhs_shape, dtype))[1](g)[0]

  def wgrad(a, g):
    return jax.vjp(lambda b: conv(a, b), jnp.zeros(rhs_shape, dtype))[1](g)[0]

  return {"forward": conv, "dgrad": dgrad, "wgrad": wgrad}


def _int8_contractions(backend, spec, x, w, xq, wq, gq) -> dict:
  """contraction -> (function, operands) of one implementation, its residuals made ahead."""
  kernel = backend.conv_keep_kernel(w, wq, spec)
  inputs = backend.conv_keep_input(x, xq, spec)
  shapes = (x.shape, w.shape)
  return {
    "forward": (lambda xq, wq: backend.conv_forward(xq, wq, spec), (xq, wq)),
    "dgrad": (lambda d, k: backend.conv_dgrad(d, k, *shapes, spec), (gq.dgrad, kernel)),
    "wgrad": (lambda i, q: backend.conv_wgrad(i, q, *shapes, spec), (inputs, gq.wgrad)),
  }


def summarize_contractions(rows: list[dict]) -> dict:
  """Per shape and contraction: each int8 implementation's speed-up over XLA's bf16."""
  out: dict = {}
  for row in rows:
    if "ms" not in row:
      continue
    out.setdefault(row["shape"], {}).setdefault(row["contraction"], {})[row["impl"]] = row["ms"]
  summary = {}
  for shape, per in out.items():
    for contraction, times in per.items():
      bf16 = times.get("xla_bf16")
      if bf16:
        summary[f"{shape} | {contraction}"] = {
          impl: round(bf16 / ms, 3) for impl, ms in times.items() if impl != "xla_bf16"
        }
  return summary
