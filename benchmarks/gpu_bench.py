"""GPU benchmarks for the INT8 kernels, side by side in one run (run by gpu_check.sh).

    python -m benchmarks.gpu_bench --out $OUT/gpu_bench.json          # on a GPU, a few minutes
    python -m benchmarks.gpu_bench --smoke --out /tmp/gpu_bench.json  # tiny shapes, any machine

1. GEMM at the implicit-GEMM shapes of ResNet-50's convolutions (batch 128; M = N*H*W,
   K = kh*kw*C_in, N = C_out): the Pallas int8 GEMM (scales fused) vs XLA's int8 dot (scaled
   after) vs XLA bf16 vs float32, with the achieved TOPS against the card's peaks.
2. A conv's forward + backward: DAQ (impl xla and pallas) vs bf16 vs float32.
3. A ResNet-50 training step (SGD with momentum): fp32, bf16, DAQ xla, DAQ pallas.
Each section writes its rows into the JSON as it finishes, so a run cut short keeps what it
measured; a section that fails records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback

import jax
import jax.numpy as jnp
import optax
from jax import lax

import daq_jax.nn as qnn
from benchmarks.common import environment, median_ms, write_json
from daq_jax import models, quant
from daq_jax.pallas import gemm
from daq_jax.quant import conv_op, gradient

# Dense tensor-core peaks (TOPS / TFLOPS, no sparsity) of the SXM cards.
PEAKS = {"H100": {"int8": 1979.0, "bf16": 989.0}, "H200": {"int8": 1979.0, "bf16": 989.0}}

# (name, M, K, N) for batch 128 at 224x224.
RESNET50_GEMMS = [
  ("stem 7x7 3->64 @112", 128 * 112 * 112, 147, 64),
  ("l1 3x3 64->64 @56", 128 * 56 * 56, 576, 64),
  ("l1 1x1 64->256 @56", 128 * 56 * 56, 64, 256),
  ("l2 3x3 128->128 @28", 128 * 28 * 28, 1152, 128),
  ("l3 3x3 256->256 @14", 128 * 14 * 14, 2304, 256),
  ("l3 1x1 1024->256 @14", 128 * 14 * 14, 1024, 256),
  ("l4 3x3 512->512 @7", 128 * 7 * 7, 4608, 512),
  ("l4 1x1 512->2048 @7", 128 * 7 * 7, 512, 2048),
]
SMOKE_GEMMS = [("smoke", 96, 80, 48)]

# (name, batch, spatial, C_in, C_out, kernel, stride)
RESNET50_CONVS = [
  ("l1 3x3 64->64 @56", 128, 56, 64, 64, 3, 1),
  ("l2 3x3 128->128 @28", 128, 28, 128, 128, 3, 1),
  ("l3 3x3 256->256 /2 @28", 128, 28, 256, 256, 3, 2),
  ("l4 1x1 512->2048 @7", 128, 7, 512, 2048, 1, 1),
]
SMOKE_CONVS = [("smoke", 2, 8, 8, 16, 3, 1)]


def _timed(fn, *args, repeats: int):
  """median_ms, or the error as a string: one variant that does not compile (XLA's int8 conv
  on a GPU, say) must not cost the others their numbers."""
  try:
    return median_ms(fn, *args, repeats=repeats)
  except Exception as e:
    traceback.print_exc()
    return f"{type(e).__name__}: {e}"[:500]


def _ratio(a, b):
  return a / b if isinstance(a, float) and isinstance(b, float) else None


def _peaks() -> dict:
  kind = getattr(jax.devices()[0], "device_kind", "")
  return next((v for k, v in PEAKS.items() if k in kind), {})


def bench_gemm(shapes, repeats: int, interpret: bool) -> list[dict]:
  peaks = _peaks()
  rows = []
  nn_dims = (((1,), (0,)), ((), ()))
  for name, m, k, n in shapes:
    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.randint(keys[0], (m, k), -127, 128).astype(jnp.int8)
    b = jax.random.randint(keys[1], (k, n), -127, 128).astype(jnp.int8)
    rs, cs = jnp.full((m,), 1e-3), jnp.full((n,), 1e-3)
    pallas = jax.jit(functools.partial(gemm.int8_matmul, interpret=interpret))

    @jax.jit
    def xla_int8(a, b, rs, cs):
      acc = lax.dot_general(a, b, nn_dims, preferred_element_type=jnp.int32)
      return acc.astype(jnp.float32) * rs[:, None] * cs[None, :]

    @jax.jit
    def xla_float(a, b):
      return lax.dot_general(a, b, nn_dims, preferred_element_type=jnp.float32)

    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    ms = {
      "pallas_int8": _timed(pallas, a, b, rs, cs, repeats=repeats),
      "xla_int8": _timed(xla_int8, a, b, rs, cs, repeats=repeats),
      "xla_bf16": _timed(xla_float, a16, b16, repeats=repeats),
      "xla_f32": _timed(xla_float, a32, b32, repeats=repeats),
    }
    ops = 2.0 * m * n * k
    row = {"name": name, "m": m, "k": k, "n": n, "ms": ms}
    row["tops"] = {
      key: ops / (t * 1e-3) / 1e12 if isinstance(t, float) else None for key, t in ms.items()
    }
    if peaks:
      kinds = {"pallas_int8": "int8", "xla_int8": "int8", "xla_bf16": "bf16"}
      row["fraction_of_peak"] = {
        key: _ratio(row["tops"][key], peaks[kind]) for key, kind in kinds.items()
      }
    rows.append(row)
  return rows


def bench_conv(shapes, repeats: int) -> list[dict]:
  rows = []
  for name, batch, size, c_in, c_out, ksize, stride in shapes:
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (batch, size, size, c_in))
    w = jax.random.normal(keys[1], (ksize, ksize, c_in, c_out)) * 0.05
    spec = conv_op.make_spec(x.shape, w.shape, window_strides=stride)
    g = jax.random.laplace(keys[2], jax.eval_shape(spec.float_conv, x, w).shape)

    def float_step(x, w, g, dtype, spec=spec):
      def conv(a, b):
        return lax.conv_general_dilated(
          a, b, spec.window_strides, spec.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

      y, vjp = jax.vjp(conv, x.astype(dtype), w.astype(dtype))
      return (y, *vjp(g.astype(dtype)))

    def daq_step(x, w, g, cfg, c_out=c_out, stride=stride):
      state = gradient.init_state(cfg, c_out)
      y, vjp = jax.vjp(
        lambda a, b, s: quant.conv_general(a, b, s, cfg=cfg, window_strides=stride), x, w, state
      )
      return (y, *vjp(g))

    ms = {
      "f32": _timed(
        jax.jit(functools.partial(float_step, dtype=jnp.float32)), x, w, g, repeats=repeats
      ),
      "bf16": _timed(
        jax.jit(functools.partial(float_step, dtype=jnp.bfloat16)), x, w, g, repeats=repeats
      ),
    }
    for impl in ("xla", "im2col", "pallas"):
      cfg = quant.daq(impl=impl)  # pallas: compiled on a GPU, interpreted elsewhere
      ms[f"daq_{impl}"] = _timed(
        jax.jit(functools.partial(daq_step, cfg=cfg)), x, w, g, repeats=repeats
      )
    rows.append(
      {"name": name, "ms": ms, "daq_pallas_over_bf16": _ratio(ms["daq_pallas"], ms["bf16"])}
    )
  return rows


def bench_resnet_step(batch: int, size: int, smoke: bool, repeats: int) -> list[dict]:
  rows = []
  variants = {
    "fp32": (None, jnp.float32),
    "bf16": (None, jnp.bfloat16),
    "daq_xla": (quant.daq(), jnp.float32),
    "daq_im2col": (quant.daq(impl="im2col"), jnp.float32),
    "daq_pallas": (quant.daq(impl="pallas"), jnp.float32),
  }
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  y = jnp.arange(batch) % 10
  for name, (cfg, dtype) in variants.items():
    try:
      rows.append(_resnet_variant(name, cfg, dtype, x, y, batch, smoke, repeats))
    except Exception as e:
      traceback.print_exc()
      rows.append({"name": name, "error": f"{type(e).__name__}: {e}"[:500]})
  return rows


def _resnet_variant(name, cfg, dtype, x, y, batch, smoke, repeats) -> dict:
  arch = dict(stage_sizes=(1, 1), num_filters=8) if smoke else {}
  model = models.ResNet50(
    num_classes=1000,
    dtype=dtype,
    conv=functools.partial(qnn.QConv, quant=cfg),
    dense=functools.partial(qnn.QDense, quant=cfg),
    **arch,
  )
  variables = jax.jit(model.init)(jax.random.key(1), x)
  tx = optax.sgd(0.1, momentum=0.9)
  params, batch_stats = variables["params"], variables["batch_stats"]
  qstate = variables.get("quant_state", {})
  opt_state = tx.init(params)

  def loss_fn(params, qstate, batch_stats, model=model):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats, "quant_state": qstate},
      x,
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates["batch_stats"]

  @jax.jit
  def step(params, opt_state, qstate, batch_stats, loss_fn=loss_fn, tx=tx):
    (loss, batch_stats), grads, qstate = quant.value_and_grad(loss_fn, has_aux=True)(
      params, qstate, batch_stats
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, qstate, batch_stats, loss

  start = time.perf_counter()
  jax.block_until_ready(step(params, opt_state, qstate, batch_stats))
  compile_s = time.perf_counter() - start
  ms = median_ms(step, params, opt_state, qstate, batch_stats, repeats=repeats, warmup=1)
  return {"name": name, "ms": ms, "images_per_s": batch / (ms * 1e-3), "compile_s": compile_s}


def _fmt(value, spec: str) -> str:
  return format(value, spec) if isinstance(value, float) else "failed"


def format_tables(result: dict) -> str:
  lines = []
  gemm_rows = result.get("gemm") or []
  if isinstance(gemm_rows, list) and gemm_rows:
    lines.append(
      f"{'GEMM (ms | TOPS)':<24} {'pallas i8':>16} {'xla i8':>16} {'xla bf16':>16} {'xla f32':>16}"
    )
    for r in gemm_rows:
      cells = [f"{_fmt(r['ms'][k], '7.3f')} | {_fmt(r['tops'][k], '6.1f')}" for k in r["ms"]]
      lines.append(f"{r['name']:<24} " + " ".join(f"{c:>16}" for c in cells))
  conv_rows = result.get("conv") or []
  if isinstance(conv_rows, list) and conv_rows:
    lines.append(
      f"{'conv fwd+bwd (ms)':<24} {'f32':>8} {'bf16':>8} {'daq xla':>8} {'daq i2c':>8} "
      f"{'daq pal':>8} {'pal/bf16':>8}"
    )
    for r in conv_rows:
      keys = ("f32", "bf16", "daq_xla", "daq_im2col", "daq_pallas")
      cells = [_fmt(r["ms"][k], "8.2f") for k in keys]
      cells.append(_fmt(r["daq_pallas_over_bf16"], "8.2f"))
      lines.append(f"{r['name']:<24} " + " ".join(f"{c:>8}" for c in cells))
  step_rows = result.get("resnet50_step") or []
  if isinstance(step_rows, list) and step_rows:
    lines.append(f"{'ResNet-50 step':<24} {'ms':>8} {'img/s':>8} {'compile s':>9}")
    for r in step_rows:
      if "error" in r:
        lines.append(f"{r['name']:<24} failed: {r['error'][:120]}")
        continue
      lines.append(
        f"{r['name']:<24} {r['ms']:>8.1f} {r['images_per_s']:>8.1f} {r['compile_s']:>9.1f}"
      )
  for key in ("gemm", "conv", "resnet50_step"):
    if isinstance(result.get(key), dict):
      lines.append(f"{key}: FAILED {result[key]['error']}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/gpu_bench.json")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--sections", default="gemm,conv,resnet50_step")
  args = parser.parse_args()
  interpret = args.smoke or jax.default_backend() != "gpu"
  result = {**environment("benchmarks.gpu_bench"), "smoke": args.smoke, "peaks": _peaks()}
  sections = {
    "gemm": lambda: bench_gemm(
      SMOKE_GEMMS if args.smoke else RESNET50_GEMMS, args.repeats, interpret
    ),
    "conv": lambda: bench_conv(SMOKE_CONVS if args.smoke else RESNET50_CONVS, args.repeats),
    "resnet50_step": lambda: bench_resnet_step(
      2 if args.smoke else args.batch, 32 if args.smoke else 224, args.smoke, args.repeats
    ),
  }
  for name in args.sections.split(","):
    start = time.perf_counter()
    try:
      result[name] = sections[name]()
    except Exception as e:  # keep the other sections' numbers
      traceback.print_exc()
      result[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
    write_json(args.out, result)
  print(format_tables(result))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
