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
DEMO_OUT ?= fehkit-inspect

.PHONY: demo test lint venv clean browser-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/fehkit inspect --examples --out $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check fehkit tests scripts

test: lint
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider

# Debian's Chromium for tests/test_notebook_browser.py (a real browser over JupyterLab); needs root. Without it that
# one test is skipped. Never `playwright install`: it downloads its own browser.
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
