"""Browse the spectra of a batch: a drop-down of stars above a Bokeh plot (masked pixels, Fe I fit windows)."""

from __future__ import annotations

import ipywidgets as widgets
import pandas as pd
from jupyter_bokeh import BokehModel

from fehkit.plots.spectra import spectrum_figure, update_spectrum_figure
from fehkit.spectra import SpectrumBatch
from fehkit.widgets._bokeh import ensure_bokehjs


class SpectrumViewer(widgets.VBox):
    """A notebook widget showing one spectrum of a batch at a time.

    The plot is a standalone Bokeh figure inside :class:`jupyter_bokeh.BokehModel`, so it works in JupyterLab,
    Binder and VS Code without a Bokeh server; the widget loads BokehJS into the page itself, offline
    (:func:`fehkit.widgets.ensure_bokehjs`). Picking another spectrum changes the data of the same figure, so the
    wavelength zoom stays.

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra to browse.
    lines : pandas.DataFrame, optional
        Line list whose fit windows are marked.

    Examples
    --------
    >>> from fehkit import read_apogee, load_linelist
    >>> from fehkit.examples import example_paths
    >>> viewer = SpectrumViewer(read_apogee(example_paths()), load_linelist())
    >>> viewer.select.options[0][0]
    '2M17335483-2753043 (row 0, S/N 154)'
    """

    def __init__(self, batch: SpectrumBatch, lines: pd.DataFrame | None = None) -> None:
        self.batch = batch
        self.lines = lines
        labels = [
            f"{m.get('star_id', i)} (row {m.get('row', 0)}, S/N {m.get('snr', float('nan')):.0f})"
            for i, m in enumerate(batch.meta.to_dict(orient="records"))
        ]
        self.select = widgets.Dropdown(options=list(zip(labels, range(batch.n_spectra), strict=True)),
                                       description="spectrum", layout=widgets.Layout(width="420px"))
        ensure_bokehjs()
        self.figure = spectrum_figure(batch, 0, lines=lines)
        self.plot = BokehModel(self.figure)
        self.select.observe(self._show, names="value")
        super().__init__([self.select, self.plot])

    def _show(self, change: dict) -> None:
        # the same figure, the new spectrum's data: BokehModel sends the changes, the zoom stays
        update_spectrum_figure(self.figure, self.batch, int(change["new"]))
