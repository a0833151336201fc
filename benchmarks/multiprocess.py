"""The cost of several processes: one DAQ ResNet-20 training step (batch 128, the step of
`train.py`) on 1 process with 2 CPU devices against 2 processes with 1 device each, joined
through `jax.distributed` (`daq_jax.training.launch`, gloo collectives over loopback TCP),
measured in one run.

On one 2-core machine the figure is about overhead, not speed-up: the same two devices do the
same work either way, and what differs is that the gradient reductions cross processes. Each
configuration runs in fresh processes (XLA_FLAGS sets the CPU device count), which compile,
warm up and report the median step time; process 0 reports for a run of two.

    python -m benchmarks.multiprocess                    # about 3 minutes on 2 CPU cores
    python -m benchmarks.multiprocess --repeats 2 --batch 16 --out /tmp/mp.json   # quick

Writes benchmarks/results/multiprocess_cpu.json with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

# (name, processes, devices per process)
LAYOUTS = [("1 process x 2 devices", 1, 2), ("2 processes x 1 device", 2, 1)]
RESULT = "RESULT "


def _worker(args) -> None:
  """One process of a layout: joins the run (if several), times the step, prints its result."""
  from daq_jax.training import launch

  if args.num_processes > 1:
    launch.join(
      launch.Launch(f"127.0.0.1:{args.port}", args.num_processes, args.process_id, 120, 60)
    )
  import jax

  from benchmarks.common import median_ms
  from benchmarks.train_step import build_step

  step, state, batch = build_step(args.method, "float32", args.model, args.batch, devices=0)
  ms = median_ms(step, state, batch, repeats=args.repeats)
  if jax.process_index() == 0:
    row = {"ms": ms, "devices": jax.device_count(), "processes": jax.process_count()}
    print(RESULT + json.dumps(row), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_layout(args, processes: int, devices: int) -> dict:
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  port = _free_port()
  command = [
    sys.executable, "-m", "benchmarks.multiprocess", "--worker",
    f"--num_processes={processes}", f"--port={port}", f"--model={args.model}",
    f"--method={args.method}", f"--batch={args.batch}", f"--repeats={args.repeats}",
  ]  # fmt: skip
  pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
  procs = [
    subprocess.Popen(command + [f"--process_id={i}"], env=env, **pipes) for i in range(processes)
  ]
  outputs = [proc.communicate(timeout=1800) for proc in procs]
  for proc, (_, err) in zip(procs, outputs, strict=True):
    if proc.returncode != 0:
      return {"error": f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}"}
  line = next(x for x in outputs[0][0].splitlines() if x.startswith(RESULT))
  return json.loads(line[len(RESULT) :])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--method", default="daq")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default="benchmarks/results/multiprocess_cpu.json")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return _worker(args)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks.common import environment, write_json

  rows = {}
  for name, processes, devices in LAYOUTS:
    rows[name] = _run_layout(args, processes, devices)
    print(name, rows[name], flush=True)
  base = rows[LAYOUTS[0][0]]
  for row in rows.values():
    if "ms" in row and "ms" in base:
      row["vs_one_process"] = round(row["ms"] / base["ms"], 3)
  print(
    f"\n{args.model} {args.method} training step, global batch {args.batch}, medians of "
    f"{args.repeats}:"
  )
  for name, row in rows.items():
    shown = f"{row['ms']:9.1f} ms   x{row['vs_one_process']:.2f}" if "ms" in row else row["error"]
    print(f"  {name:24s} {shown}")
  payload = {
    **environment("benchmarks.multiprocess"),
    "model": args.model,
    "method": args.method,
    "batch": args.batch,
    "repeats": args.repeats,
    "rows": rows,
  }
  print("wrote", write_json(args.out, payload))


if __name__ == "__main__":
  main()
