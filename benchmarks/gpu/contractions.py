"""GPU check, stage `contractions`: at ResNet-50's conv shapes (batch 128), the shapes where the
roofline model predicts the implicit-GEMM kernels' largest win over bf16 first, forward, dgrad
and wgrad timed apart for each implementation (int8 operands ready, or float g for the
implementations that quantize it on load; bf16 outputs), against XLA's bf16 and float32
convs, each beside the model's prediction (`cost.contraction`, H100 SXM peaks: on an H200 the
bandwidth-bound ones run faster than predicted); the gradient quantizer (jnp vs Pallas,
nearest rounding (daq) and stochastic rounding on both paths (daq_sr)); the GEMM at the
forward's implicit-GEMM shape (Pallas int8 vs XLA int8 vs bf16 vs float32). The summary
prints measured against predicted."""

from __future__ import annotations

import functools

import numpy as np

from benchmarks.gpu.record import IMPLS, Recorder, error, measure

# (name, batch, spatial, C_in, C_out, kernel, stride): ResNet-50's 3x3 convs at batch 128,
# and two 1x1s; the stage runs them in the order of the implicit kernels' predicted win over
# bf16 (`predicted_order`).
RESNET50_CONVS = [
  ("l1 3x3 64->64 @56", 128, 56, 64, 64, 3, 1),
  ("l2 3x3 128->128 @28", 128, 28, 128, 128, 3, 1),
  ("l3 3x3 256->256 @14", 128, 14, 256, 256, 3, 1),
  ("l4 3x3 512->512 @7", 128, 7, 512, 512, 3, 1),
  ("l2 3x3 128->128 /2 @56", 128, 56, 128, 128, 3, 2),
  ("l1 1x1 64->256 @56", 128, 56, 64, 256, 1, 1),
  ("l4 1x1 512->2048 @7", 128, 7, 512, 2048, 1, 1),
]
METHOD = "daq_sr_rows"  # the recommended method: stochastic rounding, per-row dgrad scales
SMOKE_CONVS = [("smoke 3x3 8->16 @8", 2, 8, 8, 16, 3, 1)]


def run(rec: Recorder, smoke: bool, repeats: int) -> None:
  import jax
  import jax.numpy as jnp

  from daq_jax import quant
  from daq_jax.quant import backends, gradient, numerics
  from daq_jax.quant.backends import cost
  from daq_jax.quant.geometry import make_spec

  platform = backends.target_platform()
  convs = SMOKE_CONVS if smoke else predicted_order(RESNET50_CONVS)
  for name, batch, size, c_in, c_out, ksize, stride in convs:
    keys = jax.random.split(jax.random.key(1), 3)
    lhs_shape, rhs_shape = (batch, size, size, c_in), (ksize, ksize, c_in, c_out)
    x = jax.random.normal(keys[0], lhs_shape)
    w = 0.05 * jax.random.normal(keys[1], rhs_shape)
    spec = make_spec(lhs_shape, rhs_shape, padding="SAME", window_strides=stride)
    y_shape = jax.eval_shape(spec.float_conv, x, w).shape
    g = jax.random.laplace(keys[2], y_shape)
    base = {"shape": name}
    layer = cost.Layer(name, lhs_shape, rhs_shape, spec)
    predict = functools.partial(_predicted_ms, layer)

    for dtype, label in ((jnp.bfloat16, "xla_bf16"), (jnp.float32, "xla_f32")):
      xs, ws, gs = x.astype(dtype), w.astype(dtype), g.astype(dtype)
      fns = _float_contractions(spec, x.shape, w.shape, dtype)
      operands = {"forward": (xs, ws), "dgrad": (ws, gs), "wgrad": (xs, gs)}
      for contraction, fn in fns.items():
        rec.row(
          **base,
          contraction=contraction,
          impl=label,
          **predict("bf16" if dtype == jnp.bfloat16 else None, contraction),
          **measure(jax.jit(fn), *operands[contraction], repeats=repeats),
        )

    cfg = quant.preset(METHOD)
    xb, wb, gb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
    xq = numerics.QTensor.of(xb, numerics.max_abs(xb))
    wq = numerics.QTensor.of(wb, numerics.max_abs(wb))
    state, key = gradient.init_state(cfg, c_out), jax.random.key(0)
    quantized = {
      False: gradient.quantize_gradient(gb, state, cfg, key),
      True: gradient.quantize_gradient(gb, state, cfg, key, defer=("dgrad", "wgrad")),
    }
    for impl in IMPLS:
      row = {**base, "impl": impl, "method": METHOD}
      try:
        b = backends.get(impl)
        fns = _int8_contractions(b, spec, xb, wb, xq, wq, quantized[b.quantizes_on_load])
      except Exception as e:
        rec.row(**row, contraction="all", error=error(e))
        continue
      for contraction, (fn, args) in fns.items():
        reason = b.unsupported(contraction, spec, platform, (lhs_shape, rhs_shape))
        if reason:
          rec.row(**row, contraction=contraction, error=f"unsupported: {reason}")
          continue
        rec.row(
          **row,
          contraction=contraction,
          **predict(impl, contraction),
          **measure(jax.jit(fn), *args, repeats=repeats),
        )

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
  """contraction -> (function, operands) of one implementation, its residuals made ahead, g
  per row for dgrad as the recommended method quantizes it, bf16 outputs."""
  import jax.numpy as jnp

  rows = gq.dgrad_scale.ndim > 0
  kernel = backend.conv_keep_kernel(w, wq, spec, rows=rows)
  inputs = backend.conv_keep_input(x, xq, spec)
  shapes = (x.shape, w.shape)
  dgrad = backend.conv_dgrad_rows if rows else backend.conv_dgrad
  bf16 = jnp.bfloat16
  return {
    "forward": (lambda xq, wq: backend.conv_forward(xq, wq, spec, bf16), (xq, wq)),
    "dgrad": (lambda d, k: dgrad(d, k, *shapes, spec, bf16), (gq.dgrad, kernel)),
    "wgrad": (lambda i, q: backend.conv_wgrad(i, q, *shapes, spec), (inputs, gq.wgrad)),
  }


def _predicted_ms(layer, design: str | None, contraction: str) -> dict:
  """{"predicted_ms"} of one product of `layer` on `design` by the roofline model (H100 SXM
  defaults), or {} where it has none (float32 convs)."""
  from daq_jax import quant
  from daq_jax.quant.backends import cost

  if design is None:
    return {}
  method = cost.Method.of(quant.preset(METHOD))
  kernels = cost.contraction(layer, design, contraction, method, 2)
  return {"predicted_ms": round(cost.seconds(kernels, cost.Hardware()) * 1e3, 6)}


def predicted_order(convs) -> list:
  """`convs` by the implicit kernels' predicted win over bf16, largest first."""
  from daq_jax import quant
  from daq_jax.quant.backends import cost
  from daq_jax.quant.geometry import make_spec

  method, hw = cost.Method.of(quant.preset(METHOD)), cost.Hardware()

  def win(conv):
    _, batch, size, c_in, c_out, k, stride = conv
    lhs, rhs = (batch, size, size, c_in), (k, k, c_in, c_out)
    layer = cost.Layer("", lhs, rhs, make_spec(lhs, rhs, window_strides=stride))
    time = lambda d: sum(
      cost.seconds(cost.contraction(layer, d, p, method, 2), hw) for p in cost.PRODUCTS
    )
    return time("bf16") / time("implicit")

  return sorted(convs, key=win, reverse=True)


def summarize_contractions(rows: list[dict]) -> dict:
  """Per shape and contraction: each int8 implementation's speed-up over XLA's bf16, and
  where the model predicted it, "measured / predicted" ms."""
  out: dict = {}
  for row in rows:
    if "ms" not in row:
      continue
    out.setdefault(row["shape"], {}).setdefault(row["contraction"], {})[row["impl"]] = row
  summary = {}
  for shape, per in out.items():
    for contraction, by_impl in per.items():
      bf16 = by_impl.get("xla_bf16", {}).get("ms")
      entry = {}
      for impl, row in by_impl.items():
        if bf16 and impl != "xla_bf16":
          entry[f"{impl} vs bf16"] = round(bf16 / row["ms"], 3)
        if "predicted_ms" in row:
          entry[f"{impl} measured / predicted ms"] = f"{row['ms']:.3f} / {row['predicted_ms']:.3f}"
      summary[f"{shape} | {contraction}"] = entry
  for key, entry in summary.items():
    print(key, entry, flush=True)
  return summary
