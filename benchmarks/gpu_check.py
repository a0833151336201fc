"""The staged GPU check: one stage per process, its JSON rewritten after every measurement.

    bash benchmarks/gpu_check.sh            # on the GPU machine (the stages, with deadlines)
    bash benchmarks/gpu_check.sh --smoke    # any machine, tiny sizes, under a minute (CI)
    python -m benchmarks.gpu_check prepare  # here, before: data and wheels into .gpu/

Stages, in order of value (`python -m benchmarks.gpu_check STAGE --out DIR [--smoke]`):
  env           the machine and versions; what impl="auto" picks here for a plain, a strided,
                a grouped conv and a dense layer; and whether each implementation (xla,
                im2col, pallas, auto) compiles one small conv layer's forward and backward
                passes and matches `simulate` (the float oracle).
  contractions  at ResNet-50's conv shapes (batch 128): forward, dgrad and wgrad timed apart
                for each implementation (int8 operands ready), against XLA's bf16 and float32
                convs; the gradient quantizer (jnp vs Pallas, nearest rounding (daq) and
                stochastic rounding on both paths (daq_sr)); the GEMM at the forward's
                implicit-GEMM shape (Pallas int8 vs XLA int8 vs bf16 vs float32).
  resnet50_step the ResNet-50 training step at batch 128: fp32, bf16, per_tensor, DAQ and
                daq_sr on impl="auto", the int8 ones with bf16 float parts.
  cifar         CIFAR-10 ResNet-20, fp32 against the recommended method
                (quant.config.RECOMMENDED), daq and daq_sr, alternating epochs until the deadline,
                validation top-1 after each (the last 500 images of each class in sorted file
                order are the validation split); the JPEGs, packed by `prepare`, are decoded
                once and held on the device.
Every measurement that fails records its error and the stage goes on; a stage cut short by
its deadline keeps what it wrote.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import numpy as np

from benchmarks.common import environment, median_ms, write_json

PACKED = pathlib.Path(".gpu")
DATA_FILE = "cifar10_train.bin"
INDEX_FILE = "cifar10_train.json"
# Wheels the GPU image lacks (Python 3.12 there): ml_collections (configs), tensorboardX
# (daq_jax.training's metric writer, imported by the trainer).
WHEELS = ("ml_collections==1.1.0", "tensorboardX==2.6.2.2")

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
IMPLS = ("xla", "im2col", "pallas")


class Recorder:
  """A stage's JSON: the environment, then rows, rewritten (atomically) after each one."""

  def __init__(self, out: pathlib.Path, stage: str, smoke: bool):
    self.path = out / f"{stage}.json"
    self.data = {**environment(f"benchmarks.gpu_check {stage}"), "stage": stage, "smoke": smoke}
    self.data["rows"] = []
    self.start = time.perf_counter()
    self.save()

  def save(self) -> None:
    self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
    write_json(self.path, self.data)

  def set(self, key: str, value) -> None:
    self.data[key] = value
    self.save()

  def row(self, **row) -> dict:
    self.data["rows"].append(row)
    self.save()
    print(json.dumps(row, default=str), flush=True)
    return row


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"[:800]


def _measure(fn, *args, repeats: int) -> dict:
  """{"ms", "compile_s"} of `fn(*args)`, or {"error"}."""
  import jax

  try:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    return {"ms": median_ms(fn, *args, repeats=repeats, warmup=1), "compile_s": compile_s}
  except Exception as e:
    traceback.print_exc()
    return {"error": _error(e)}


# Stage: env --------------------------------------------------------------------------------


def stage_env(rec: Recorder, smoke: bool) -> None:
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
    rec.set("nvidia_smi", _error(e))
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
    try:
      plans[name] = backends.plan(quant.daq(), spec).names
    except ValueError as e:
      plans[name] = _error(e)
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
        row["error"] = _error(e)
      rec.row(**row)


# Stage: contractions -----------------------------------------------------------------------


def stage_contractions(rec: Recorder, smoke: bool, repeats: int) -> None:
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
          **_measure(jax.jit(fn), *operands[contraction], repeats=repeats),
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
        rec.row(**row, contraction="all", error=_error(e))
        continue
      for contraction, (fn, args) in fns.items():
        reason = b.unsupported(contraction, spec, platform)
        if reason:
          rec.row(**row, contraction=contraction, error=f"unsupported: {reason}")
          continue
        rec.row(**row, contraction=contraction, **_measure(jax.jit(fn), *args, repeats=repeats))

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
          **_measure(
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
        **_measure(jax.jit(fn), *args, repeats=repeats),
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


# Stage: resnet50_step ----------------------------------------------------------------------


def stage_resnet50_step(rec: Recorder, smoke: bool, repeats: int) -> None:
  import jax
  import jax.numpy as jnp
  import optax

  import daq_jax.nn as qnn
  from daq_jax import models, quant

  batch, size = (2, 32) if smoke else (128, 224)
  arch = dict(stage_sizes=(1, 1), num_filters=8) if smoke else {}
  variants = [
    ("fp32", None, jnp.float32),
    ("bf16", None, jnp.bfloat16),
    ("per_tensor_bf16", quant.per_tensor(), jnp.bfloat16),
    ("daq_auto_bf16", quant.daq(), jnp.bfloat16),
    ("daq_sr_auto_bf16", quant.daq_sr(), jnp.bfloat16),
  ]
  if smoke:
    variants = [variants[0], variants[-1]]
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  y = jnp.arange(batch) % 1000
  for name, cfg, dtype in variants:
    try:
      model = models.ResNet50(
        num_classes=1000,
        dtype=dtype,
        conv=functools.partial(qnn.QConv, quant=cfg),
        dense=functools.partial(qnn.QDense, quant=cfg),
        **arch,
      )
      variables = jax.jit(model.init)(jax.random.key(1), x)
      tx = optax.sgd(0.1, momentum=0.9)
      params, stats = variables["params"], variables["batch_stats"]
      qstate = variables.get(qnn.STATE_COLLECTION, {})
      opt_state = tx.init(params)

      def loss_fn(params, qstate, stats, model=model, dtype=dtype):
        logits, updates = model.apply(
          {"params": params, "batch_stats": stats, qnn.STATE_COLLECTION: qstate},
          x.astype(dtype),
          mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return loss.mean(), updates["batch_stats"]

      @jax.jit
      def step(params, opt_state, qstate, stats, loss_fn=loss_fn, tx=tx):
        (loss, stats), grads, qstate = quant.value_and_grad(loss_fn, has_aux=True)(
          params, qstate, stats
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, qstate, stats, loss

      result = _measure(step, params, opt_state, qstate, stats, repeats=repeats)
      if "ms" in result:
        result["images_per_s"] = batch / (result["ms"] * 1e-3)
      rec.row(name=name, batch=batch, **result)
    except Exception as e:
      traceback.print_exc()
      rec.row(name=name, batch=batch, error=_error(e))
  times = {r["name"]: r["ms"] for r in rec.data["rows"] if "ms" in r}
  if "bf16" in times:
    rec.set("vs_bf16", {k: round(v / times["bf16"], 3) for k, v in times.items()})


# Stage: cifar ------------------------------------------------------------------------------


def prepare(data_dir: pathlib.Path, to: pathlib.Path, wheels: bool) -> None:
  """Packs the JPEG folder into one file plus an index (46 MB, not 50,000 files), and
  downloads the wheels the GPU image lacks, into `to` (an ignored folder to carry)."""
  to.mkdir(parents=True, exist_ok=True)
  classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
  if len(classes) < 2:
    raise SystemExit(f"error: {data_dir} has {len(classes)} class folders, not an image folder")
  offsets, labels, names = [0], [], []
  with open(to / DATA_FILE, "wb") as out:
    for label, name in enumerate(classes):
      for path in sorted((data_dir / name).iterdir()):
        data = path.read_bytes()
        out.write(data)
        offsets.append(offsets[-1] + len(data))
        labels.append(label)
        names.append(f"{name}/{path.name}")
  index = {"classes": classes, "offsets": offsets, "labels": labels, "source": str(data_dir)}
  (to / INDEX_FILE).write_text(json.dumps(index))
  print(f"packed {len(labels)} images of {len(classes)} classes: {offsets[-1] / 1e6:.1f} MB")
  if wheels:
    subprocess.run(
      [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
      + ["--python-version", "3.12", "--implementation", "py", "-d", str(to / "wheels")]
      + list(WHEELS),
      check=True,
    )
    print("wheels:", sorted(p.name for p in (to / "wheels").iterdir()))


def load_packed(folder: pathlib.Path, smoke: bool):
  """(train images, train labels, val images, val labels, classes): the last 500 of each
  class (sorted file order) are the validation split. Smoke: random images, no files."""
  if smoke:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (192, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(192) % 10
    return images[:128], labels[:128], images[128:], labels[128:], [str(i) for i in range(10)]
  from concurrent.futures import ThreadPoolExecutor

  from PIL import Image

  index = json.loads((folder / INDEX_FILE).read_text())
  blob = (folder / DATA_FILE).read_bytes()
  offsets = index["offsets"]

  def decode(i):
    with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]])) as im:
      return np.asarray(im.convert("RGB"), np.uint8)

  with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
    images = np.stack(list(pool.map(decode, range(len(offsets) - 1))))
  labels = np.asarray(index["labels"], np.int32)
  val = np.zeros(len(labels), bool)
  for c in range(len(index["classes"])):
    val[np.flatnonzero(labels == c)[-500:]] = True
  return images[~val], labels[~val], images[val], labels[val], index["classes"]


def stage_cifar(
  rec: Recorder, smoke: bool, deadline_s: float, data: pathlib.Path, steps_cap: int = 0
) -> None:
  import jax
  import jax.numpy as jnp

  from daq_jax.data.info import DatasetInfo
  from daq_jax.quant import config as quant_config
  from daq_jax.training import modeling, optim, parallel, steps
  from daq_jax.training.config import from_dict

  start = time.perf_counter()
  train_x, train_y, val_x, val_y, classes = load_packed(data, smoke)
  rec.set(
    "data", {"train": len(train_y), "val": len(val_y), "decode_s": time.perf_counter() - start}
  )
  batch = 32 if smoke else 128
  steps_per_epoch = len(train_y) // batch
  if steps_cap:  # a rehearsal on a slow machine: short "epochs" of the real data
    steps_per_epoch = min(steps_per_epoch, steps_cap)
    rec.set("steps_per_epoch_cap", steps_cap)
  info = DatasetInfo(
    tuple(classes), (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), "cifar"
  )
  mesh = parallel.make_mesh(1, batch)
  replicated = parallel.replicated(mesh)
  images, labels = jax.device_put(train_x), jax.device_put(train_y)
  val_images, val_labels = jax.device_put(val_x), jax.device_put(val_y)

  @jax.jit
  def take(images, labels, key, order, i):
    """Batch i of the epoch's order: random 4-pixel-padded crops and horizontal flips (the
    arrays are arguments: closed over, they would be compiled in as constants)."""
    idx = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
    x, y = images[idx], labels[idx]
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    shifts = jax.random.randint(k1, (batch, 2), 0, 9)
    x = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (32, 32, 3)))(
      padded, shifts
    )
    flip = jax.random.bernoulli(k2, 0.5, (batch,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return {"image": x, "label": y}

  runs = {}
  rec.set("model", "small_cnn" if smoke else "resnet20")
  # The recommended method, and the paper's DAQ against its stochastic-rounding variant.
  for method in dict.fromkeys(("fp32", quant_config.RECOMMENDED, "daq", "daq_sr")):
    cfg = from_dict(
      {
        "model": {"name": rec.data["model"], "dtype": "float32"},
        "quant": {"method": method},
        "batch_size": batch,
        "optim": {"base_batch_size": 128, "weight_decay": 1e-4},
      }
    )
    model = modeling.create_model(cfg, len(classes), info.image_shape)
    tx, _ = optim.build_optimizer(cfg, steps_per_epoch, 164 * steps_per_epoch)
    state = steps.init_train_state(model, tx, info, 0, replicated)
    train_fn, eval_fn = steps.compile_steps(model, tx, info, cfg, replicated)
    runs[method] = {"state": state, "train": train_fn, "eval": eval_fn, "epoch_s": None}

  def validate(run):
    sums = None
    chunk = 500 if not smoke else 64
    for i in range(0, len(val_y), chunk):
      n = min(chunk, len(val_y) - i)
      b = {
        "image": val_images[i : i + n],
        "label": val_labels[i : i + n],
        "mask": jnp.ones((n,), bool),
      }
      out = run["eval"](run["state"], b)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return float(sums["top1"]) / float(sums["count"]), float(sums["loss"]) / float(sums["count"])

  key = jax.random.key(0)
  epoch = 0
  while True:
    epoch += 1
    expected = sum(r["epoch_s"] or 0.0 for r in runs.values())
    left = deadline_s - (time.perf_counter() - rec.start)
    if epoch > 1 and expected * 1.2 > left:
      rec.set(
        "stopped", f"before epoch {epoch}: {left:.0f} s left, an epoch pair takes {expected:.0f} s"
      )
      break
    if smoke and epoch > 1:
      break
    order = jax.random.permutation(jax.random.fold_in(key, epoch), len(train_y))
    warm = min(5, steps_per_epoch - 1)  # steps before the timing of the rate (compilation)
    for method, run in runs.items():
      t0 = t_warm = time.perf_counter()
      loss = None
      for i in range(steps_per_epoch):
        if i == warm:
          jax.block_until_ready(run["state"])
          t_warm = time.perf_counter()
        batch_i = take(images, labels, key, order, i)
        run["state"], metrics = run["train"](run["state"], batch_i)
        loss = metrics["loss"]
      jax.block_until_ready(loss)
      t1 = time.perf_counter()
      top1, val_loss = validate(run)
      validate_s = time.perf_counter() - t1
      step_s = (t1 - t_warm) / (steps_per_epoch - warm)
      run["epoch_s"] = step_s * steps_per_epoch + validate_s  # the next epoch, compiled
      rec.row(
        method=method,
        epoch=epoch,
        val_top1=top1,
        val_loss=val_loss,
        train_loss=float(loss),
        epoch_s=t1 - t0,
        validate_s=validate_s,
        ms_per_step=1e3 * step_s,
        includes_compilation=epoch == 1,
      )


# CLI ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("stage", choices=("prepare", "env", "contractions", "resnet50_step", "cifar"))
  parser.add_argument("--out", default="benchmarks/results/gpu", help="folder for the JSON")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, any machine")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--deadline", type=float, default=120.0, help="seconds (cifar)")
  parser.add_argument("--data", default=str(PACKED), help="packed CIFAR-10 (prepare's --to)")
  parser.add_argument("--source", default="../shared/data/cifar10/train", help="prepare: JPEGs")
  parser.add_argument("--no-wheels", action="store_true", help="prepare: skip the download")
  parser.add_argument(
    "--steps-per-epoch", type=int, default=0, help="cifar: cap the epochs (rehearsals on a CPU)"
  )
  args = parser.parse_args(argv)
  if args.stage == "prepare":
    prepare(pathlib.Path(args.source), pathlib.Path(args.data), wheels=not args.no_wheels)
    return 0
  if args.smoke:  # the test suite's persistent compilation cache (tests/conftest.py)
    import jax

    cache = pathlib.Path.home() / ".cache" / "daq_jax" / "jax_test_cache"
    jax.config.update("jax_compilation_cache_dir", os.environ.get("DAQ_JAX_TEST_CACHE", str(cache)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  rec = Recorder(pathlib.Path(args.out), args.stage, args.smoke)
  repeats = 1 if args.smoke else args.repeats
  try:
    if args.stage == "env":
      stage_env(rec, args.smoke)
    elif args.stage == "contractions":
      stage_contractions(rec, args.smoke, repeats)
    elif args.stage == "resnet50_step":
      stage_resnet50_step(rec, args.smoke, repeats)
    else:
      data = pathlib.Path(args.data)
      if not args.smoke and not (data / INDEX_FILE).exists():
        rec.set("error", f"no packed data in {data}: run `python -m benchmarks.gpu_check prepare`")
        return 1
      stage_cifar(rec, args.smoke, args.deadline, data, args.steps_per_epoch)
  except Exception as e:
    traceback.print_exc()
    rec.set("error", _error(e))
    return 1
  rec.set("done", True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
