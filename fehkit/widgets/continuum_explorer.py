"""Explore the continuum fit of one spectrum: polynomial order and clipping limits on sliders, the fit redrawn."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import pandas as pd
from bokeh.layouts import column
from jupyter_bokeh import BokehModel

from fehkit.continuum import normalize
from fehkit.errors import PlotInputError
from fehkit.plots.spectra import (
    continuum_figure,
    continuum_residual_figure,
    continuum_source,
    spectrum_label,
    update_continuum_figure,
    update_continuum_residual_figure,
)
from fehkit.spectra import CHIPS, SpectrumBatch
from fehkit.widgets._bokeh import ensure_bokehjs

#: Diagnostics columns shown under the plot (the Legendre coefficients are left out).
DIAGNOSTIC_COLUMNS = ("chip", "n_pixels", "n_used", "n_iter", "converged", "noise_scale", "flag")


class ContinuumExplorer(widgets.VBox):
    """A notebook widget that re-runs :func:`fehkit.continuum.normalize` on one spectrum as its settings change.

    A drop-down picks the spectrum; sliders set the Legendre order per detector (1-6) and the clipping limits
    below (``low``) and above (``high``) the fit, in noise sigma. Each change re-fits that one spectrum. The upper
    panel is the spectrum with its fitted continuum; the lower one the relative residual ``(flux - continuum) /
    continuum`` with its running median, where a change of the fit by a fraction of a percent shows (both share
    the wavelength zoom). Every change updates the data of the same figures, so a zoom stays where it is; the
    diagnostics of the three detectors are shown under the plot. Given the true continuum of simulated spectra,
    it is drawn too, the residual panel shows its offset from the fit, and the table adds the median relative
    error of the fit against it.

    Parameters
    ----------
    batch : SpectrumBatch
        Spectra in flux units (not normalized).
    true_continuum : (n_spec, n_pix) float, optional
        The true continuum (``Simulation.continuum``), for synthetic spectra only.

    Attributes
    ----------
    result : fehkit.continuum.Normalized
        The latest fit of the selected spectrum (a batch of one).
    figure, residual_figure : bokeh.plotting.figure
        The two panels, inside ``plot`` (one :class:`jupyter_bokeh.BokehModel`); they are made once.

    Examples
    --------
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4800, 5200], "logg": [1.5, 3.0], "feh": [-2.5, -3.0], "vmic": [1.8, 1.2],
    ...                 "snr": [100, 60]}, seed=1)
    >>> explorer = ContinuumExplorer(sim.batch, sim.continuum)
    >>> explorer.order.value = 5
    >>> explorer.select.value = 1
    >>> list(explorer.diagnostics.chip), int(explorer.diagnostics.n_iter.max()) > 0
    (['blue', 'green', 'red'], True)
    """

    def __init__(self, batch: SpectrumBatch, true_continuum: np.ndarray | None = None) -> None:
        if true_continuum is not None and np.shape(true_continuum) != batch.flux.shape:
            raise PlotInputError(f"true_continuum: expected shape {batch.flux.shape} (like batch.flux), found "
                                 f"{np.shape(true_continuum)}")
        self.batch = batch
        self.true_continuum = true_continuum
        labels = [spectrum_label(batch, i) for i in range(batch.n_spectra)]
        self.select = widgets.Dropdown(options=list(zip(labels, range(batch.n_spectra), strict=True)),
                                       description="spectrum", layout=widgets.Layout(width="420px"))
        slider = dict(continuous_update=False, style={"description_width": "110px"},
                      layout=widgets.Layout(width="330px"))
        self.order = widgets.IntSlider(value=3, min=1, max=6, description="order", **slider)
        self.low = widgets.FloatSlider(value=2.0, min=0.5, max=5.0, step=0.25, description="clip below (σ)",
                                       **slider)
        self.high = widgets.FloatSlider(value=3.0, min=0.5, max=6.0, step=0.25, description="clip above (σ)",
                                        **slider)
        self.details = widgets.HTML()
        ensure_bokehjs()
        self._fit()
        truth = self._truth()
        self.figure = continuum_figure(self._spectrum, self.result.continuum, 0, true_continuum=truth,
                                       height=300)
        self.residual_figure = continuum_residual_figure(self._spectrum, self.result.continuum, 0, truth,
                                                         x_range=self.figure.x_range, height=220)
        self.plot = BokehModel(column(self.figure, self.residual_figure, sizing_mode="stretch_width"))
        self.select.observe(self._new_spectrum, names="value")
        for control in (self.order, self.low, self.high):
            control.observe(self._new_settings, names="value")
        self.controls = widgets.HBox([self.order, self.low, self.high])
        super().__init__([self.select, self.controls, self.plot, self.details])

    @property
    def index(self) -> int:
        """Row of the selected spectrum in ``batch``."""
        return int(self.select.value)

    @property
    def diagnostics(self) -> pd.DataFrame:
        """Diagnostics of the current fit: one row per detector of the selected spectrum."""
        return self.result.diagnostics

    def _fit(self) -> None:
        self._spectrum = self.batch.select([self.index])
        self.result = normalize(self._spectrum, order=int(self.order.value), low=float(self.low.value),
                                high=float(self.high.value))
        self.details.value = self._details_html()

    def _truth(self) -> np.ndarray | None:
        return None if self.true_continuum is None else np.asarray(self.true_continuum[[self.index]])

    def _new_spectrum(self, change: dict) -> None:
        self._fit()
        # the same figures, the new star's data: BokehModel sends the changes, no model is rebuilt or left behind
        update_continuum_figure(self.figure, self._spectrum, self.result.continuum, 0, true_continuum=self._truth())
        update_continuum_residual_figure(self.residual_figure, self._spectrum, self.result.continuum, 0,
                                         self._truth())

    def _new_settings(self, change: dict) -> None:
        self._fit()
        # replace the data of the continuum line and the residual only: the user's zoom stays
        self.figure.select_one({"name": "continuum"}).data_source.data = continuum_source(
            self.batch.wave, self.result.continuum[0])
        update_continuum_residual_figure(self.residual_figure, self._spectrum, self.result.continuum, 0,
                                         self._truth())

    def _details_html(self) -> str:
        table = self.result.diagnostics[list(DIAGNOSTIC_COLUMNS)].copy()
        table["noise_scale"] = table["noise_scale"].map("{:.2f}".format)
        if self.true_continuum is not None:
            wave = self.batch.wave
            fit = self.result.continuum[0].astype(float)
            true = np.asarray(self.true_continuum[self.index], float)
            good = ~self.result.batch.mask[0] & np.isfinite(fit) & (true > 0)
            errors = []
            for chip in table["chip"]:
                lo, hi = CHIPS.get(chip, (np.nan, np.nan))
                sel = good & (wave >= lo) & (wave <= hi)
                errors.append(f"{100 * np.median(np.abs(fit[sel] / true[sel] - 1)):.2f}%" if sel.any() else "")
            table["median |fit/true - 1| (SYNTHETIC truth)"] = errors
        caption = (f"{html.escape(spectrum_label(self.batch, self.index))}: order {self.order.value}, clipped "
                   f"{self.low.value:g}σ below and {self.high.value:g}σ above the fit")
        return f"<b>{caption}</b>" + table.to_html(index=False, border=0)
