"""Probes a workdir as a hostile but fair user would: each case of "What survives what"
(docs/training.md), run as the user runs it (`train.py` and `daq_jax.evaluate` as
subprocesses), with what it printed, its exit status and what it left in the workdir.

    python -m benchmarks.workdir_probes            # about 5 minutes on 2 cores
    python -m benchmarks.workdir_probes --config configs/detection_default.py   # a detector

Prints a markdown table and writes benchmarks/results/workdir_probes.json. The read-only
cases mount the workdir read-only in a mount namespace of their own (`unshare -m`, which needs
root); they are skipped where `unshare` is missing. The full-disk cases run on a 4 MB tmpfs
(`mount -t tmpfs`, root), skipped where it cannot be mounted.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "workdir_probes.json")
TINY = ["--config.num_steps=6", "--config.checkpoint_every_steps=2", "--config.log_every_steps=2"]
# `--config=PATH` of every run when the probes are run on another config than the default;
# the cases about image data and the full-disk ones (sized for the default's checkpoints)
# are then left out.
CONFIG: list[str] = []


def train(workdir, *flags, read_only=False, wait=True, timeout=300):
  cmd = [sys.executable, "train.py", f"--workdir={workdir}", *CONFIG, *flags]
  return _run(cmd, workdir if read_only else None, wait, timeout)


def evaluate(workdir, *flags, read_only=False):
  cmd = [sys.executable, "-m", "daq_jax.evaluate", f"--workdir={workdir}", *flags]
  return _run(cmd, workdir if read_only else None)


# Root may write anywhere, whatever the permissions: a read-only bind mount in a mount
# namespace of its own makes a workdir really read-only for one command.
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


def _run(cmd, read_only=None, wait=True, timeout=300):
  env = dict(os.environ)
  if read_only:
    cmd = ["unshare", "-m", "sh", "-c", READ_ONLY, read_only, *cmd]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


# What JAX's CUDA plugin prints at every start on a machine without a GPU.
NOISE = ("absl::InitializeLog", "cudart_stub.cc")


def last_lines(text: str, n: int = 1) -> str:
  lines = [
    x
    for x in text.strip().splitlines()
    if x.strip() and not x.startswith("[") and not any(noise in x for noise in NOISE)
  ]
  return " / ".join(lines[-n:])[:400]


def tracebacks(text: str) -> int:
  return text.count("Traceback")


def listing(workdir) -> list[str]:
  out = []
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      out.append(os.path.relpath(os.path.join(root, name), workdir))
  return sorted(x for x in out if x.count(os.sep) <= 1)


def records(workdir) -> str:
  text = ""
  for name in ("config.json", "dataset.json"):
    with open(os.path.join(workdir, name)) as f:
      text += f.read()
  return text


def folder(root, classes, per_class=12, size=8, odd=None):
  rng = np.random.default_rng(0)
  for c in classes:
    os.makedirs(os.path.join(root, "train", c), exist_ok=True)
    for i in range(per_class):
      shape = odd[1] if odd and (c, i) == odd[0] else (size, size)
      pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, "train", c, f"{i:03d}.png"))
  return root


def folder_flags(data_dir, *extra):
  return [
    "--config.data.name=image_folder",
    f"--config.data.dir={data_dir}",
    "--config.data.cache_dir=",
    "--config.data.val_fraction=0.25",
    "--config.data.eval_split=val",
    "--config.quant.method=fp32",
    "--config.batch_size=8",
    *TINY,
    *extra,
  ]


def wait_for_training(proc, marker="/100000 loss"):
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if marker in line:
      return "".join(seen)
  return "".join(seen)


def probes(tmp):
  out = []

  def record(case, status, text, left=None, pick=None):
    """`pick`: report the lines holding it, not the last two."""
    picked = [x for x in text.splitlines() if pick and pick in x]
    out.append(
      {
        "case": case,
        "exit": status,
        "tracebacks": tracebacks(text),
        "says": " / ".join(picked)[:400] if picked else last_lines(text, 2),
        "left": left,
      }
    )
    print(f"{case}: exit {status}: {out[-1]['says']}", file=sys.stderr)

  # 1. Resuming with other data.
  if not CONFIG:
    abc = folder(f"{tmp}/abc", "abc")
    run = f"{tmp}/r1"
    train(run, *folder_flags(abc))
    config_before = records(run)
    status, text = train(run, *folder_flags(folder(f"{tmp}/abcd", "abcd")))
    unchanged = config_before == records(run)
    ev = evaluate(run)
    record(
      "resume a 3-class run with a 4-class data.dir",
      status,
      text,
      f"json unchanged: {unchanged}; evaluate exit {ev[0]}",
    )
    status, text = train(run, *folder_flags(folder(f"{tmp}/xyz", "xyz")))
    record("resume with 3 other class names (x, y, z)", status, text)

  # 2. Two runs on one workdir.
  run = f"{tmp}/r2"
  first = train(run, "--config.num_steps=400", "--config.checkpoint_every_steps=50", wait=False)
  time.sleep(4)
  status, text = train(run, "--config.num_steps=400", "--config.checkpoint_every_steps=50")
  first_err = first.communicate()[1]
  record(
    "the same command started twice",
    status,
    text,
    f"first run exit {first.returncode}, tracebacks {tracebacks(first_err)}; checkpoints "
    f"{sorted(os.listdir(f'{run}/checkpoints'))}",
  )
  run = f"{tmp}/r3"
  first = train(run, "--config.seed=0", *TINY, wait=False)
  time.sleep(4)
  status, text = train(run, "--config.seed=1", *TINY)
  first.communicate()
  record("seed 0 and seed 1 started at once", status, text, f"first run exit {first.returncode}")

  # 3. A damaged newest checkpoint.
  base = f"{tmp}/base"
  status, text = train(base, *TINY)
  if status != 0:  # every later case copies it
    raise SystemExit(f"the base run failed (exit {status}): {last_lines(text, 3)}")
  for damage in ("truncated", "garbage", "deleted _METADATA"):
    run = f"{tmp}/r4-{damage.split()[0]}"
    shutil.copytree(base, run)
    d = f"{run}/checkpoints/6/default/ocdbt.process_0/d"
    victim = os.path.join(d, sorted(os.listdir(d))[0])
    if damage == "truncated":
      os.truncate(victim, 10)
    elif damage == "garbage":
      size = os.path.getsize(victim)
      with open(victim, "wb") as f:
        f.write(os.urandom(size))
    else:
      os.remove(f"{run}/checkpoints/6/default/_METADATA")
    ev = evaluate(run)
    status, text = train(run, *TINY)
    record(
      f"a {damage} data file in the newest step"
      if damage != "deleted _METADATA"
      else "a deleted _METADATA in the newest step",
      status,
      text,
      f"evaluate exit {ev[0]}: {last_lines(ev[1], 2)}; {listing(run)[:3]}",
      pick="damaged",
    )
  run = f"{tmp}/r5"
  shutil.copytree(base, run)
  status, text = train(run, *TINY, "--restore_step=2")
  record(
    "--restore_step 2 of a finished 6-step run",
    status,
    text,
    f"checkpoints {sorted(os.listdir(f'{run}/checkpoints'))}, aside "
    f"{sorted(os.listdir(f'{run}/checkpoints_aside'))}",
  )

  # 4. Signals.
  for name, signals, gap in (
    ("SIGTERM", [signal.SIGTERM], 0),
    ("Ctrl-C", [signal.SIGINT], 0),
    ("a double Ctrl-C 0.15 s apart", [signal.SIGINT, signal.SIGINT], 0.15),
    ("kill -9", [signal.SIGKILL], 0),
  ):
    run = f"{tmp}/r6-{name.split()[0]}"
    proc = train(run, "--config.num_steps=100000", "--config.log_every_steps=1", wait=False)
    wait_for_training(proc)
    time.sleep(1)
    for signum in signals:
      proc.send_signal(signum)
      time.sleep(gap)
    err = proc.communicate()[1]
    tmp_dirs = [x for x in listing(run) if "tmp" in x]
    again = train(run, "--config.num_steps=30", "--config.log_every_steps=10")
    said = [x for x in again[1].splitlines() if "took over" in x or "resumed" in x]
    record(
      name,
      proc.returncode,
      err,
      f"left {sorted(os.listdir(f'{run}/checkpoints'))}, tmp dirs {tmp_dirs}; run again: "
      f"exit {again[0]}: {' / '.join(said)}",
      pick="stopped by",
    )

  # 5. One timeline.
  run = f"{tmp}/r7"
  shutil.copytree(base, run)
  shutil.rmtree(f"{run}/checkpoints/6")  # as a kill -9 after the step-6 log, before its save
  status, text = train(run, *TINY)
  with open(f"{run}/metrics.jsonl") as f:
    kinds = [(r["step"], next(k for k in r if "/" in k).split("/")[0]) for r in map(json.loads, f)]
  steps = [(step, kind) for step, kind in kinds if kind != "quant"]
  record(
    "resume after the newest records outlived their checkpoint",
    status,
    text,
    f"metrics.jsonl (step, kind): {steps}; events files {len(os.listdir(f'{run}/tensorboard'))}",
  )

  # 6. Workdirs that cannot be one, and bad values.
  ro = f"{tmp}/readonly"
  shutil.copytree(base, ro)
  if shutil.which("unshare"):
    status, text = train(ro, *TINY, "--config.num_steps=8", read_only=True)
    record("a read-only workdir (a read-only mount)", status, text)
    status, text = evaluate(ro, read_only=True)
    record("evaluate on a read-only workdir (a read-only mount)", status, text)
  open(f"{tmp}/afile", "w").close()
  record("a workdir that is a file", *train(f"{tmp}/afile", *TINY))
  os.makedirs(f"{tmp}/r8")
  open(f"{tmp}/r8/checkpoints", "w").close()
  record("`checkpoints` is a file", *train(f"{tmp}/r8", *TINY))
  record("evaluate --batch_size -3", *evaluate(base, "--batch_size=-3"))
  for flag in (
    "--config.data.image_size=-4",
    "--config.seed=-1",
    "--config.optim.base_learning_rate=nan",
    "--config.data.val_fraction=-0.5",
  ):
    record(flag, *train(f"{tmp}/r9", flag, *TINY))
  run = f"{tmp}/r10"
  status, text = train(run, "--config.batch_size=5000", *TINY)
  again = train(run, *TINY)
  record(
    "a run that failed before any checkpoint, then the corrected command",
    again[0],
    again[1],
    f"first: exit {status}: {last_lines(text)}",
  )

  if CONFIG:  # the rest is about image data and the default's checkpoint sizes
    return out

  # 7. Image folders.
  odd = folder(f"{tmp}/odd", ("airplane", "cat"), size=32, odd=(("cat", 3), (40, 48)))
  record("one 48x40 image in cat/ among 32x32 ones", *train(f"{tmp}/r11", *folder_flags(odd)))
  record(
    "... with data.image_size=32",
    *train(f"{tmp}/r12", *folder_flags(odd, "--config.data.image_size=32")),
  )
  big_first = folder(
    f"{tmp}/bigfirst", ("airplane", "cat"), size=32, odd=(("airplane", 0), (100, 100))
  )
  status, text = train(f"{tmp}/r13", *folder_flags(big_first, "--config.data.image_size=32"))
  record(
    "the first file in sorted order is 100x100",
    status,
    text,
    next((x for x in text.splitlines() if x.startswith("data:")), ""),
  )
  empty = folder(f"{tmp}/empty", ("airplane", "cat"))
  os.makedirs(f"{empty}/train/dog")
  record("an empty class folder", *train(f"{tmp}/r14", *folder_flags(empty)))
  record("a single class", *train(f"{tmp}/r15", *folder_flags(folder(f"{tmp}/one", ["cat"]))))

  # 8. A CIFAR directory whose first batch runs a command when it is unpickled.
  cifar = f"{tmp}/cifar-10-batches-py"
  os.makedirs(cifar)
  marker = f"{tmp}/the-pickle-ran"
  with open(f"{cifar}/data_batch_1", "wb") as f:
    pickle.dump(_RunsOnLoad(marker), f, protocol=2)
  status, text = train(f"{tmp}/r16", "--config.data.name=cifar10", f"--config.data.dir={cifar}")
  record(
    "a CIFAR data_batch_1 whose pickle runs `touch` when loaded",
    status,
    text,
    f"the command ran: {os.path.exists(marker)}",
  )

  # 9. A full disk: a 4 MB tmpfs, filled by a file that is then deleted ("free space").
  disk = f"{tmp}/disk"
  os.makedirs(disk)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk]).returncode
  if mounted == 0:
    try:
      full_disk_probes(disk, record)
    finally:
      subprocess.run(["umount", disk])
  return out


class _RunsOnLoad:
  """A pickle that creates the file `marker` when it is loaded (`touch`, without a shell)."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.mknod, (self.marker,))


def _fill(disk: str, leave_kb: int) -> None:
  """Writes `disk/filler` until `leave_kb` KB of the disk are left free."""
  filler = os.path.join(disk, "filler")
  if os.path.exists(filler):
    os.remove(filler)
  free_kb = shutil.disk_usage(disk).free // 1024
  with open(filler, "wb") as f:
    f.write(b"\0" * max(free_kb - leave_kb, 0) * 1024)


def full_disk_probes(disk: str, record) -> None:
  run = f"{disk}/run"
  steps = ["--config.num_steps=60", "--config.checkpoint_every_steps=10"]

  def state() -> str:
    with open(f"{run}/metrics.jsonl") as f:
      logged = [json.loads(line)["step"] for line in f]  # each line whole, or this fails
    kept = sorted(os.listdir(f"{run}/checkpoints"))
    return f"checkpoints {kept}; metrics.jsonl whole, last step {max(logged, default=None)}"

  _fill(disk, 700)  # room for one checkpoint (about 550 KB), not two
  status, text = train(run, *steps)
  record("the disk fills during a checkpoint save", status, text, state())
  os.remove(f"{disk}/filler")
  status, text = train(run, *steps)
  resumed = [x for x in text.splitlines() if "resumed from" in x]
  record("... free space, run the same command", status, text, f"{resumed}; {state()}")
  more = ["--config.num_steps=120", "--config.checkpoint_every_steps=10"]
  _fill(disk, 0)
  status, text = train(run, *more)
  record("a full disk when a run (resume) starts", status, text, state())
  _fill(disk, 16)
  status, text = train(run, *more, "--config.log_every_steps=1")
  record("the disk fills while metrics are written (16 KB free)", status, text, state())
  os.remove(f"{disk}/filler")
  status, text = train(run, *more)
  record("... free space, run the same command", status, text, state())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="probe runs of this config (default: none)")
  args = parser.parse_args(argv)
  results = RESULTS
  if args.config:
    CONFIG.append(f"--config={args.config}")
    name = os.path.splitext(os.path.basename(args.config))[0]
    results = RESULTS.replace(".json", f"_{name}.json")
  tmp = tempfile.mkdtemp(prefix="daq_jax_probes_")
  started = time.time()
  try:
    cases = probes(tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print("| case | exit | tracebacks | what it says (last lines) | what it leaves |")
  print("|---|---|---|---|---|")
  for c in cases:
    says = c["says"].replace("|", "/")
    print(f"| {c['case']} | {c['exit']} | {c['tracebacks']} | {says} | {c['left'] or ''} |")
  os.makedirs(os.path.dirname(results), exist_ok=True)
  with open(results, "w") as f:
    json.dump(
      {
        "command": " ".join(["python -m benchmarks.workdir_probes", *(argv or sys.argv[1:])]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "seconds": round(time.time() - started),
        "cases": cases,
      },
      f,
      indent=2,
    )


if __name__ == "__main__":
  main()
