#!/usr/bin/env bash
# GPU check (issue 14, point 7), for a machine with one CUDA GPU; its timeouts add up to 9.5 minutes.
#   1. the test suite's CUDA-marked tests (bf16 autocast, channels_last, CUDA-event timing);
#   2. one epoch of PreAct ResNet-18 PGD-7 AT on 32x32 RGB data (CIFAR-10 if CIFAR_ROOT holds its python
#      batches, else Fashion-MNIST padded and replicated, else random images) on all the data, then one
#      GradMatch selection round and one epoch on a 30% coreset; the full epoch again in fp32 and at batch 512;
#   3. writes OUT/gpu_check.json (images/s of each part) and the logs;
#   4. benchmarks/roofline.py on CUDA: OUT/roofline/roofline.{json,md}.
#   bash benchmarks/gpu_check.sh                          # OUT = benchmarks/results/gpu_check
#   CIFAR_ROOT=/data/cifar10 OUT=/tmp/gc bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# a machine with torch but without this package installed: run it from the checkout
"$PY" -c "import advcoreset" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results/gpu_check}"
FMNIST_ROOT="${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}"
mkdir -p "$OUT"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; nothing to measure" >&2
    exit 2
fi
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
timeout 120 "$PY" -m pytest -q -m cuda -rA tests/package/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
args=(--out "$OUT" --fmnist-root "$FMNIST_ROOT" --tests-rc "$tests_rc")
[ -n "${CIFAR_ROOT:-}" ] && args+=(--cifar-root "$CIFAR_ROOT")
timeout 360 "$PY" benchmarks/gpu_check.py "${args[@]}"
rc=$?
# the roofline of the same parts on this GPU: counted FLOPs against measured GEMM / convolution peaks
timeout 90 "$PY" benchmarks/roofline.py --device cuda --data-root "$FMNIST_ROOT" --out "$OUT/roofline" \
    || echo "gpu_check: roofline failed (exit $?)" >&2
echo "gpu_check: CUDA tests exit $tests_rc, throughput run exit $rc; results in $OUT/gpu_check.json"
[ "$tests_rc" -eq 0 ] && [ "$rc" -eq 0 ]
