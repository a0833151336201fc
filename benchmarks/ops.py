"""Forward + backward of ResNet-20's convolutions (CIFAR-10, batch 128): float32 vs bfloat16
vs the DAQ int8 op, side by side in one run, with where DAQ's time goes.

    python -m benchmarks.ops                       # about 2 minutes on 2 CPU cores (4 here)
    python -m benchmarks.ops --batch 16 --repeats 3 --out /tmp/ops.json   # a quick look
    python -m benchmarks.ops --video               # R3D-18 / R(2+1)D-18's 3-D convs instead

Each row times one jitted function returning (y, dx, dw) for a given g. The DAQ breakdown
times its parts separately: the forward pass (quantize x and w, int8 conv, rescale, and the
int8 residuals for the backward pass), the gradient quantizer (statistics, clip rule, both
quantizations of g), the int8 dgrad and the int8 wgrad; "daq*" is impl="auto" (xla on the
CPU), and "im2col*" the same parts on impl="im2col", the table's evidence for auto's CPU row.
"net" weighs each shape by how often ResNet-20 uses it (19 convolutions). Results go to
benchmarks/results/ops_cpu.json.

`--video`: the 3-D convolutions of R3D-18 (3x3x3) and R(2+1)D-18 ((1,3,3) and (3,1,1)) on
8-frame clips of 56x56 (the first stage's size for 16x112x112 input, halved in time to fit a
CPU), batch 4 by default; "net" counts each shape's uses in the two nets together. Results go
to benchmarks/results/ops3d_cpu.json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.common import environment, median_ms, write_json
from daq_jax import quant
from daq_jax.quant import backends, conv_op, geometry, gradient

# (name, input spatial shape, C_in, C_out, kernel, strides, uses)
RESNET20_CONVS = [  # uses in ResNet-20
  ("stem 3->16", (32, 32), 3, 16, (3, 3), 1, 1),
  ("s1 16->16", (32, 32), 16, 16, (3, 3), 1, 6),
  ("s2 16->32 /2", (32, 32), 16, 32, (3, 3), 2, 1),
  ("s2 32->32", (16, 16), 32, 32, (3, 3), 1, 5),
  ("s3 32->64 /2", (16, 16), 32, 64, (3, 3), 2, 1),
  ("s3 64->64", (8, 8), 64, 64, (3, 3), 1, 5),
]
VIDEO_CONVS = [  # uses in R3D-18 and R(2+1)D-18 together, stages 1-2
  ("r3d s1 3x3x3 64", (8, 56, 56), 64, 64, (3, 3, 3), 1, 4),
  ("r3d s2 3x3x3 /2", (8, 56, 56), 64, 128, (3, 3, 3), 2, 1),
  ("r3d s2 3x3x3 128", (4, 28, 28), 128, 128, (3, 3, 3), 1, 3),
  ("(2+1)d s1 1x3x3", (8, 56, 56), 64, 144, (1, 3, 3), 1, 4),
  ("(2+1)d s1 3x1x1", (8, 56, 56), 144, 64, (3, 1, 1), 1, 4),
  ("(2+1)d s2 1x3x3", (4, 28, 28), 128, 288, (1, 3, 3), 1, 3),
  ("(2+1)d s2 3x1x1", (4, 28, 28), 288, 128, (3, 1, 1), 1, 3),
]


def _float_step(spec, dtype):
  def step(x, w, g):
    y, vjp = jax.vjp(
      lambda a, b: lax.conv_general_dilated(
        a,
        b,
        spec.window_strides,
        spec.padding,
        dimension_numbers=geometry.channels_last_dimension_numbers(a.ndim),
      ),
      x.astype(dtype),
      w.astype(dtype),
    )
    return (y, *vjp(g.astype(dtype)))

  return jax.jit(step)


def _daq_parts(cfg, spec, state, x, w, g):
  def full(x, w, g):
    y, vjp = jax.vjp(
      lambda a, b, s: quant.conv_general(
        a, b, s, cfg=cfg, window_strides=spec.window_strides, padding=spec.padding
      ),
      x,
      w,
      state,
    )
    return (y, *vjp(g))

  plan = backends.plan(cfg, spec)
  site = quant.state.Site()
  fwd = jax.jit(lambda x, w: conv_op._forward(plan, spec, site, x, w, state, {}, None))
  quantize_g = jax.jit(lambda g: gradient.quantize_gradient(g, state, cfg))
  _, res = fwd(x, w)
  gq = quantize_g(g)
  dgrad = jax.jit(lambda gd, wd: plan.dgrad.conv_dgrad(gd, wd, x.shape, w.shape, spec))
  wgrad = jax.jit(lambda xt, gw: plan.wgrad.conv_wgrad(xt, gw, x.shape, w.shape, spec))
  return {
    "full": (jax.jit(full), (x, w, g)),
    "fwd": (fwd, (x, w)),
    "quantize_g": (quantize_g, (g,)),
    "dgrad": (dgrad, (gq.dgrad, res.kernel)),
    "wgrad": (wgrad, (res.inputs, gq.wgrad)),
  }


def run(batch: int, repeats: int, convs=RESNET20_CONVS) -> dict:
  cfg = quant.daq()
  rows = []
  for name, spatial, c_in, c_out, kernel, stride, uses in convs:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, *spatial, c_in))
    w = jax.random.normal(keys[1], (*kernel, c_in, c_out)) * 0.1
    spec = conv_op.make_spec(x.shape, w.shape, window_strides=stride)
    g = jax.random.laplace(keys[2], jax.eval_shape(spec.float_conv, x, w).shape)
    state = gradient.init_state(cfg, c_out)
    row = {
      "name": name,
      "shape": [batch, *spatial, c_in, c_out],
      "kernel": list(kernel),
      "stride": stride,
      "uses": uses,
    }
    row["fp32"] = median_ms(_float_step(spec, jnp.float32), x, w, g, repeats=repeats)
    row["bf16"] = median_ms(_float_step(spec, jnp.bfloat16), x, w, g, repeats=repeats)
    for part, (fn, args) in _daq_parts(cfg, spec, state, x, w, g).items():
      row["daq" if part == "full" else f"daq_{part}"] = median_ms(fn, *args, repeats=repeats)
    # The same parts on impl="im2col" (XLA int8 dots on patch views), the GPU row's first
    # choice: what impl="auto" gives up on the CPU by taking xla.
    parts = _daq_parts(cfg.replace(impl="im2col"), spec, state, x, w, g)
    for part in ("full", "fwd", "dgrad", "wgrad"):
      fn, args = parts[part]
      row["im2col" if part == "full" else f"im2col_{part}"] = median_ms(fn, *args, repeats=repeats)
    rows.append(row)
  keys = ["fp32", "bf16", "daq", "daq_fwd", "daq_quantize_g", "daq_dgrad", "daq_wgrad"]
  keys += ["im2col", "im2col_fwd", "im2col_dgrad", "im2col_wgrad"]
  net = {k: sum(r[k] * r["uses"] for r in rows) for k in keys}
  return {"batch": batch, "repeats": repeats, "rows": rows, "net": net}


def format_table(result: dict) -> str:
  head = (
    f"{'conv (fwd+bwd, ms)':<16} {'fp32':>7} {'bf16':>7} {'daq':>7} {'daq/fp32':>8} "
    f"{'daq/bf16':>8} | {'fwd':>6} {'q(g)':>6} {'dgrad':>6} {'wgrad':>6}"
  )
  lines = [head]
  rows = [*result["rows"], {"name": "net (x uses)", **result["net"]}]
  for r in rows:
    lines.append(
      f"{r['name']:<16} {r['fp32']:>7.1f} {r['bf16']:>7.1f} {r['daq']:>7.1f} "
      f"{r['daq'] / r['fp32']:>8.2f} {r['daq'] / r['bf16']:>8.2f} | {r['daq_fwd']:>6.1f} "
      f"{r['daq_quantize_g']:>6.1f} {r['daq_dgrad']:>6.1f} {r['daq_wgrad']:>6.1f}"
    )
  lines.append(f"{'im2col / xla':<16} {'full':>7} {'fwd':>7} {'dgrad':>7} {'wgrad':>7}")
  for r in rows:
    ratios = [r[f"im2col{p}"] / r[f"daq{p}"] for p in ("", "_fwd", "_dgrad", "_wgrad")]
    lines.append(f"{r['name']:<16} " + " ".join(f"{v:>7.2f}" for v in ratios))
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--video", action="store_true", help="the 3-D convs of the video ResNets")
  parser.add_argument("--out", default=None, help="default: benchmarks/results/ops[3d]_cpu.json")
  args = parser.parse_args()
  if args.video:
    batch = 4 if args.batch == 128 else args.batch  # 128 is the 2-D default
    result = run(batch, args.repeats, VIDEO_CONVS)
  else:
    result = run(args.batch, args.repeats)
  args.out = args.out or f"benchmarks/results/ops{'3d' if args.video else ''}_cpu.json"
  print(format_table(result))
  path = write_json(args.out, {**environment("benchmarks.ops"), **result})
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
