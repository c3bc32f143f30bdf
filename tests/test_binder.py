"""Binder's environment: pinned, lean (no test tools), CPU torch, and the README's badge opens the quick start.

The full check, that binder/requirements.txt installs into a fresh virtual environment and runs notebook 00 there,
takes about two minutes with pip's cache (more without it) and needs the internet: `make binder-check`, or this
file with FEHKIT_BINDER_CHECK=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
REQUIREMENTS = ROOT / "binder" / "requirements.txt"
TEST_TOOLS = ("pytest", "nbval", "ruff", "playwright")


def _requirements() -> list[str]:
    return [line.strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_binder_requirements_pin_every_package():
    lines = _requirements()
    packages = [line for line in lines if not line.startswith("--")]
    assert len(packages) > 50, "expected the whole environment, pinned"
    loose = [line for line in packages if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+!\-]+", line)]
    assert not loose, f"not pinned with ==: {loose}"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert any(re.fullmatch(r"torch==[\d.]+\+cpu", line) for line in packages), "expected the CPU build of torch"
    for name in ("jupyterlab", "ipywidgets", "bokeh", "jupyter_bokeh", "numpy", "thecannon"):
        assert any(line.lower().replace("-", "_").startswith(f"{name}==") for line in packages), name


def test_binder_installs_no_test_tools():
    names = {line.split("==")[0].lower() for line in _requirements() if "==" in line}
    assert not names & set(TEST_TOOLS)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lean = " ".join(extras["notebooks"]).lower()
    assert "jupyterlab" in lean and not any(tool in lean for tool in TEST_TOOLS)
    post = (ROOT / "binder" / "postBuild").read_text()
    assert '".[notebooks,peers]"' in post and "dev" not in re.sub(r"#.*", "", post)


def test_readme_badge_opens_the_quickstart_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    url = "https://mybinder.org/v2/gh/fehkit/fehkit/HEAD?urlpath=lab/tree/notebooks/00_quickstart.ipynb"
    assert f"[![Binder](https://mybinder.org/badge_logo.svg)]({url})" in readme
    assert (ROOT / "notebooks" / "00_quickstart.ipynb").exists()


@pytest.mark.skipif(os.environ.get("FEHKIT_BINDER_CHECK") != "1",
                    reason="installs the Binder environment in a fresh venv (~2 min, internet): FEHKIT_BINDER_CHECK=1")
def test_binder_environment_installs_and_runs_notebook_00():
    done = subprocess.run(["make", "binder-check"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "binder-check: binder/requirements.txt installs" in done.stdout
