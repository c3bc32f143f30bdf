#!/usr/bin/env bash
# GPU checks in one call (for the lent GPU machine, or any CUDA box): the torch EW engine against numpy on CUDA,
# then the EW benchmark with its CUDA rows. Needs fehkit's dependencies importable (a venv carried along, or
# installed); prints the device, writes $OUT/bench_ew_gpu.json when OUT is set.
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-.}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -m pytest -q -p no:cacheprovider tests/test_ew.py -k "torch" -o addopts=""
$PY scripts/bench_ew.py --n 1000 --no-baseline --json "$OUT/bench_ew_gpu.json"
# the ensemble's MLP member on CUDA (same weights on CPU give the same predictions)
$PY -m pytest -q -p no:cacheprovider tests/test_mlp_cuda.py -o addopts=""
