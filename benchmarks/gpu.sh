#!/usr/bin/env bash
# The GPU-relevant benchmarks of msde_jax in one go, in under 8 minutes on one H100/H200-class
# GPU (the timeouts add up to 7 min 50 s), writing their tables to gpu_results.md in $OUT (the
# device tool's output folder) or in benchmarks/. Run from the repository root on a machine with
# jax[cuda], flax, optax, numpy, scipy, pillow and safetensors installed (nothing is downloaded;
# weights are random where speed does not depend on them):
#
#     bash benchmarks/gpu.sh
#     QUICK=1 bash benchmarks/gpu.sh     # tiny sizes: checks that the script runs (any machine)
#
# Targets (issue 13): MSDE fit at n = 100,000, d = 512 under 5 s; inductive scoring at least
# 1,000,000 embeddings/s against a 10,000-point reference; EfficientNet-Lite0 embedding at least
# 10,000 images/s in bfloat16 (decoded images already on the device).
set -euo pipefail
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
out="${OUT:-benchmarks}/gpu_results.md"
if [[ -n "${QUICK:-}" ]]; then
  FIT_N="1000 5000"; BIG_N=5000; QUERIES=2000; BATCH=32; CROSS_N="600 1200"
  BANK="--bank-images 20 --bank-queries 40"
else
  FIT_N="1000 10000 50000 100000"; BIG_N=100000; QUERIES=1000000; BATCH=1024
  CROSS_N="4096 16384 32768"; BANK="--bank-images 200 --bank-queries 5000"
fi
{
  echo "# msde_jax GPU benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo
  echo "## 1. MSDE fit (density weights + 8-iteration blurring shift, d = 512), warm and cold"
  timeout 170 "$PY" benchmarks/bench_published.py --stacks ours --no-check \
    --n $FIT_N --repeat 3 || echo "(fit benchmark failed or timed out)"
  echo
  echo "## 2. MSDE fit and peak host memory at n = $BIG_N"
  timeout 80 "$PY" benchmarks/bench_scale.py memory --n "$BIG_N" || echo "(failed)"
  echo
  echo "## 3. Scoring throughput: inductive scorers against a 10,000-point reference, patch bank"
  timeout 80 "$PY" benchmarks/bench_scale.py scoring --reference 10000 --queries "$QUERIES" $BANK \
    || echo "(failed)"
  echo
  echo "## 4. Exact vs approximate blurring shift (where neighbors='auto' should switch)"
  timeout 50 "$PY" benchmarks/bench_scale.py crossover --n $CROSS_N --d 512 || echo "(failed)"
  echo
  echo "## 5. Embedding throughput (forward pass on device-resident images)"
  for dtype in bfloat16 float32; do
    timeout 45 "$PY" benchmarks/bench_embed.py --backbones efficientnet_lite0 mobilenet_v2 \
      --random-weights --batch-size "$BATCH" --dtype "$dtype" || echo "(failed: $dtype)"
  done
} 2>&1 | tee "$out"
