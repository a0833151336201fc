"""The staged GPU check: one stage per process, its JSON rewritten after every measurement.

    bash benchmarks/gpu_check.sh            # on the GPU machine (the stages, with deadlines)
    bash benchmarks/gpu_check.sh --smoke    # any machine, tiny sizes, under a minute (CI)
    python -m benchmarks.gpu_check prepare  # here, before: data and wheels into .gpu/

Stages, in order of value (`python -m benchmarks.gpu_check STAGE --out DIR [--smoke]`):
  env           the machine and versions; what impl="auto" picks here for a plain, a strided,
                a grouped conv and a dense layer; and whether each implementation (implicit,
                implicit_fused, im2col, xla, pallas, auto) compiles one small conv layer's
                forward and backward passes and matches `simulate` (the float oracle).
  contractions  at ResNet-50's conv shapes (batch 128), those where the roofline model
                predicts the implicit-GEMM kernels' largest win first: forward, dgrad and
                wgrad timed apart for each implementation (int8 operands ready, bf16 out),
                against XLA's bf16 and float32 convs, measured beside predicted; the
                gradient quantizer (jnp vs Pallas, nearest rounding (daq) and stochastic
                rounding on both paths (daq_sr)); the GEMM at the forward's implicit-GEMM
                shape (Pallas int8 vs XLA int8 vs bf16 vs float32).
  resnet50_step the ResNet-50 training step at batch 128: fp32, bf16, per_tensor, DAQ,
                daq_sr, daq_sr_wgrad_rows and the recommended method (memory "keep" and
                "int8") on impl="auto", the int8 ones with bf16 float parts; then XLA's
                compiled memory of bf16's step and of the recommended method's in both modes.
  cifar         CIFAR-10 ResNet-20, fp32 against the recommended method
                (quant.config.RECOMMENDED), daq and daq_sr, alternating epochs until the deadline,
                validation top-1 after each, with train.py's own model, step, validation split,
                normalisation and augmentation (on the device, where the images are held);
                the JPEGs, packed by `prepare`, are decoded once.
Every measurement that fails records its error and the stage goes on; a stage cut short by
its deadline keeps what it wrote. Each stage is a module of `benchmarks.gpu`; this file is
their command line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import traceback

from benchmarks.gpu import cifar, contractions, env, resnet50_step
from benchmarks.gpu.record import Recorder, error


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("stage", choices=("prepare", "env", "contractions", "resnet50_step", "cifar"))
  parser.add_argument("--out", default="benchmarks/results/gpu", help="folder for the JSON")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, any machine")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--deadline", type=float, default=120.0, help="seconds (cifar)")
  parser.add_argument("--data", default=str(cifar.PACKED), help="packed CIFAR-10 (prepare's --to)")
  parser.add_argument("--source", default="../shared/data/cifar10/train", help="prepare: JPEGs")
  parser.add_argument("--no-wheels", action="store_true", help="prepare: skip the download")
  parser.add_argument(
    "--steps-per-epoch", type=int, default=0, help="cifar: cap the epochs (rehearsals on a CPU)"
  )
  args = parser.parse_args(argv)
  if args.stage == "prepare":
    cifar.prepare(pathlib.Path(args.source), pathlib.Path(args.data), wheels=not args.no_wheels)
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
      env.run(rec, args.smoke)
    elif args.stage == "contractions":
      contractions.run(rec, args.smoke, repeats)
    elif args.stage == "resnet50_step":
      resnet50_step.run(rec, args.smoke, repeats)
    else:
      data = pathlib.Path(args.data)
      if not args.smoke and not (data / cifar.INDEX_FILE).exists():
        rec.set("error", f"no packed data in {data}: run `python -m benchmarks.gpu_check prepare`")
        return 1
      cifar.run(rec, args.smoke, args.deadline, data, args.steps_per_epoch)
  except Exception as e:
    traceback.print_exc()
    rec.set("error", error(e))
    return 1
  rec.set("done", True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
