"""Load BokehJS into the notebook page once per kernel, so every widget draws with no setup call.

A :class:`jupyter_bokeh.BokehModel` view builds its plot with the BokehJS library already in the page
(``window.Bokeh``): the ``@bokeh/jupyter_bokeh`` JupyterLab extension brings the widget code but not BokehJS
itself. Without it the widget stays blank. BokehJS comes in the way :func:`bokeh.io.output_notebook` brings it: a
display output of MIME type ``application/vnd.bokehjs_load.v0+json`` (run by the same JupyterLab extension) with
``application/javascript`` beside it for the classic notebook, VS Code and Colab. Here that output carries the
library itself (:data:`bokeh.resources.INLINE`, about 4 MB), so the widgets work offline and behind proxies.

Every widget calls :func:`ensure_bokehjs` in its ``__init__``; the output lands in the cell that builds the first
widget, ahead of the widget's own view. It is published once per kernel (a restarted kernel publishes it again),
and not at all when the user has already called :func:`bokeh.io.output_notebook` in this kernel.
"""

from __future__ import annotations

import bokeh.io.notebook as bokeh_notebook
from bokeh.resources import INLINE

_published = False


def ensure_bokehjs(force: bool = False) -> bool:
    """Publish BokehJS (inline, offline) to the notebook page, once per kernel.

    Parameters
    ----------
    force : bool, default False
        Publish it again even if this kernel already did: for a page that lost it (the output that carried it
        was cleared and the browser tab reloaded while the kernel kept running).

    Returns
    -------
    bool
        True when this call published BokehJS; False when it was already there, or when there is no notebook
        page to publish to (plain Python, a terminal IPython, a test run).

    Examples
    --------
    >>> from fehkit.widgets import ensure_bokehjs
    >>> ensure_bokehjs()  # outside a Jupyter kernel there is no page: nothing is published
    False
    """
    global _published
    if not _in_kernel():
        return False
    if not force and (_published or getattr(bokeh_notebook, "_NOTEBOOK_LOADED", None) is not None):
        return False
    # hide_banner: the "BokehJS loaded" banner means nothing to a widget user
    bokeh_notebook.load_notebook(resources=INLINE, hide_banner=True)
    _published = True
    return True


def _in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel, the only place with a page to send BokehJS to."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
