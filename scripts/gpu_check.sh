#!/usr/bin/env bash
# GPU checks in one call (for a lent GPU machine, or any CUDA box): the CUDA tests (EW engine, MLP, trees as
# tensors, continuum and classical likelihood as tensors, fehkit.infer on cuda against the CPU), then
# `fehkit bench --device cuda`. Needs fehkit's dependencies importable (a venv carried along, or installed). Prints the device; writes $OUT/bench_gpu.json and
# $OUT/bench_ew_gpu.json when OUT is set (default: here).
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-.}
N=${N:-100000}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_ew.py -k "torch or cuda"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_mlp_cuda.py tests/test_trees.py tests/test_infer.py
# the torch engine's continuum fit and classical likelihood on the GPU against NumPy
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_continuum.py tests/test_joint.py -k torch
$PY scripts/bench_ew.py --n 1000 --no-baseline --json "$OUT/bench_ew_gpu.json"
# the whole path on the GPU: N synthetic spectra in memory (the model is trained first, ~1 min on the CPU)
$PY -m fehkit bench --n "$N" --device cuda --no-cannon --no-files --baseline-n 20 --json "$OUT/bench_gpu.json"
