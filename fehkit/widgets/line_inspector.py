"""Inspect the EW fit of any line of any spectrum: the window, the fitted profile, the numbers and the flag."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
from jupyter_bokeh import BokehModel

from fehkit.errors import PlotInputError
from fehkit.ew import EWTable
from fehkit.plots.line_fits import check_line_fit_inputs, line_fit_figure, update_line_fit_figure
from fehkit.plots.spectra import spectrum_label
from fehkit.spectra import SpectrumBatch
from fehkit.widgets._bokeh import ensure_bokehjs


class LineInspector(widgets.VBox):
    """A notebook widget showing the fit of one line of one spectrum of an :class:`~fehkit.ew.EWTable`.

    One drop-down picks the spectrum, another the line (labelled by wavelength and flag); the plot is
    :func:`fehkit.plots.line_fit_figure` and a small table beside it lists that line's numbers (the upper limit
    only for a line that was not detected). Each choice changes the data of the same figure
    (:func:`fehkit.plots.update_line_fit_figure`); nothing is rebuilt. Given the true EWs of simulated spectra,
    the table adds the true EW, labelled as synthetic truth.

    Parameters
    ----------
    norm_batch : SpectrumBatch
        The continuum-normalized spectra the table was measured on.
    table : EWTable
        The result of :func:`fehkit.ew.measure_ew` on ``norm_batch``.
    truth_ew : (n_spec, n_lines) float, optional
        True EWs in mA (``Simulation.ew``), for synthetic spectra only.

    Examples
    --------
    >>> from fehkit.continuum import normalize
    >>> from fehkit.ew import measure_ew
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4700, 4900], "logg": [1.4, 1.8], "feh": [-2.0, -3.0], "vmic": [1.9, 1.7],
    ...                 "snr": [150, 80]}, seed=2)
    >>> norm_batch = normalize(sim.batch).batch
    >>> inspector = LineInspector(norm_batch, measure_ew(norm_batch, mc_draws=0), truth_ew=sim.ew)
    >>> inspector.line.value = 2
    >>> inspector.line.label
    '15298.74 Å: ok'
    >>> "true EW (SYNTHETIC truth)" in inspector.details.value
    True
    """

    def __init__(self, norm_batch: SpectrumBatch, table: EWTable, truth_ew: np.ndarray | None = None) -> None:
        check_line_fit_inputs(norm_batch, table)
        if truth_ew is not None and np.shape(truth_ew) != table.ew_mA.shape:
            raise PlotInputError(f"truth_ew: expected shape {table.ew_mA.shape} (spectra x lines), found "
                                 f"{np.shape(truth_ew)}")
        self.batch = norm_batch
        self.table = table
        self.truth_ew = truth_ew
        self._flags = table.flag
        self._relabelling = False
        self._reasons = table.reasons
        labels = [spectrum_label(norm_batch, i) for i in range(norm_batch.n_spectra)]
        self.select = widgets.Dropdown(options=list(zip(labels, range(norm_batch.n_spectra), strict=True)),
                                       description="spectrum", layout=widgets.Layout(width="420px"))
        self.line = widgets.Dropdown(options=self._line_options(0), description="line",
                                     layout=widgets.Layout(width="300px"))
        self.details = widgets.HTML(layout=widgets.Layout(width="330px"))
        ensure_bokehjs()
        self.figure = line_fit_figure(norm_batch, table, 0, int(self.line.value))
        self.plot = BokehModel(self.figure)
        self.details.value = self._details_html()
        self.select.observe(self._new_spectrum, names="value")
        self.line.observe(self._show, names="value")
        self.controls = widgets.HBox([self.select, self.line])
        super().__init__([self.controls, widgets.HBox([self.plot, self.details])])

    @property
    def index(self) -> int:
        """Row of the selected spectrum."""
        return int(self.select.value)

    def _line_options(self, i: int) -> list[tuple[str, int]]:
        waves = self.table.lines["wave_vac"].to_numpy(float)
        return [(f"{w:.2f} Å: {f}", k) for k, (w, f) in enumerate(zip(waves, self._flags[i], strict=True))]

    def _new_spectrum(self, change: dict) -> None:
        k = self.line.value
        # the labels carry this spectrum's flags; new options reset the selection, so keep the same line and
        # redraw once, not for every step of the reset
        self._relabelling = True
        try:
            self.line.options = self._line_options(self.index)
            self.line.value = k
        finally:
            self._relabelling = False
        self._show({"new": k})

    def _show(self, change: dict) -> None:
        if self._relabelling:
            return
        update_line_fit_figure(self.figure, self.batch, self.table, self.index, int(self.line.value))
        self.details.value = self._details_html()

    def _details_html(self) -> str:
        t, i, k = self.table, self.index, int(self.line.value)
        window = t.lines.iloc[k]
        usable = int((~self.batch.mask[i] & (self.batch.wave >= window["window_lo"])
                      & (self.batch.wave <= window["window_hi"])).sum())

        def num(a: np.ndarray, fmt: str = "{:.2f}", unit: str = "") -> str:
            v = float(a[i, k])
            return fmt.format(v) + unit if np.isfinite(v) else "n/a"

        rows = [
            ("EW", num(t.ew_mA, "{:.1f}", " mÅ")),
            ("error (fit)", num(t.ew_err_mA, "{:.1f}", " mÅ")),
            ("error (Monte Carlo)", num(t.ew_err_mc_mA, "{:.1f}", " mÅ")),
        ]
        if self._flags[i, k] == "upper_limit":  # a detected line has no upper limit to show
            rows.append((f"upper limit ({t.detection_sigma:g}σ)", "< " + num(t.ew_upper_mA, "{:.1f}", " mÅ")))
        if self.truth_ew is not None:
            rows.append(("true EW (SYNTHETIC truth)", f"{float(self.truth_ew[i, k]):.1f} mÅ"))
        rows += [
            ("flag", self._flags[i, k]),
            ("reasons", self._reasons[i, k] or "none"),
            ("line shape", "its own (free)" if t.free_shape[i, k] else "the star's shared shape"),
            ("centre offset", num(t.rv_kms, "{:+.1f}", " km/s")),
            ("Gaussian σ", num(t.sigma_A, "{:.3f}", " Å")),
            ("Lorentz γ", num(t.gamma_A, "{:.3f}", " Å")),
            ("local continuum", num(t.continuum, "{:.3f}")),
            ("reduced χ²", num(t.chi2_red, "{:.2f}")),
            ("pixels fitted / unmasked in window", f"{int(t.n_pix[i, k])} / {usable}"),
        ]
        body = "".join(f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(str(b))}</b></td></tr>" for a, b in rows)
        head = f"{html.escape(spectrum_label(self.batch, i))}<br>Fe I {float(window['wave_vac']):.2f} Å"
        return f"<div style='font-size:90%'>{head}<table>{body}</table></div>"
