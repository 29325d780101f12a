#!/usr/bin/env bash
# The GPU half of issue 9 (Triton kernels), in one go: the kernel tests on the
# GPU (same files as the CPU/interpreter run), then the benchmarks.
# About 5-10 minutes on an H100/H200 (autotuning + the paper-scale stream).
#   engine/kernels/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-/tmp/kf_kernels}}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -m kf_desktop doctor 2>&1 | grep -E "torch|gpu|triton|kernels" | tee "$OUT/doctor.txt"
KF_TRITON_AUTOTUNE=0 timeout 240 $PY -m pytest -q -p no:cacheprovider \
    tests/engine/test_kernels.py tests/engine/test_kernels_stream.py 2>&1 | tail -30 | tee "$OUT/tests.txt"
timeout 180 $PY -m engine.kernels.bench --kernels --preset paper default laptop 2>&1 | tee "$OUT/bench_kernels.txt"
timeout 300 $PY -m engine.kernels.bench --engine --preset paper --chunks 8 2>&1 | tee "$OUT/bench_engine_paper.txt"
