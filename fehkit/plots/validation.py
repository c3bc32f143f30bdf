"""Figures of a validation on labelled stars: 1:1, residual trends with bootstrap bands, a Teff offset, robustness.

The star panels share one :class:`~bokeh.models.ColumnDataSource` (:func:`validation_source`), so a box or lasso
selection in any of them highlights the same stars in all; :func:`validation_grid` lays them out in one Bokeh
layout (one document: the link works in a static page and inside a notebook widget alike). The numbers drawn are
computed elsewhere (the residual bands by :func:`fehkit.recalibration.binned_residuals`, the Teff response by
:class:`fehkit.recalibration.TeffSensitivity`, the scenarios by :func:`fehkit.robustness.run_robustness`); here
they are only placed. Figures of simulated stars say SYNTHETIC in their title.

Panels and glyphs that tests and notebooks look up carry a name: the panels ``"panel_one_to_one"``,
``"panel_teff_offset"``, ``"panel_resid_<x>"``; the glyphs ``"stars"``, ``"upper_limits"``, ``"shifted"``,
``"one_to_one"`` (1:1 panel), ``"resid_<x>"``, ``"band_<x>"``, ``"band_mean_<x>"`` (residual panels),
``"dfeh"``, ``"dfeh_mean"`` (Teff-offset panel), ``"<stat>_ensemble"``, ``"<stat>_cog"`` (robustness).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Span
from bokeh.plotting import figure
from bokeh.transform import dodge

from fehkit.errors import PlotInputError
from fehkit.flags import detected as flag_detected
from fehkit.plots.style import FEH_LABEL, UPPER_LIMIT_COLOR, ZERO_COLOR, model_color, model_label, place_legend, titled

#: The x quantity of each residual panel: source column -> axis label.
RESIDUAL_AXES: dict[str, str] = {"teff": "Teff (K)", "logg": "log g", "snr": "S/N per pixel",
                                 "feh_ref": "reference [Fe/H] (dex)"}

#: Tools of the star panels: selection tools first, so a drag selects.
SELECT_TOOLS = "box_select,lasso_select,tap,pan,wheel_zoom,reset,save"

_TOOLTIPS = [("star", "@star_id"), ("reference [Fe/H]", "@feh_ref{0.00}"), ("predicted", "@y{0.00}"),
             ("Teff", "@teff{0}"), ("log g", "@logg{0.00}"), ("S/N", "@snr{0}")]


def validation_data(pred: pd.DataFrame, column: str = "feh", dfeh: Any = None, *,
                    truth: str = "feh_ref") -> dict[str, np.ndarray]:
    """Return the columns of the shared star source: one row per star of ``pred``.

    Parameters
    ----------
    pred : DataFrame
        Predictions against labels (``fehkit validate``'s ``predictions.csv``): ``truth``, ``column``, ``flag``,
        ``teff``, ``logg``, ``snr``; ``star_id``, ``feh_upper`` and ``<column>_err`` when present.
    column : str
        The model column shown (``feh``, ``feh_cog``, ``feh_rf``, ...).
    dfeh : (n,) float, optional
        Change of ``column`` under a Teff offset (None: no offset, the ``shifted`` glyph is empty).
    truth : str
        The label column (``feh_ref``; ``true_feh`` for a synthetic benchmark's test stars).

    Returns
    -------
    dict
        ``star_id``, ``feh_ref`` (the label, whatever ``truth`` is), ``teff``, ``logg``, ``snr``, ``y`` (NaN where
        the star has no measurement: an upper limit), ``y_err``, ``y_upper`` (the 3-sigma limit of an upper-limit
        star), ``resid`` (``y - feh_ref``), ``dfeh`` and ``y_shift`` (``y + dfeh``).
    """
    need = [truth, column, "flag", "teff", "logg", "snr"]
    missing = [c for c in need if c not in pred]
    if missing:
        raise PlotInputError(f"predictions: no column(s) {missing}; found {list(pred.columns)}; expected the "
                             "predictions of fehkit validate (or fehkit.training.validate_table)")
    p = pred.reset_index(drop=True)
    n = len(p)
    measured = flag_detected(p["flag"])
    y = np.where(measured, p[column].to_numpy(float), np.nan)
    ref = p[truth].to_numpy(float)
    err_col = "feh_err" if column == "feh" else f"{column}_err"
    upper = p["feh_upper"].to_numpy(float) if "feh_upper" in p else np.full(n, np.nan)
    d = np.full(n, np.nan) if dfeh is None else np.asarray(dfeh, float)
    if d.shape != (n,):
        raise PlotInputError(f"dfeh: shape {d.shape}; expected ({n},), one value per star")
    return {"star_id": p["star_id"].astype(str).to_numpy() if "star_id" in p else np.arange(n).astype(str),
            "feh_ref": ref, "teff": p["teff"].to_numpy(float), "logg": p["logg"].to_numpy(float),
            "snr": p["snr"].to_numpy(float), "y": y,
            "y_err": p[err_col].to_numpy(float) if err_col in p else np.full(n, np.nan),
            "y_upper": np.where(measured, np.nan, upper), "resid": y - ref, "dfeh": np.where(measured, d, np.nan),
            "y_shift": y + np.where(measured, d, np.nan)}


def validation_source(pred: pd.DataFrame, column: str = "feh", dfeh: Any = None, *,
                      truth: str = "feh_ref") -> ColumnDataSource:
    """Return the one source every star panel draws from (:func:`validation_data`): a selection shows in all."""
    return ColumnDataSource(validation_data(pred, column, dfeh, truth=truth), name="validation_stars")


def band_data(bins: pd.DataFrame) -> dict[str, np.ndarray]:
    """Return a band source's columns from :func:`fehkit.recalibration.binned_residuals`: x, mean, lo, hi."""
    if len(bins) == 0:
        return {"x": np.array([]), "mean": np.array([]), "lo": np.array([]), "hi": np.array([])}
    return {"x": bins["x"].to_numpy(float), "mean": bins["mean"].to_numpy(float),
            "lo": bins["band_lo"].to_numpy(float), "hi": bins["band_hi"].to_numpy(float)}


def one_to_one_panel(source: ColumnDataSource, column: str = "feh", *, synthetic: bool = False,
                     width: int = 425, height: int = 360) -> figure:
    """Predicted against reference [Fe/H]: the stars, their upper limits, the Teff-shifted values and 1:1."""
    data = source.data
    shown = np.concatenate([np.asarray(data[k], float) for k in ("feh_ref", "y", "y_upper")])
    shown = shown[np.isfinite(shown)]
    lo, hi = (float(shown.min()) - 0.3, float(shown.max()) + 0.3) if shown.size else (-5.0, 0.0)
    # the model's name goes on the y axis: a title longer than ~40 characters is cut at this width
    fig = figure(title=titled("predicted vs reference [Fe/H]", synthetic), width=width, height=height,
                 tools=SELECT_TOOLS, x_axis_label=f"reference {FEH_LABEL}",
                 y_axis_label=one_to_one_label(column),
                 x_range=Range1d(lo, hi), y_range=Range1d(lo, hi), name="panel_one_to_one")
    fig.line([lo - 5, hi + 5], [lo - 5, hi + 5], color=ZERO_COLOR, line_dash="dashed", legend_label="1:1",
             name="one_to_one")
    stars = fig.scatter("feh_ref", "y", source=source, size=6, color=model_color(column), alpha=0.8,
                        nonselection_alpha=0.15, selection_color="#d62728", legend_label="measured",
                        name="stars")
    fig.scatter("feh_ref", "y_upper", source=source, marker="inverted_triangle", size=8, color=UPPER_LIMIT_COLOR,
                fill_alpha=0.2, nonselection_alpha=0.1, legend_label="3σ upper limit", name="upper_limits")
    fig.scatter("feh_ref", "y_shift", source=source, marker="circle", size=6, fill_alpha=0.0, line_color="#e69f00",
                line_width=1.5, nonselection_alpha=0.1, legend_label="with the Teff offset", name="shifted")
    fig.add_tools(HoverTool(renderers=[stars], tooltips=_TOOLTIPS))
    place_legend(fig, "bottom_right", inside=True)  # below the 1:1 line at high [Fe/H] no star lies
    return fig


def one_to_one_label(column: str) -> str:
    """Return the y-axis label of the 1:1 panel: the model's name and [Fe/H]."""
    return f"{model_label(column)}: predicted {FEH_LABEL}"


def teff_offset_title(dteff: float, mean_dfeh: float, synthetic: bool = False) -> str:
    """Return the Teff-offset panel's title: the offset and the mean change it makes (short enough to fit)."""
    if not dteff:
        return titled("[Fe/H] change, Teff offset", synthetic)
    return titled(f"Teff {dteff:+.0f} K: Δ[Fe/H] {mean_dfeh:+.3f}", synthetic)


def residual_panel(source: ColumnDataSource, x: str, bins: pd.DataFrame, column: str = "feh", *,
                   synthetic: bool = False, y_range: Range1d | None = None, width: int = 425,
                   height: int = 260) -> figure:
    """Residual (predicted - reference) against ``x`` (:data:`RESIDUAL_AXES`), with the binned mean and its band.

    ``bins`` is :func:`fehkit.recalibration.binned_residuals` of the same residuals; its band (``"band_<x>"``)
    and mean (``"band_mean_<x>"``) have their own source, replaced when the model changes.
    """
    if x not in RESIDUAL_AXES:
        raise PlotInputError(f"x: {x!r}; expected one of {list(RESIDUAL_AXES)}")
    fig = figure(title=titled(f"residual vs {RESIDUAL_AXES[x].split(' (')[0]}", synthetic), width=width,
                 height=height, tools=SELECT_TOOLS, x_axis_label=RESIDUAL_AXES[x],
                 y_axis_label="predicted - reference (dex)", name=f"panel_resid_{x}",
                 **({"y_range": y_range} if y_range is not None else {}))
    fig.add_layout(Span(location=0, dimension="width", line_color=ZERO_COLOR, line_dash="dashed"))
    band = ColumnDataSource(band_data(bins), name=f"band_{x}")
    # no legend (it would hide stars): the widget's caption says what the line and the band are
    fig.varea("x", "lo", "hi", source=band, fill_color="#1f3b73", fill_alpha=0.18, name=f"band_{x}")
    fig.line("x", "mean", source=band, color="#1f3b73", line_width=2, name=f"band_mean_{x}")
    dots = fig.scatter(x, "resid", source=source, size=5, color=model_color(column), alpha=0.7,
                       nonselection_alpha=0.12, selection_color="#d62728", name=f"resid_{x}")
    fig.add_tools(HoverTool(renderers=[dots], tooltips=_TOOLTIPS))
    return fig


def teff_offset_panel(source: ColumnDataSource, *, synthetic: bool = False, width: int = 425,
                      height: int = 360) -> figure:
    """Plot the change of each star's [Fe/H] under a Teff offset (``dfeh``) against its reference [Fe/H]."""
    fig = figure(title=teff_offset_title(0, 0.0, synthetic), width=width, height=height,
                 tools=SELECT_TOOLS, x_axis_label=f"reference {FEH_LABEL}",
                 y_axis_label="Δ[Fe/H] (dex)", y_range=Range1d(-0.3, 0.3), name="panel_teff_offset")
    fig.add_layout(Span(location=0, dimension="width", line_color=ZERO_COLOR, line_dash="dashed"))
    fig.add_layout(Span(location=0, dimension="width", line_color="#e69f00", line_width=2, name="dfeh_mean"))
    dots = fig.scatter("feh_ref", "dfeh", source=source, size=6, color="#e69f00", alpha=0.8,
                       nonselection_alpha=0.15, selection_color="#d62728", name="dfeh")
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[*_TOOLTIPS, ("Δ[Fe/H]", "@dfeh{+0.000}")]))
    return fig


def validation_grid(source: ColumnDataSource, bands: Mapping[str, pd.DataFrame], column: str = "feh", *,
                    synthetic: bool = False, width: int = 850) -> Any:
    """Lay out the star panels together: 1:1 and the Teff offset on top, the four residual panels below.

    ``bands`` maps each of :data:`RESIDUAL_AXES` to its :func:`~fehkit.recalibration.binned_residuals`. Every
    panel draws from ``source``; the residual panels share their y range. The layout is ``width`` pixels wide
    (two columns; the toolbar above), so nothing is cut at a notebook's width.
    """
    missing = [x for x in RESIDUAL_AXES if x not in bands]
    if missing:
        raise PlotInputError(f"bands: no binned residuals for {missing}; expected one per residual panel")
    w = width // 2
    resid = np.asarray(source.data["resid"], float)
    span = float(np.nanmax(np.abs(resid))) * 1.1 if np.isfinite(resid).any() else 0.5
    shared = Range1d(-max(span, 0.1), max(span, 0.1))
    top = [one_to_one_panel(source, column, synthetic=synthetic, width=w),
           teff_offset_panel(source, synthetic=synthetic, width=w)]
    panels = [residual_panel(source, x, bands[x], column, synthetic=synthetic, y_range=shared, width=w)
              for x in RESIDUAL_AXES]
    return gridplot([top, panels[:2], panels[2:]], toolbar_location="above", merge_tools=True)


def update_bands(layout: Any, bands: Mapping[str, pd.DataFrame]) -> None:
    """Replace the band data of each residual panel of a :func:`validation_grid` in place."""
    for x, bins in bands.items():
        renderer = layout.select_one({"name": f"band_{x}", "type": _glyph_renderer()})
        if renderer is None:
            raise PlotInputError(f"layout: no band_{x} glyph; expected a layout made by validation_grid")
        renderer.data_source.data = band_data(bins)


def robustness_figure(robustness: Mapping[str, Mapping[str, Any]], stat: str = "mae", *, synthetic: bool = True,
                      width: int = 425, height: int = 320) -> figure:
    """One statistic of each robustness scenario, ensemble beside the classical method, as horizontal bars.

    ``robustness`` is :func:`fehkit.robustness.run_robustness` (or ``metrics["robustness"]``); ``stat`` is
    ``"mae"`` or ``"bias"`` (the classical method's ``mae_cog`` / ``bias_cog`` beside). Skipped scenarios are
    listed with no bar and "(skipped)" in their name. The scenarios' spectra are always simulated.
    """
    if stat not in ("mae", "bias"):
        raise PlotInputError(f"stat: {stat!r}; expected 'mae' or 'bias'")
    if not robustness:
        raise PlotInputError("robustness: no scenario; expected fehkit.robustness.run_robustness's result")
    names = [f"{k} (skipped)" if "skipped" in v else k for k, v in robustness.items()]
    rows = list(robustness.values())

    def values(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) is not None else np.nan for r in rows]

    data = {"scenario": names, "ensemble": values(stat), "cog": values(f"{stat}_cog"),
            "n": [r.get("n", 0) for r in rows], "description": [str(r.get("description", "")) for r in rows]}
    source = ColumnDataSource(data, name=f"robustness_{stat}")
    label = "MAE (dex)" if stat == "mae" else "bias: predicted - true (dex)"
    fig = figure(title=titled(f"robustness: {'MAE' if stat == 'mae' else 'bias'} per scenario", synthetic),
                 y_range=list(reversed(names)), width=width, height=height, x_axis_label=label,
                 tools="pan,wheel_zoom,reset,save", toolbar_location=None)
    bars = []
    for key, offset in (("ensemble", 0.18), ("cog", -0.18)):
        bars.append(fig.hbar(y=dodge("scenario", offset, range=fig.y_range), right=key, height=0.34, source=source,
                             color=model_color("feh" if key == "ensemble" else "feh_cog"), alpha=0.85,
                             legend_label=model_label("feh" if key == "ensemble" else "feh_cog"),
                             name=f"{stat}_{key}"))
    fig.add_layout(Span(location=0, dimension="height", line_color=ZERO_COLOR))
    fig.add_tools(HoverTool(renderers=bars, tooltips=[("scenario", "@scenario"), ("what", "@description"),
                                                      ("stars", "@n"), ("ensemble", "@ensemble{0.000}"),
                                                      ("classical", "@cog{0.000}")]))
    place_legend(fig, "below", ncols=2)
    return fig


def robustness_row(robustness: Mapping[str, Mapping[str, Any]], *, synthetic: bool = True,
                   width: int = 850) -> Any:
    """MAE and bias of the robustness scenarios side by side, ``width`` pixels together."""
    from bokeh.layouts import row

    return row(robustness_figure(robustness, "mae", synthetic=synthetic, width=width // 2),
               robustness_figure(robustness, "bias", synthetic=synthetic, width=width // 2))


def _glyph_renderer() -> type:
    from bokeh.models import GlyphRenderer

    return GlyphRenderer
