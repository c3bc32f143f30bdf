"""Every widget loads BokehJS into the page itself: inline (offline), once per kernel, with no setup call.

Given a kernel whose page has no BokehJS yet, when a widget is made, then the BokehJS library itself (not a link to
a CDN) is published once, in the MIME types JupyterLab's jupyter_bokeh extension and the classic notebook run.
"""

from __future__ import annotations

import bokeh
import bokeh.io.notebook as bokeh_notebook
import pytest

from fehkit.io import read_apogee
from fehkit.widgets import SpectrumViewer, _bokeh, ensure_bokehjs


@pytest.fixture
def page(monkeypatch):
    """A fresh kernel with a page: what it publishes lands in the returned list."""
    published: list[dict] = []
    monkeypatch.setattr(_bokeh, "_in_kernel", lambda: True)
    monkeypatch.setattr(_bokeh, "_published", False)
    monkeypatch.setattr(bokeh_notebook, "_NOTEBOOK_LOADED", None)
    monkeypatch.setattr(bokeh_notebook, "publish_display_data", lambda data, *a, **k: published.append(data))
    return published


def test_bokehjs_is_published_inline_once_per_kernel(page):
    assert ensure_bokehjs() is True
    assert len(page) == 1
    js = page[0][bokeh_notebook.LOAD_MIME_TYPE]
    assert bokeh_notebook.JS_MIME_TYPE in page[0]  # the classic notebook, VS Code and Colab run this one
    assert len(js) > 1_000_000 and bokeh.__version__ in js  # the library itself, this version
    assert "cdn.bokeh.org" not in js  # nothing fetched from the internet
    assert ensure_bokehjs() is False and len(page) == 1  # once per kernel
    assert ensure_bokehjs(force=True) is True and len(page) == 2  # unless asked again


def test_a_widget_loads_bokehjs_itself(page, examples):
    SpectrumViewer(read_apogee(examples))
    SpectrumViewer(read_apogee(examples))
    assert len(page) == 1 and bokeh_notebook.LOAD_MIME_TYPE in page[0]


def test_no_second_copy_after_output_notebook(page):
    bokeh_notebook.load_notebook(hide_banner=True)  # what output_notebook() does
    assert ensure_bokehjs() is False and len(page) == 1


def test_nothing_is_published_outside_a_kernel(monkeypatch):
    published: list[dict] = []
    monkeypatch.setattr(_bokeh, "_published", False)
    monkeypatch.setattr(bokeh_notebook, "publish_display_data", lambda data, *a, **k: published.append(data))
    assert ensure_bokehjs() is False and published == []
