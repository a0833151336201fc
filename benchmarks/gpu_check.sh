#!/usr/bin/env bash
# The one GPU check, for a session with a lent GPU (H100/H200, JAX 0.11.2 there):
#   device run:  bash benchmarks/gpu_check.sh        (carry: [".whl"]; timeout_s 600; about 9 min at most)
# Prepare the wheels here first (the GPU machine has no ml_collections and no internet):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 pillow
# It installs the carried wheels, runs the Pallas kernel tests compiled for the GPU (their
# interpret-mode twins run too), then benchmarks/gpu_bench.py; everything lands in $OUT
# (or benchmarks/results/gpu/ when $OUT is unset). Copy $OUT's files into
# benchmarks/results/ and commit them with what they taught you.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import ml_collections; print('ml_collections', ml_collections.__version__)"
} 2>&1 | tee "$OUT/env.txt"
# Warnings are shown, not errors, here: JAX 0.11 deprecates Pallas's Triton lowering, and
# what else it says on the GPU is worth reading in the log rather than failing on.
# `-o addopts=-ra` drops pyproject's `-n 2`: the GPU machine has no pytest-xdist.
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts=-ra -W default tests/pallas \
  2>&1 | tee "$OUT/pytest_gpu.txt"
timeout 300 python3 -m benchmarks.gpu_bench --out "$OUT/gpu_bench.json" 2>&1 \
  | tee "$OUT/gpu_bench.txt"
# The whole training step of the training code (ResNet-20, batch 128): fp32, bf16, per_tensor,
# DAQ. Needs pillow (daq_jax.data) among the carried wheels.
timeout 90 python3 -m benchmarks.train_step --repeats 5 --out "$OUT/train_step.json" 2>&1 \
  | tee "$OUT/train_step.txt"
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
