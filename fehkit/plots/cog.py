"""Figures of the curve of growth and the physics behind it.

The reduced curve of growth, one line's profile, the H- continuum opacity and equivalent widths against [Fe/H].
:func:`reduced_cog_figure` and :func:`line_profile_figure` are the figures of
:class:`fehkit.widgets.CurveOfGrowthExplorer`; each has an ``update_*`` twin that redraws it in place (the data
sources and the title change, the figure stays), so a widget keeps its zoom. Glyph names: ``"linear"``,
``"saturated"``, ``"tracks"``, ``"limit"``, ``"detected"``, ``"undetected"``, ``"selected"`` (reduced curve of
growth); ``"noise_band"``, ``"pixels"``, ``"model"`` (profile). The data come from
:mod:`fehkit.physics.line_formation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from fehkit.errors import PlotInputError
from fehkit.plots.style import TOOLS, ZERO_COLOR, place_legend

#: Widest figure: a JupyterLab notebook cell is ~900 px wide, so nothing is cut at the cell's edge.
MAX_WIDTH = 860

DETECTED_COLOR = "#1f3b73"
UNDETECTED_COLOR = "#7f7f7f"
SELECTED_COLOR = "#d62728"
LINEAR_COLOR = "#009e73"
SATURATED_COLOR = "#e69f00"
LIMIT_COLOR = "#cc79a7"

#: The fixed view of the reduced curve of growth: every packaged line at any slider setting of the explorer.
COG_X_RANGE = (-9.5, -1.0)
COG_Y_RANGE = (-11.2, -4.2)

_LINE_COLUMNS = ("x", "y", "wave", "ew", "sigma", "regime", "slope")


def reduced_cog_figure(rcog: Any, selected: int | None = None, *, title: str | None = None,
                       width: int = MAX_WIDTH, height: int = 430) -> figure:
    """Plot a star's packaged Fe I lines on the reduced curve of growth, log10(EW / lambda) vs log gf - theta chi.

    Each grey curve is one line's curve of growth over [Fe/H] -6..-0.5, shifted along x by the change of [Fe/H]
    (the same as changing its log gf); the points are the lines at the star's [Fe/H], filled when they reach
    3 sigma at the S/N (``"detected"``), open otherwise. The green strip is the linear part of the curves (slope
    of log EW against [Fe/H] >= 0.9), the orange strip the saturated part (<= 0.5), the horizontal line the
    3-sigma limit of one line at the S/N (the same for all lines in these units). :func:`update_reduced_cog_figure`
    redraws it for other settings.

    Parameters
    ----------
    rcog : fehkit.physics.line_formation.ReducedCurveOfGrowth
        The lines of one star (:func:`~fehkit.physics.line_formation.reduced_curve_of_growth`).
    selected : int, optional
        Index of a line to ring.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels (``width`` at most 860).

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from fehkit.physics.line_formation import reduced_curve_of_growth
    >>> fig = reduced_cog_figure(reduced_curve_of_growth(4800, 1.5, -3.0, 2.0, snr=100), selected=2)
    >>> len(fig.select_one({"name": "detected"}).data_source.data["x"])
    1
    """
    if width > MAX_WIDTH:
        raise PlotInputError(f"width: at most {MAX_WIDTH} px so the figure fits a notebook cell, found {width}")
    fig = figure(width=width, height=height, tools=TOOLS, x_range=Range1d(*COG_X_RANGE),
                 y_range=Range1d(*COG_Y_RANGE), x_axis_label="log gf − θχ  (θ = 5040 / Teff; dex)",
                 y_axis_label="log10(EW / λ)")
    fig.vstrip(x0="x0", x1="x1", source=ColumnDataSource({"x0": [], "x1": [], "linear_label": []}),
               fill_color=LINEAR_COLOR, fill_alpha=0.12, line_alpha=0, legend_field="linear_label", name="linear")
    fig.vstrip(x0="x0", x1="x1", source=ColumnDataSource({"x0": [], "x1": [], "saturated_label": []}),
               fill_color=SATURATED_COLOR, fill_alpha=0.15, line_alpha=0, legend_field="saturated_label",
               name="saturated")
    fig.multi_line("xs", "ys", source=ColumnDataSource({"xs": [], "ys": []}), line_color=UNDETECTED_COLOR,
                   line_alpha=0.35, line_width=1, legend_label="each line's curve of growth (MOOG grid)",
                   name="tracks")
    fig.hspan(y="y", source=ColumnDataSource({"y": [], "limit_label": []}), line_color=LIMIT_COLOR,
              line_width=2, line_dash="dashed", legend_field="limit_label", name="limit")
    undetected = fig.scatter("x", "y", source=ColumnDataSource({k: [] for k in _LINE_COLUMNS}), size=8,
                             fill_color="white", line_color=UNDETECTED_COLOR, line_width=1.5,
                             legend_label="line below 3σ", name="undetected")
    detected = fig.scatter("x", "y", source=ColumnDataSource({k: [] for k in _LINE_COLUMNS}), size=8,
                           fill_color=DETECTED_COLOR, line_color=DETECTED_COLOR, legend_label="line above 3σ",
                           name="detected")
    fig.scatter("x", "y", source=ColumnDataSource({"x": [], "y": []}), size=16, fill_alpha=0,
                line_color=SELECTED_COLOR, line_width=2.5, legend_label="the line shown below", name="selected")
    fig.add_tools(HoverTool(renderers=[detected, undetected], tooltips=[
        ("line", "@wave{0.00} Å"), ("EW", "@ew{0.00} mÅ ± @sigma{0.0}"), ("regime", "@regime"),
        ("d log EW / d [Fe/H]", "@slope{0.00}")]))
    update_reduced_cog_figure(fig, rcog, selected, title=title)
    place_legend(fig, "bottom_right", inside=True)  # the curves rise to the right: the bottom right stays empty
    return fig


def update_reduced_cog_figure(fig: figure, rcog: Any, selected: int | None = None, *,
                              title: str | None = None) -> None:
    """Redraw a :func:`reduced_cog_figure` in place for other settings: its data sources and title only."""
    x_lo, x_hi = COG_X_RANGE
    linear_end, saturated_start = rcog.linear_end, rcog.saturated_start
    fig.select_one({"name": "linear"}).data_source.data = (
        {"x0": [x_lo], "x1": [linear_end], "linear_label": ["linear part: EW ∝ N(Fe) (slope ≥ 0.9)"]}
        if np.isfinite(linear_end) else {"x0": [], "x1": [], "linear_label": []})
    fig.select_one({"name": "saturated"}).data_source.data = (
        {"x0": [saturated_start], "x1": [x_hi], "saturated_label": ["saturated part (slope ≤ 0.5)"]}
        if np.isfinite(saturated_start) else {"x0": [], "x1": [], "saturated_label": []})
    fig.select_one({"name": "tracks"}).data_source.data = {"xs": [np.asarray(r) for r in rcog.track_x],
                                                            "ys": [np.asarray(r) for r in rcog.track_y]}
    fig.select_one({"name": "limit"}).data_source.data = {
        "y": [rcog.limit_y], "limit_label": [f"3σ limit of one line at S/N {rcog.snr:.0f}"]}
    detected = np.asarray(rcog.detected, bool)

    def rows(sel: np.ndarray) -> dict[str, Any]:
        return {"x": rcog.x[sel], "y": rcog.y[sel], "wave": rcog.wave_vac[sel], "ew": rcog.ew_mA[sel],
                "sigma": rcog.sigma_ew_mA[sel], "regime": list(rcog.regime[sel]), "slope": rcog.slope[sel]}

    fig.select_one({"name": "detected"}).data_source.data = rows(detected)
    fig.select_one({"name": "undetected"}).data_source.data = rows(~detected)
    ring = [] if selected is None else [int(selected)]
    fig.select_one({"name": "selected"}).data_source.data = {"x": rcog.x[ring], "y": rcog.y[ring]}
    fig.title.text = title or (f"Teff {rcog.teff:.0f} K, log g {rcog.logg:.1f}, vmic {rcog.vmic:.1f} km/s, "
                               f"[Fe/H] {rcog.feh:+.2f}, S/N {rcog.snr:.0f}: {int(detected.sum())} of "
                               f"{detected.size} lines above 3σ, all together {rcog.joint_sigma:.1f}σ")


def line_profile_figure(profile: Mapping[str, Any], *, title: str | None = None, width: int = MAX_WIDTH,
                        height: int = 300) -> figure:
    """Plot one line as APOGEE records it: the profile, the noisy apStar pixels and the +-1 sigma noise band.

    Parameters
    ----------
    profile : dict
        :func:`~fehkit.physics.line_formation.line_profile` of the line.
    title : str, optional
        The title (default: none given).
    width, height : int
        Size in screen pixels (``width`` at most 860).

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from fehkit.physics.line_formation import line_profile
    >>> fig = line_profile_figure(line_profile(15298.74, 19.2, 4800, 1.5, -3.0, 2.0, snr=100))
    >>> len(fig.select_one({"name": "pixels"}).data_source.data["flux"])
    41
    """
    if width > MAX_WIDTH:
        raise PlotInputError(f"width: at most {MAX_WIDTH} px so the figure fits a notebook cell, found {width}")
    fig = figure(width=width, height=height, tools=TOOLS, x_axis_label="Δλ from the line centre (Å, vacuum)",
                 y_axis_label="normalized flux")
    fig.varea("offset", "lo", "hi", source=ColumnDataSource({"offset": [], "lo": [], "hi": []}),
              fill_color=UNDETECTED_COLOR, fill_alpha=0.18, legend_label="±1σ noise per pixel", name="noise_band")
    fig.hspan(y=[1.0], line_color=ZERO_COLOR, line_width=1, line_dash="dotted")
    fig.line("offset", "flux", source=ColumnDataSource({"offset": [], "flux": []}), color=UNDETECTED_COLOR,
             line_width=1, alpha=0.8, name="pixel_line")
    fig.scatter("offset", "flux", source=ColumnDataSource({"offset": [], "flux": []}), size=5,
                color=UNDETECTED_COLOR, legend_label="apStar pixels with noise (one draw)", name="pixels")
    fig.line("offset", "flux", source=ColumnDataSource({"offset": [], "flux": []}), color=SELECTED_COLOR,
             line_width=2.5, legend_label="the line (R = 22,500)", name="model")
    update_line_profile_figure(fig, profile, title=title)
    place_legend(fig, "bottom_right", inside=True)
    return fig


def update_line_profile_figure(fig: figure, profile: Mapping[str, Any], *, title: str | None = None) -> None:
    """Redraw a :func:`line_profile_figure` in place for another line or other settings."""
    noise = float(profile["noise"])
    offset = np.asarray(profile["offset"], float)
    fig.select_one({"name": "noise_band"}).data_source.data = {
        "offset": offset, "lo": np.full(offset.size, 1.0 - noise), "hi": np.full(offset.size, 1.0 + noise)}
    pixels = {"offset": np.asarray(profile["pixel_offset"], float), "flux": np.asarray(profile["pixel_flux"], float)}
    fig.select_one({"name": "pixels"}).data_source.data = pixels
    fig.select_one({"name": "pixel_line"}).data_source.data = dict(pixels)
    fig.select_one({"name": "model"}).data_source.data = {"offset": offset, "flux": np.asarray(profile["flux"])}
    if title is not None:
        fig.title.text = title


def opacity_figure(wave: Any, curves: Mapping[str, Mapping[str, Any]], *, band: tuple[float, float] = (15140, 16960),
                   marks: Mapping[str, float] | None = None, width: int = MAX_WIDTH, height: int = 380) -> figure:
    """Plot the H- continuum opacity against wavelength for one or more temperatures, the APOGEE band shaded.

    Parameters
    ----------
    wave : (n,) float
        Wavelengths (A).
    curves : dict of str to dict
        Label (e.g. ``"4800 K"``) -> :func:`~fehkit.physics.line_formation.hminus_opacity` at ``wave``: each drawn
        as its total (solid) and bound-free part (dashed), normalized to the total's minimum.
    band : (float, float)
        The APOGEE band (A), shaded.
    marks : dict of str to float, optional
        Wavelengths (A) to mark with a labelled vertical line (the lines of the comparison).
    width, height : int
        Size in screen pixels (``width`` at most 860).

    Returns
    -------
    bokeh.plotting.figure
    """
    if width > MAX_WIDTH:
        raise PlotInputError(f"width: at most {MAX_WIDTH} px so the figure fits a notebook cell, found {width}")
    wave = np.asarray(wave, float)
    fig = figure(width=width, height=height, tools=TOOLS, x_axis_label="wavelength (µm)",
                 y_axis_label="H⁻ opacity / its minimum", y_axis_type="log",
                 title="The H⁻ continuum opacity: bound-free (dashed) ends at 1.64 µm, free-free grows as ~λ²")
    fig.vstrip(x0=[band[0] / 1e4], x1=[band[1] / 1e4], fill_color=LINEAR_COLOR, fill_alpha=0.12, line_alpha=0,
               legend_label="APOGEE H band")
    palette = ("#1f3b73", "#d62728", "#e69f00", "#009e73")
    for k, (label, kappa) in enumerate(curves.items()):
        total = np.asarray(kappa["total"], float)
        norm = float(np.min(total[total > 0]))
        color = palette[k % len(palette)]
        fig.line(wave / 1e4, total / norm, color=color, line_width=2.5, legend_label=f"{label}: total")
        bf = np.asarray(kappa["bf"], float) / norm
        keep = bf > 0
        fig.line(wave[keep] / 1e4, bf[keep], color=color, line_width=1.5, line_dash="dashed",
                 legend_label=f"{label}: bound-free")
    for label, w in (marks or {}).items():
        fig.vspan(x=[w / 1e4], line_color=ZERO_COLOR, line_dash="dotted", legend_label=label)
    place_legend(fig, "right")
    return fig


def ew_vs_feh_figure(feh: Any, curves: Mapping[str, Any], *, limits: Mapping[str, float] | None = None,
                     title: str = "", width: int = MAX_WIDTH, height: int = 400) -> figure:
    """Plot equivalent widths against [Fe/H] (log EW axis), one line per entry, with horizontal detection limits.

    Parameters
    ----------
    feh : (n,) float
        [Fe/H] (dex).
    curves : dict of str to (n,) float
        Label -> EW (mA) at ``feh``.
    limits : dict of str to float, optional
        Label -> EW (mA) of a horizontal dashed line (e.g. a 3-sigma limit).
    title : str
        The title (say SYNTHETIC or the source of the numbers).
    width, height : int
        Size in screen pixels (``width`` at most 860).

    Returns
    -------
    bokeh.plotting.figure
    """
    if width > MAX_WIDTH:
        raise PlotInputError(f"width: at most {MAX_WIDTH} px so the figure fits a notebook cell, found {width}")
    fig = figure(width=width, height=height, tools=TOOLS, x_axis_label="[Fe/H] (dex)", y_axis_label="EW (mÅ)",
                 y_axis_type="log", title=title)
    palette = ("#1f3b73", "#d62728", "#e69f00", "#009e73", "#cc79a7", "#8c564b")
    feh = np.asarray(feh, float)
    for k, (label, ew) in enumerate(curves.items()):
        fig.line(feh, np.asarray(ew, float), color=palette[k % len(palette)], line_width=2.5, legend_label=label)
    for label, value in (limits or {}).items():
        fig.hspan(y=[float(value)], line_color=LIMIT_COLOR, line_dash="dashed", line_width=1.5, legend_label=label)
    place_legend(fig, "bottom_right", inside=True)  # EWs grow to the right: the bottom right stays empty
    return fig
