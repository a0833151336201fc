#!/usr/bin/env bash
# The one GPU check, staged to end within 8 minutes on an H100/H200 (JAX 0.11.2 there),
# compilation included. Each stage is its own process under its own deadline and rewrites its
# JSON ($OUT/<stage>.json) after every measurement, so a stage cut short keeps what it measured
# and the next stage still runs.
#
# Prepare here (the GPU machine has no internet; only the checkout and `carry` travel, 64 MiB):
#   python -m benchmarks.gpu_check prepare     # into .gpu/ (ignored, about 47 MB):
#     .gpu/cifar10_train.bin + .json   the 50,000 CIFAR-10 JPEGs packed into one file
#     .gpu/wheels/ml_collections-1.1.0-py3-none-any.whl   (the GPU image has none)
#     .gpu/wheels/tensorboardX-2.6.2.2-py2.py3-none-any.whl (daq_jax.training's writer)
#   The GPU image has jax/jaxlib 0.11.2 + cuda13 plugin, Triton 3.6, flax, optax, orbax,
#   pillow, scikit-learn, matplotlib, tensorboard, pytest, pytest-timeout: nothing else to carry.
# Run there:   device run, command "bash benchmarks/gpu_check.sh", carry [".gpu"], timeout_s 560
# Anywhere:    bash benchmarks/gpu_check.sh --smoke     (tiny sizes, CPU, about a minute)
#              GPU_CHECK_TOTAL=0 bash benchmarks/gpu_check.sh --smoke   (no deadlines: each
#              stage runs to its end however slow the machine; what the tests run)
# Then copy $OUT's files to benchmarks/results/gpu/, add the table to docs/backends.md, and rewrite
# daq_jax/quant/backends/auto.py's cuda row from contractions.json.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=()
TOTAL=${GPU_CHECK_TOTAL:-480}  # seconds, the whole check
PYTHON=${PYTHON:-python3}  # the interpreter of every stage (the tests pass their own)
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=(--smoke)
  TOTAL=${GPU_CHECK_TOTAL:-60}
fi
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$SECONDS
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/daq_jax_site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/daq_jax_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# stage NAME CAP [ARGS...]: runs one stage for at most CAP seconds, or what is left of TOTAL;
# with TOTAL=0, to its end.
stage() {
  local name=$1 cap=$2
  shift 2
  local deadline=()  # the command's prefix: `timeout`, or nothing with TOTAL=0
  if ((TOTAL == 0)); then
    echo "[$name] no deadline" | tee -a "$OUT/check.log"
  else
    local left=$((TOTAL - (SECONDS - START)))
    local limit=$((cap < left ? cap : left))
    if ((limit < 5)); then
      echo "[$name] skipped: ${left}s left" | tee -a "$OUT/check.log"
      return
    fi
    echo "[$name] up to ${limit}s" | tee -a "$OUT/check.log"
    deadline=(timeout --kill-after=5 "$limit")
  fi
  "${deadline[@]}" "$PYTHON" -m benchmarks.gpu_check "$name" --out "$OUT" "${SMOKE[@]}" "$@" \
    2>&1 | tee "$OUT/$name.log" | tail -n 40
  echo "[$name] exit ${PIPESTATUS[0]} after $((SECONDS - START))s" | tee -a "$OUT/check.log"
}

: >"$OUT/check.log"
if ((${#SMOKE[@]})); then  # caps in shares of TOTAL (the test gives it more time)
  stage env $((TOTAL * 15 / 100))
  stage contractions $((TOTAL * 20 / 100))
  stage resnet50_step $((TOTAL * 35 / 100))
  # (with no deadline, the smoke run's cifar stage stops after its one epoch all the same)
  stage cifar $((TOTAL * 30 / 100)) --deadline $((TOTAL ? TOTAL * 25 / 100 : 100000))
else
  stage env 70
  stage contractions 150
  stage resnet50_step 120
  # The compiled kernel tests only (the interpret twins are CPU tests), one minute at most,
  # 30 s a test; `-o addopts=` drops pyproject's `-n 2`. Warnings are shown, not errors.
  left=$((TOTAL - (SECONDS - START)))
  if ((left > 40)); then
    echo "[kernel tests] up to 60s" | tee -a "$OUT/check.log"
    timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts=-ra -W default \
      --timeout=30 -k "not Interpret" tests/pallas tests/quant/test_auto.py \
      >"$OUT/kernel_tests.log" 2>&1
    echo "[kernel tests] exit $? after $((SECONDS - START))s: $(tail -n 1 "$OUT/kernel_tests.log")" \
      | tee -a "$OUT/check.log"
  fi
  stage cifar 300 --deadline $((TOTAL - (SECONDS - START) - 10))
fi
echo "done in $((SECONDS - START))s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')" \
  | tee -a "$OUT/check.log"
