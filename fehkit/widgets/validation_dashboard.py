"""Validate [Fe/H] against labelled stars: 1:1, residual trends, linked selection, a Teff offset, robustness."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
from jupyter_bokeh import BokehModel

from fehkit.errors import PlotInputError
from fehkit.evaluate import score
from fehkit.plots.style import model_color, model_label
from fehkit.plots.validation import (
    RESIDUAL_AXES,
    one_to_one_label,
    robustness_row,
    teff_offset_title,
    update_bands,
    validation_data,
    validation_grid,
    validation_source,
)
from fehkit.recalibration import TeffSensitivity, binned_residuals
from fehkit.spectra import is_synthetic
from fehkit.widgets._bokeh import ensure_bokehjs

#: Model columns the drop-down offers, where the predictions have them.
MODEL_CHOICES = ("feh", "feh_cog", "feh_rf", "feh_xgb", "feh_dnn")


class ValidationDashboard(widgets.VBox):
    """A notebook widget for checking [Fe/H] predictions against reference labels, as a recalibration needs.

    Top left, predicted against reference [Fe/H] (upper limits as triangles); below it the residuals against
    Teff, log g, S/N and the reference [Fe/H], each with the binned mean and its 95% bootstrap band
    (:func:`fehkit.recalibration.binned_residuals`). All star panels draw from one Bokeh source: a box or lasso
    selection in any panel highlights the same stars in every other, and the numbers of the selected stars are shown
    beside. A drop-down picks the model shown (the ensemble, the classical joint likelihood or one member).

    The Teff-offset slider re-runs the prediction with every star's Teff moved by that many kelvin
    (:class:`fehkit.recalibration.TeffSensitivity`: the trained model on the stars' spectra): top right, each star's
    change of [Fe/H]; on the 1:1 panel, the predictions moved by it (open circles); beside, the mean shift and the
    bias it would leave against the labels. That shift is what a recalibration has to absorb when the reference
    catalogue's Teff scale differs from the one the model is later given. Below, the robustness scenarios side by
    side (:func:`fehkit.robustness.run_robustness`: MAE and bias of the ensemble and the classical method on
    simulated spectra made with physics the analysis does not know).

    Every change updates the data of the same figures in place. The widget computes nothing itself.

    Parameters
    ----------
    evaluation : TableEvaluation or DataFrame
        :func:`fehkit.training.validate_table`'s result (its ``predictions``: cross-validated, one row per star),
        or such a predictions table: ``feh_ref`` (or ``true_feh``), ``feh``, ``flag``, ``teff``, ``logg``, ``snr``.
    sensitivity : TeffSensitivity, optional
        The trained model on the same stars, in the same order (``TeffSensitivity.from_table(model, table)``);
        without it the Teff-offset slider is disabled.
    robustness : dict, optional
        :func:`fehkit.robustness.run_robustness`'s result; without it the robustness row is left out.
    n_bins, n_boot : int
        Bins of each residual panel (equal numbers of stars) and bootstrap resamples of their bands.

    Examples
    --------
    >>> res = validate_table("standin/table.csv", folds=3)  # doctest: +SKIP
    >>> dash = ValidationDashboard(res, TeffSensitivity.from_table(model, "standin/table.csv"))  # doctest: +SKIP
    >>> dash.teff_offset.value = 100  # doctest: +SKIP
    >>> dash.source.selected.indices = [0, 3, 5]  # the same stars highlighted in every panel  # doctest: +SKIP
    """

    def __init__(self, evaluation: Any, sensitivity: TeffSensitivity | None = None,
                 robustness: Mapping[str, Mapping[str, Any]] | None = None, *, n_bins: int = 5,
                 n_boot: int = 1000) -> None:
        ensure_bokehjs()
        pred = getattr(evaluation, "predictions", evaluation)
        if not isinstance(pred, pd.DataFrame):
            raise PlotInputError(f"evaluation: a {type(evaluation).__name__}; expected fehkit.training."
                                 "validate_table's result or its predictions table")
        pred = pred.reset_index(drop=True)
        self.truth = "feh_ref" if "feh_ref" in pred else "true_feh"
        if self.truth not in pred:
            raise PlotInputError(f"evaluation: no feh_ref (or true_feh) column; found {list(pred.columns)}")
        pred = _with_parameters(pred)
        self.predictions = pred
        given = not isinstance(evaluation, pd.DataFrame)  # a TableEvaluation (a table's "synthetic" is a column)
        self.metrics = dict(evaluation.metrics or {}) if given and hasattr(evaluation, "metrics") else {}
        self.synthetic = (given and bool(getattr(evaluation, "synthetic", False))) or is_synthetic(pred)
        if sensitivity is not None:
            _check_same_stars(pred, sensitivity)
        self.sensitivity = sensitivity
        self.robustness = dict(robustness) if robustness else None
        self.n_bins, self.n_boot = int(n_bins), int(n_boot)

        choices = [(model_label(c), c) for c in MODEL_CHOICES if c in pred and np.isfinite(pred[c]).any()]
        self.model = widgets.Dropdown(options=choices, value="feh", description="model",
                                      layout=widgets.Layout(width="300px"))
        self.teff_offset = widgets.IntSlider(value=0, min=-300, max=300, step=25, description="Teff offset (K)",
                                             continuous_update=False, disabled=sensitivity is None,
                                             style={"description_width": "110px"},
                                             layout=widgets.Layout(width="420px"))
        self.summary = widgets.HTML()
        self.caption = widgets.HTML(
            "<small>Residual panels: dots are stars (predicted - reference); the line is the mean per bin (equal "
            "numbers of stars), the shaded band its 95% bootstrap interval. Drag a box or lasso in any panel: the "
            "same stars are highlighted in all.</small>")
        self.selection = widgets.HTML()

        self.source = validation_source(pred, "feh", truth=self.truth)
        self.bands = self._bands()
        self.grid = validation_grid(self.source, self.bands, "feh", synthetic=self.synthetic)
        self.plot = BokehModel(self.grid)
        children: list[widgets.Widget] = [widgets.HBox([self.model, self.teff_offset]), self.summary, self.plot,
                                          self.caption, self.selection]
        self.robustness_plot = None
        if self.robustness:
            self.robustness_plot = BokehModel(robustness_row(self.robustness, synthetic=True))
            children.append(self.robustness_plot)
        self._render_summary()
        self._render_selection()
        self.model.observe(self._new_model, names="value")
        self.teff_offset.observe(self._new_offset, names="value")
        # a selection made in the browser (box, lasso, tap) comes back to this source through the BokehModel
        self.source.selected.on_change("indices", self._selected)
        super().__init__(children)

    # ---- what is shown -------------------------------------------------------------------------------------------
    @property
    def column(self) -> str:
        """The predictions column shown (``feh``, ``feh_cog``, ...)."""
        return str(self.model.value)

    @property
    def dfeh(self) -> np.ndarray | None:
        """(n,) change of the shown model's [Fe/H] under the current Teff offset (None at 0 K or without one)."""
        if self.sensitivity is None or int(self.teff_offset.value) == 0:
            return None
        return self.sensitivity.delta(int(self.teff_offset.value), self.column)

    def select(self, indices: Any) -> None:
        """Select stars (rows of the predictions) as a box selection in the browser would."""
        self.source.selected.indices = [int(i) for i in indices]

    def _bands(self) -> dict[str, pd.DataFrame]:
        data = self.source.data
        resid = np.asarray(data["resid"], float)
        return {x: binned_residuals(np.asarray(data[x], float), resid, self.n_bins, n_boot=self.n_boot)
                for x in RESIDUAL_AXES}

    def _new_model(self, change: dict) -> None:
        self.source.data = validation_data(self.predictions, self.column, self.dfeh, truth=self.truth)
        self.bands = self._bands()
        update_bands(self.grid, self.bands)
        glyph = self.grid.select_one({"name": "stars"}).glyph
        glyph.fill_color = glyph.line_color = model_color(self.column)
        for x in RESIDUAL_AXES:
            glyph = self.grid.select_one({"name": f"resid_{x}"}).glyph
            glyph.fill_color = glyph.line_color = model_color(self.column)
        self._panel("one_to_one").yaxis.axis_label = one_to_one_label(self.column)
        self._render_summary()
        self._render_selection()

    def _new_offset(self, change: dict) -> None:
        d = self.dfeh
        n = len(self.predictions)
        d = np.full(n, np.nan) if d is None else d
        # change two columns of the shared source: every panel that draws them redraws, the zoom stays
        fresh = validation_data(self.predictions, self.column, d, truth=self.truth)
        self.source.data.update(dfeh=fresh["dfeh"], y_shift=fresh["y_shift"])
        mean = float(np.nanmean(fresh["dfeh"])) if np.isfinite(fresh["dfeh"]).any() else 0.0
        self.grid.select_one({"name": "dfeh_mean"}).location = mean
        self._panel("teff_offset").title.text = teff_offset_title(int(self.teff_offset.value), mean, self.synthetic)
        self._render_summary()
        self._render_selection()

    def _panel(self, name: str) -> Any:
        return self.grid.select_one({"name": f"panel_{name}"})

    def _selected(self, attr: str, old: Any, new: Any) -> None:
        self._render_selection()

    # ---- the numbers beside ---------------------------------------------------------------------------------------
    def _stats(self, rows: np.ndarray | None = None, shifted: bool = False) -> dict:
        data = self.source.data
        y = np.asarray(data["y_shift" if shifted else "y"], float)
        ref = np.asarray(data["feh_ref"], float)
        if rows is not None:
            y, ref = y[rows], ref[rows]
        return score(y, ref, n_boot=200)

    def _render_summary(self) -> None:
        s = self._stats()
        what = "SYNTHETIC stand-in: " if self.synthetic else ""
        label = model_label(self.column)
        truth = "reference labels (feh_ref)" if self.truth == "feh_ref" else "SYNTHETIC truth (true_feh)"
        n_upper = int(np.isfinite(np.asarray(self.source.data["y_upper"], float)).sum())
        lines = [f"<b>{what}{label}</b> against the {truth}: {s['n']} measured stars "
                 f"({n_upper} upper limits not scored)"]
        if s["n"]:
            folds = (self.metrics.get("validation") or {}).get("folds")
            how = f"out-of-fold predictions, {folds}-fold cross-validation" if folds else "predictions as given"
            lines.append(f"MAE {s['mae']:.3f}, bias {s['bias']:+.3f}, scatter {s['scatter']:.3f} dex over every "
                         f"measured star, all S/N ({how})")
        offset = int(self.teff_offset.value)
        if self.sensitivity is None:
            lines.append("Teff offset: not available (pass sensitivity=TeffSensitivity.from_table(model, table))")
        elif offset:
            d = np.asarray(self.source.data["dfeh"], float)
            t = self._stats(shifted=True)
            if np.isfinite(d).any():
                lines.append(f"Teff {offset:+d} K (trained model re-run on the spectra): mean Δ[Fe/H] "
                             f"{np.nanmean(d):+.3f} dex (from {np.nanmin(d):+.3f} to {np.nanmax(d):+.3f}); "
                             + (f"bias against the labels would be {t['bias']:+.3f} dex, MAE {t['mae']:.3f}: "
                                "what a recalibration must absorb" if t["n"] else ""))
        self.summary.value = "<br>".join(lines)

    def _render_selection(self) -> None:
        rows = np.asarray(self.source.selected.indices, int)
        if rows.size == 0:
            self.selection.value = ("<i>Select stars with the box or lasso tool in any panel: they are highlighted "
                                    "in all, and their numbers appear here.</i>")
            return
        s = self._stats(rows)
        data = self.source.data
        parts = [f"<b>{rows.size} selected</b> ({s['n']} measured)"]
        if s["n"]:
            parts.append(f"MAE {s['mae']:.3f}, bias {s['bias']:+.3f} dex")
        for key, name, fmt in (("teff", "Teff", "{:.0f} K"), ("logg", "log g", "{:.2f}"), ("snr", "S/N", "{:.0f}"),
                               ("feh_ref", "reference [Fe/H]", "{:+.2f}")):
            v = np.asarray(data[key], float)[rows]
            if np.isfinite(v).any():
                parts.append(f"median {html.escape(name)} " + fmt.format(np.nanmedian(v)))
        self.selection.value = "; ".join(parts)


def _with_parameters(pred: pd.DataFrame) -> pd.DataFrame:
    """Add the parameter columns the panels need: a benchmark's test stars carry true_* for teff, logg."""
    out = pred
    for col in ("teff", "logg"):
        if col not in out and f"true_{col}" in out:
            out = out.assign(**{col: out[f"true_{col}"]})
    missing = [c for c in ("feh", "flag", "teff", "logg", "snr") if c not in out]
    if missing:
        raise PlotInputError(f"evaluation: no column(s) {missing}; found {list(pred.columns)}; expected the "
                             "predictions of fehkit validate")
    return out


def _check_same_stars(pred: pd.DataFrame, sensitivity: TeffSensitivity) -> None:
    if sensitivity.n_stars != len(pred):
        raise PlotInputError(f"sensitivity: {sensitivity.n_stars} stars for {len(pred)} predictions; expected the "
                             "same stars in the same order (TeffSensitivity.from_table on the validated table)")
    if "star_id" in pred and "star_id" in sensitivity.base:
        a = pred["star_id"].astype(str).to_numpy()
        b = sensitivity.base["star_id"].astype(str).to_numpy()
        if (a != b).any():
            i = int(np.flatnonzero(a != b)[0])
            raise PlotInputError(f"sensitivity: star {i} is {b[i]!r} there and {a[i]!r} in the predictions; expected "
                                 "the same stars in the same order")
