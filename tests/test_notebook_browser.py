"""The quick-start notebook in a real browser: JupyterLab on loopback, driven by Chromium through Playwright.

nbval runs the notebook headless, which cannot see whether the Bokeh plots and the ipywidgets viewer actually
render in JupyterLab (offline BokehJS, widget manager, jupyter_bokeh). This test runs every cell in the browser,
waits for the plots, picks the other star in the viewer's drop-down and checks that the plot changed.

It needs Debian's Chromium (`make browser-deps`, as root) and the `playwright` package ([dev] extra); without
them it is skipped, unless FEHKIT_REQUIRE_BROWSER=1 (set by .ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "00_quickstart.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("FEHKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {why}")
        pytest.skip(why)


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook; yields its base url."""
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    home = tmp_path / "jhome"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "lab.log", "w")  # closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def test_quickstart_plots_and_viewer_work_in_jupyterlab(lab, tmp_path):
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (run `make browser-deps` as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install -e '.[dev]')")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
            page.wait_for_function(
                """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                   return k && k.status === 'idle'; }""", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            dropdown = page.locator(".widget-dropdown select").first
            dropdown.wait_for(state="visible", timeout=90_000)
            # two Bokeh plots: the plain figure and the one inside the viewer widget (Playwright's CSS selectors
            # pierce Bokeh's shadow DOM, document.querySelectorAll does not)
            page.locator(".widget-vbox canvas").first.wait_for(state="visible", timeout=60_000)
            page.locator(".jp-OutputArea-output canvas").nth(1).wait_for(state="attached", timeout=60_000)
            page.wait_for_function(
                """() => { const w = window.jupyterapp.shell.currentWidget;
                   return w.sessionContext.session.kernel.status === 'idle'; }""", timeout=120_000)
            page.wait_for_timeout(1500)
            viewer = page.locator(".widget-vbox canvas").first
            viewer.scroll_into_view_if_needed()
            before = viewer.screenshot()
            dropdown.select_option(index=1)
            page.wait_for_timeout(3000)  # kernel round trip, new BokehModel, redraw
            after = page.locator(".widget-vbox canvas").first.screenshot()
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            text = page.locator(".jp-NotebookPanel").inner_text()
        finally:
            browser.close()

    assert "Traceback" not in text and not re.search(r"\w+Error:", text), text[-3000:]
    assert "2 spectra x 8575 pixels" in text
    assert "apVisit-dr17-5815-56396-212.fits" in text
    assert not errors, errors
    a, b = _pixels(before), _pixels(after)
    changed = (np.abs(a - b) > 16).mean() if a.shape == b.shape else 1.0
    assert changed > 0.01, f"viewer plot did not change after picking another star ({changed:.2%} of pixels)"
