#!/usr/bin/env bash
# GPU checks in one call (for a lent GPU machine, or any CUDA box): the CUDA tests (EW engine, MLP, trees as
# tensors, continuum and classical likelihood as tensors, fehkit.infer on cuda against the CPU), then
# `fehkit bench --device cuda`. Run from the repository root. Needs fehkit's dependencies importable: on a PyTorch
# image with no package registry, make the missing wheels here first (`bash scripts/gpu_wheels.sh`, into .whl/),
# bring .whl/ along, and this script installs them into $SITE. Prints the device; writes $OUT/bench_gpu.json and
# $OUT/bench_ew_gpu.json when OUT is set (default: here).
#   DEVICE=cpu N=2000 bash scripts/gpu_check.sh   the same steps on the CPU (a dry run of the script)
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-.}
N=${N:-100000}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/fehkit-site}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # fehkit from this folder, installed or not
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
$PY -c "import fehkit.infer, fehkit.bench, astropy.io.fits, xgboost, skops.io" || {
  echo "gpu_check: fehkit's dependencies are not importable with $PY: bring .whl/ (scripts/gpu_wheels.sh)" >&2
  exit 1
}
$PY -c "import torch; c = torch.cuda.is_available()
print('torch', torch.__version__, 'cuda', c, torch.cuda.get_device_name(0) if c else '')"
if [ "$DEVICE" = cuda ]; then
  $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device')"
fi
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_ew.py -k "torch or cuda"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_mlp_cuda.py tests/test_trees.py tests/test_infer.py
# the torch engine's continuum fit and classical likelihood on the GPU against NumPy
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_continuum.py tests/test_joint.py -k torch
$PY scripts/bench_ew.py --n 1000 --no-baseline --json "$OUT/bench_ew_gpu.json"
# the whole path on the GPU: N synthetic spectra in memory (the model is trained first, ~1 min on the CPU)
$PY -m fehkit bench --n "$N" --device "$DEVICE" --no-cannon --no-files --baseline-n 20 --json "$OUT/bench_gpu.json"
