#!/usr/bin/env bash
# Wheels of what fehkit's GPU checks need beyond a PyTorch image, into .whl/ (~20 MB), for a GPU machine that has
# PyTorch, NumPy, SciPy, pandas, scikit-learn, numba, tqdm and pytest but no package registry: astropy (with pyerfa
# and its IERS data), fitsio, xgboost-cpu and skops (with prettytable and wcwidth). Copy or carry .whl/ with the
# repository; scripts/gpu_check.sh installs them (pip --no-index --target) before it runs. Versions: the ones
# installed here (so the GPU runs what the CPU tests ran), else the newest.
#   PYVER    the GPU machine's Python, major.minor (default 3.12)
#   PY       this machine's Python, which has fehkit's dependencies installed (default .venv/bin/python)
#   DEST     where the wheels go (default .whl)
set -euo pipefail
PYVER=${PYVER:-3.12}
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
# what the image lacks; the rest of fehkit's dependencies (specutils, bokeh, ...) are not imported by the checks
PACKAGES=(astropy pyerfa astropy-iers-data fitsio xgboost-cpu skops prettytable wcwidth)
specs=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  specs+=("$name${version:+==$version}")
done
# written whole: into a new folder beside DEST, then renamed; an existing DEST is replaced only if this script made it
if [ -e "$DEST" ] && [ ! -e "$DEST/.fehkit-gpu-wheels" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
  echo "gpu_wheels: $DEST exists and was not made by this script; expected an absent or empty folder" >&2
  exit 1
fi
tmp=$(mktemp -d "${DEST%/}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp" "${specs[@]}"
echo "wheels for Python $PYVER made by scripts/gpu_wheels.sh: ${specs[*]}" > "$tmp/.fehkit-gpu-wheels"
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
ls -l "$DEST"
du -sh "$DEST"
