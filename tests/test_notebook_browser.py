"""The notebooks in a real browser: JupyterLab on loopback, driven by Chromium through Playwright.

nbval runs the notebooks headless, which cannot see whether the Bokeh plots and the ipywidgets apps actually render
in JupyterLab (offline BokehJS, widget manager, jupyter_bokeh). These tests run every cell of every notebook in the
browser, check that each Bokeh figure draws (a visible, non-blank canvas) and that no cell or widget failed, and drive
the widgets as a user would: pick another star in the viewers' drop-downs (00, 04), watch the network's loss curve
grow while it trains (04, ``TrainingDashboard``), move a weight slider and see the MAE change (04,
``FusionExplorer``), move the [Fe/H] slider of the curve-of-growth explorer (05) and the Teff offset of the
validation dashboard (06), checking each time that the plot changed; and build two widgets in a fresh notebook
that never calls ``output_notebook`` (they load BokehJS themselves). Screenshots of every notebook and widget are
saved in ``FEHKIT_SCREENSHOTS`` (a folder; default the test's temporary folder).

They need Debian's Chromium (`make browser-deps`, as root) and the `playwright` package ([dev] extra); without
them they are skipped, unless FEHKIT_REQUIRE_BROWSER=1 (set by .ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "00_quickstart.ipynb"
FEH_NOTEBOOK = NOTEBOOKS / "04_feh_ensemble.ipynb"
COG_NOTEBOOK = NOTEBOOKS / "05_hband_physics.ipynb"
RECAL_NOTEBOOK = NOTEBOOKS / "06_recalibration.ipynb"


def _fresh_notebook() -> Path:
    """A new notebook that builds two widgets and never calls ``output_notebook``: they must load BokehJS themselves."""
    import tempfile

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "from fehkit import read_apogee\nfrom fehkit.examples import example_paths\n"
        "from fehkit.widgets import CurveOfGrowthExplorer, SpectrumViewer\nbatch = read_apogee(example_paths())",
        "SpectrumViewer(batch)",
        "CurveOfGrowthExplorer()",
    )]
    path = Path(tempfile.mkdtemp(prefix="fehkit-fresh-")) / "fresh_widgets.ipynb"
    nbformat.write(nb, path)
    return path


#: Notebooks with no widget test of their own: each runs to the end and draws every figure.
PLAIN_NOTEBOOKS = sorted(set(NOTEBOOKS.glob("*.ipynb")) - {NOTEBOOK, FEH_NOTEBOOK, COG_NOTEBOOK, RECAL_NOTEBOOK})
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

#: True once the current notebook's kernel is idle (needs --LabApp.expose_app_in_browser=True).
KERNEL_IDLE = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
   const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
   return !!k && k.status === 'idle'; }"""

#: Per code cell of the current notebook: its execution count and its outputs (nbformat JSON).
CODE_CELLS = """() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)
   .filter(c => c.type === 'code')
   .map(c => ({count: c.executionCount, outputs: c.outputs.toJSON()}))"""


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("FEHKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {why}")
        pytest.skip(why)


@pytest.fixture
def lab(request, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook ``request.param``; yields its base url."""
    notebook = request.param
    shutil.copy(notebook, tmp_path / notebook.name)
    home = tmp_path / "jhome"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # no "Jupyter news?" pop-up over the notebook (`jupyter labextension disable --level=user` writes the same)
    (home / "config" / "labconfig").mkdir(parents=True)
    (home / "config" / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
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


@contextlib.contextmanager
def _browser_page() -> Iterator[tuple[object, list[str]]]:
    """A Chromium page (1400 x 1000) and the list its uncaught JavaScript errors go to; skips without a browser."""
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
            yield page, errors
        finally:
            browser.close()


def _run_all_cells(page, url: str) -> None:
    """Open the notebook at ``url``, wait for its kernel and start Run > Run All Cells."""
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def _changed(before: bytes, after: bytes) -> float:
    """Share of the pixels that differ by more than 16 grey levels (1.0 when the sizes differ)."""
    a, b = _pixels(before), _pixels(after)
    return float((np.abs(a - b) > 16).mean()) if a.shape == b.shape else 1.0


def _settled(page, element, than: bytes | None = None, timeout: float = 30.0) -> bytes:
    """A screenshot of ``element`` once two in a row 0.5 s apart agree, are not blank and differ from ``than``.

    Bokeh draws asynchronously, after the kernel round trip; this waits for the drawing to finish instead of sleeping a
    fixed time. After ``timeout`` seconds it returns the last screenshot, for the caller's assertion to judge.
    """
    end = time.monotonic() + timeout
    last = element.screenshot(timeout=30_000)
    while time.monotonic() < end:
        page.wait_for_timeout(500)
        shot = element.screenshot(timeout=30_000)
        if shot == last and _pixels(shot).std() > 10 and (than is None or _changed(than, shot) > 0.01):
            return shot
        last = shot
    return last


def _shots(tmp_path: Path) -> Path:
    """The folder screenshots go to: ``FEHKIT_SCREENSHOTS`` when set, else the test's temporary folder."""
    folder = Path(os.environ.get("FEHKIT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_to_the_end(page, url: str, timeout_s: float = 240) -> list[dict]:
    """Run every cell of the notebook at ``url``; wait until all ran (or one failed); return the code cells."""
    _run_all_cells(page, url)
    return _wait_until_done(page, timeout_s)


def _wait_until_done(page, timeout_s: float = 240) -> list[dict]:
    """Wait until every code cell ran (or one failed), with no cell in error; return the code cells."""
    page.wait_for_function(
        f"""() => {{ if (!({KERNEL_IDLE})()) return false;
            const cells = ({CODE_CELLS})();
            return cells.every(c => c.count !== null)
                || cells.some(c => c.outputs.some(o => o.output_type === 'error')); }}""",
        timeout=timeout_s * 1000, polling=500)
    cells = page.evaluate(CODE_CELLS)
    failed = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not failed, "\n".join(f"{o['ename']}: {o['evalue']}" for o in failed)
    assert all(c["count"] is not None for c in cells), [c["count"] for c in cells]
    return cells


def _every_figure_draws(page, folder: Path, name: str) -> int:
    """Scroll to each Bokeh figure of the notebook; each has a visible, non-blank canvas (saved). Return the count."""
    figures = page.locator(".jp-OutputArea-output .bk-Figure")
    n = figures.count()
    for i in range(n):
        fig = figures.nth(i)
        fig.scroll_into_view_if_needed(timeout=30_000)
        fig.locator("canvas").first.wait_for(state="visible", timeout=30_000)
        shot = _settled(page, fig)
        (folder / f"{name}-figure-{i:02d}.png").write_bytes(shot)
        assert _pixels(shot).std() > 10, f"{name}: figure {i} is blank"
    assert page.get_by_text("Error displaying widget").count() == 0, f"{name}: a widget failed to display"
    return n


def _set_slider(page, widget, label: str, value: str) -> None:
    """Type ``value`` into the readout of the slider of ``widget`` labelled ``label`` and press Enter."""
    slider = widget.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=label)).first
    readout = slider.locator(".widget-readout").first
    readout.scroll_into_view_if_needed(timeout=30_000)
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


@pytest.mark.parametrize("lab", PLAIN_NOTEBOOKS, indirect=True, ids=lambda p: p.stem)
def test_every_notebook_runs_and_draws_in_jupyterlab(lab, tmp_path, request):
    notebook = request.node.callspec.params["lab"]
    folder = _shots(tmp_path)
    with _browser_page() as (page, errors):
        _run_to_the_end(page, f"{lab}/lab/tree/{notebook.name}")
        _every_figure_draws(page, folder, notebook.stem)
        page.screenshot(path=str(folder / f"{notebook.stem}.png"))
    assert not errors, errors


@pytest.mark.parametrize("lab", [_fresh_notebook()], indirect=True, ids=["fresh"])
def test_widgets_draw_in_a_fresh_notebook_without_setup(lab, tmp_path):
    folder = _shots(tmp_path)
    with _browser_page() as (page, errors):
        _run_to_the_end(page, f"{lab}/lab/tree/fresh_widgets.ipynb")
        assert _every_figure_draws(page, folder, "fresh") >= 3
        viewer = page.locator(".jp-OutputArea-output .widget-vbox").first
        plot = viewer.locator(".bk-Figure").first
        plot.scroll_into_view_if_needed(timeout=30_000)
        before = _settled(page, plot)
        viewer.locator(".widget-dropdown select").first.select_option(index=1)
        after = _settled(page, plot, than=before)
    assert not errors, errors
    changed = _changed(before, after)
    assert changed > 0.01, f"viewer did not redraw for another star ({changed:.2%} of pixels)"


@pytest.mark.parametrize("lab", [COG_NOTEBOOK], indirect=True)
def test_curve_of_growth_explorer_moves_with_its_feh_slider(lab, tmp_path):
    folder = _shots(tmp_path)
    with _browser_page() as (page, errors):
        _run_to_the_end(page, f"{lab}/lab/tree/{COG_NOTEBOOK.name}")
        _every_figure_draws(page, folder, COG_NOTEBOOK.stem)
        explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=page.locator(".widget-label", has_text="[Fe/H]")).first
        curve = explorer.locator(".bk-Figure").first
        curve.scroll_into_view_if_needed(timeout=30_000)
        before = _settled(page, curve)
        _set_slider(page, explorer, "[Fe/H]", "-1.5")
        after = _settled(page, curve, than=before)
        (folder / "05-cog-before.png").write_bytes(before)
        (folder / "05-cog-after.png").write_bytes(after)
    assert not errors, errors
    changed = _changed(before, after)
    assert changed > 0.01, f"curve of growth did not move with [Fe/H] ({changed:.2%} of pixels)"


@pytest.mark.parametrize("lab", [RECAL_NOTEBOOK], indirect=True)
def test_validation_dashboard_follows_its_teff_offset(lab, tmp_path):
    folder = _shots(tmp_path)
    with _browser_page() as (page, errors):
        _run_to_the_end(page, f"{lab}/lab/tree/{RECAL_NOTEBOOK.name}", timeout_s=300)
        _every_figure_draws(page, folder, RECAL_NOTEBOOK.stem)
        dashboard = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=page.locator(".widget-label", has_text="Teff offset")).first
        panel = dashboard.locator(".bk-Figure").first
        panel.scroll_into_view_if_needed(timeout=30_000)
        before = _settled(page, panel)
        _set_slider(page, dashboard, "Teff offset", "200")
        after = _settled(page, panel, than=before, timeout=90)
        (folder / "06-validation-before.png").write_bytes(before)
        (folder / "06-validation-after.png").write_bytes(after)
    assert not errors, errors
    changed = _changed(before, after)
    assert changed > 0.01, f"validation dashboard did not follow the Teff offset ({changed:.2%} of pixels)"


@pytest.mark.parametrize("lab", [NOTEBOOK], indirect=True)
def test_quickstart_plots_and_viewer_work_in_jupyterlab(lab, tmp_path):
    with _browser_page() as (page, errors):
        _run_all_cells(page, f"{lab}/lab/tree/{NOTEBOOK.name}")
        dropdown = page.locator(".widget-dropdown select").first
        dropdown.wait_for(state="visible", timeout=90_000)
        # two Bokeh plots: the plain figure and the one inside the viewer widget (Playwright's CSS selectors
        # pierce Bokeh's shadow DOM, document.querySelectorAll does not)
        page.locator(".widget-vbox canvas").first.wait_for(state="visible", timeout=60_000)
        page.locator(".jp-OutputArea-output canvas").nth(1).wait_for(state="attached", timeout=60_000)
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.wait_for_timeout(1500)
        viewer = page.locator(".widget-vbox canvas").first
        viewer.scroll_into_view_if_needed()
        before = viewer.screenshot()
        dropdown.select_option(index=1)
        page.wait_for_timeout(3000)  # kernel round trip, new BokehModel, redraw
        after = page.locator(".widget-vbox canvas").first.screenshot()
        page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
        text = page.locator(".jp-NotebookPanel").inner_text()

    assert "Traceback" not in text and not re.search(r"\w+Error:", text), text[-3000:]
    assert "2 spectra x 8575 pixels" in text
    assert "apVisit-dr17-5815-56396-212.fits" in text
    assert not errors, errors
    changed = _changed(before, after)
    assert changed > 0.01, f"viewer plot did not change after picking another star ({changed:.2%} of pixels)"


@pytest.mark.parametrize("lab", [FEH_NOTEBOOK], indirect=True)
def test_feh_notebook_trains_live_and_its_explorers_work_in_jupyterlab(lab, tmp_path):
    folder = _shots(tmp_path)
    with _browser_page() as (page, errors):
        _run_all_cells(page, f"{lab}/lab/tree/{FEH_NOTEBOOK.name}")
        # the training dashboard's loss figure is the notebook's first; it draws while the next cell trains
        loss = page.locator(".jp-OutputArea-output .bk-Figure").first
        loss.wait_for(state="attached", timeout=120_000)
        loss.scroll_into_view_if_needed(timeout=30_000)
        trained = f"""() => ({CODE_CELLS})().some(c => c.outputs.some(o => o.output_type === 'error'
            || (o.output_type === 'stream' && o.text.includes('SYNTHETIC benchmark:'))))"""
        seen: list[bytes] = []
        end = time.monotonic() + 240
        while time.monotonic() < end and not page.evaluate(trained):  # the training cell is still running
            shot = loss.screenshot(timeout=30_000)
            if not seen or shot != seen[-1]:
                seen.append(shot)
            page.wait_for_timeout(500)
        growing = [a for a, b in zip(seen, seen[1:], strict=False) if _changed(a, b) > 0.001]
        for i, shot in enumerate(seen[:: max(1, len(seen) // 4)]):
            (folder / f"04-loss-while-training-{i}.png").write_bytes(shot)

        cells = _wait_until_done(page)
        n_figures = _every_figure_draws(page, folder, FEH_NOTEBOOK.stem)

        # the [Fe/H] explorer: labels "<star_id> · S/N .. · true [Fe/H] ..", sorted by true [Fe/H]; textContent, not
        # innerText, which depends on layout
        explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=page.locator(".widget-dropdown")).filter(has=page.locator(".widget-html")).last
        likelihood = explorer.locator(".widget-hbox .bk-Figure").first
        lines = explorer.locator(".bk-Figure").last
        details = explorer.locator(".widget-html").first
        dropdown = explorer.locator(".widget-dropdown select").first
        labels = dropdown.evaluate("s => Array.from(s.options, o => o.textContent)")
        options = [label.replace("\xa0", " ").split(" · ")[0] for label in labels]
        assert len(options) >= 2 and options[0].startswith("SYN"), labels[:3]
        assert f"SYNTHETIC star {options[0]}," in details.text_content(), details.text_content()
        likelihood.scroll_into_view_if_needed(timeout=30_000)
        before = _settled(page, likelihood), _settled(page, lines)
        pick = len(options) // 2  # a star far in [Fe/H] from the first: the summary names it, both figures redraw
        dropdown.select_option(index=pick)
        page.wait_for_function("([el, star]) => el.textContent.includes(`SYNTHETIC star ${star},`)",
                               arg=[details.element_handle(), options[pick]], timeout=60_000)
        after = _settled(page, likelihood, than=before[0]), _settled(page, lines, than=before[1])

        # the fusion explorer: a weight slider changes the MAE bars and the table
        fusion = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=page.locator(".widget-toggle-buttons")).last
        bars = fusion.locator(".bk-Figure").first
        table = fusion.locator(".widget-html").last
        bars.scroll_into_view_if_needed(timeout=30_000)
        bars_before, table_before = _settled(page, bars), table.text_content()
        # (the notebook's exercises leave the neural net alone in charge: give the forest an equal say)
        _set_slider(page, fusion, "random forest", "1")
        page.wait_for_function("([el, old]) => el.textContent !== old", arg=[table.element_handle(), table_before],
                               timeout=60_000)
        bars_after = _settled(page, bars, than=bars_before)
        for name, shot in (("04-fusion-before", bars_before), ("04-fusion-after", bars_after)):
            (folder / f"{name}.png").write_bytes(shot)
        page.screenshot(path=str(folder / f"{FEH_NOTEBOOK.stem}.png"))

    # the notebook's printed output, from the notebook model: JupyterLab does not lay out off-screen cells, so
    # their text is missing from the page's innerText (and its last cell prints a TamperedModelError on purpose)
    text = "\n".join(o.get("text", "") for c in cells for o in c["outputs"] if o["output_type"] == "stream")
    assert "SYNTHETIC benchmark:" in text and "same predictions: True" in text, text[-3000:]
    assert "TamperedModelError: <tmp>/model/xgb.json" in text, text[-3000:]
    assert not errors, errors
    assert n_figures >= 8, n_figures
    assert len(growing) >= 2, f"the loss figure changed {len(growing)} times while the network trained"
    for name, a, b in zip(("likelihood", "line-EW"), before, after, strict=True):
        changed = _changed(a, b)
        assert changed > 0.01, f"{name} figure did not change after picking another star ({changed:.2%} of pixels)"
    changed = _changed(bars_before, bars_after)
    assert changed > 0.001, f"MAE bars did not change with the forest's weight ({changed:.2%} of pixels)"
