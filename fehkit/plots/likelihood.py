"""Figures of one star's [Fe/H]: its joint likelihood and its lines against the curve of growth.

These are the figures of :class:`fehkit.widgets.FeHExplorer`: the joint likelihood (:func:`likelihood_figure`,
glyphs ``"m2lnl"``, ``"marks"``, ``"upper_limit"``, ``"no_iron"``, ``"delta_1"``, ``"delta_9"``) and the lines
(:func:`line_ew_figure`: ``"measured"``, ``"measured_err"``, ``"unusable"``, ``"unusable_err"``, ``"model"``,
``"note"``); each has an ``update_*`` twin that redraws it in place, so a widget keeps its zoom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d, Span, Title
from bokeh.plotting import figure

from fehkit.errors import PlotInputError
from fehkit.plots.style import (
    FEH_LABEL,
    MODELS,
    TOOLS,
    UPPER_LIMIT_COLOR,
    ZERO_COLOR,
    as_float,
    model_color,
    model_column,
    model_label,
    place_legend,
    titled,
)

#: Top of the likelihood figure's view: Delta(-2 ln L) = 25 is 5 sigma, so the 1 and 9 levels sit well inside.
LIKELIHOOD_TOP = 25.0


TRUTH_COLOR = "#000000"


MEASURED_COLOR = "#1f3b73"


def likelihood_figure(
    feh_grid: Any,
    m2lnl: Any,
    marks: Mapping[str, float],
    upper: float | None = None,
    synthetic: bool = True,
    *,
    m2lnl_none: float | None = None,
    title: str | None = None,
    width: int = 500,
    height: int = 560,
) -> figure:
    """Plot one star's joint likelihood, -2 ln L against [Fe/H], with the truth and every model's value marked.

    The curve (``"m2lnl"``) is drawn relative to its minimum, so the horizontal levels ``"delta_1"`` (Delta = 1:
    the ends of the 1-sigma interval) and ``"delta_9"`` (Delta = 9: 3 sigma) read off directly. ``"marks"`` are
    vertical lines, one per entry of ``marks``, each labelled with its value; ``"upper_limit"`` shades the
    [Fe/H] excluded at 3 sigma above ``upper`` (a star without a detected Fe signal); ``"no_iron"`` is the level
    of "no iron at all" (its square root is the signal in sigma). The view spans the [Fe/H] where the curve is
    below Delta = 25 and every mark. :func:`update_likelihood_figure` redraws the same figure for another star.

    Parameters
    ----------
    feh_grid : (n_grid,) float
        The [Fe/H] grid (``likelihood_profile(...)["feh_grid"]``).
    m2lnl : (n_grid,) float
        -2 ln L on the grid for this star (``likelihood_profile(...)["m2lnl"][i]``).
    marks : dict of str to float
        [Fe/H] values to mark, by metrics.json key or predictions column (``"ensemble"``, ``"cog"``, ``"rf"``,
        ``"feh_dnn"``, ...) or ``"truth"``; NaN values are left out.
    upper : float, optional
        The 3-sigma upper limit of a star flagged ``upper_limit`` (None or NaN: none).
    synthetic : bool
        Whether the star is simulated: the title says SYNTHETIC and the truth is labelled SYNTHETIC truth.
    m2lnl_none : float, optional
        -2 ln L of "no iron" on the same scale (``likelihood_profile(...)["m2lnl_none"][i]``).
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> grid = np.linspace(-6.5, -0.5, 601)
    >>> fig = likelihood_figure(grid, ((grid + 3.0) / 0.1) ** 2, {"truth": -3.02, "ensemble": -2.98}, m2lnl_none=900)
    >>> list(fig.select_one({"name": "marks"}).data_source.data["label"])
    ['true [Fe/H] (SYNTHETIC truth): -3.02', 'ensemble: -2.98']
    >>> fig.x_range.start, fig.x_range.end
    (-3.7, -2.3)
    """
    fig = figure(width=width, height=height, tools=TOOLS, x_range=Range1d(-6.5, -0.5),
                 y_range=Range1d(-1.0, LIKELIHOOD_TOP), x_axis_label=FEH_LABEL,
                 y_axis_label="Δ(−2 ln L) above the best fit")
    fig.hspan(y=[1.0], line_color=ZERO_COLOR, line_dash="dashed", line_width=1,
              legend_label="Δ = 1: the 1σ interval", name="delta_1")
    fig.hspan(y=[9.0], line_color=ZERO_COLOR, line_dash="dotted", line_width=1.5,
              legend_label="Δ = 9: 3σ", name="delta_9")
    # each legend_field its own column name: Bokeh merges the legend items of renderers that share one
    fig.vstrip(x0="x0", x1="x1", source=ColumnDataSource({"x0": [], "x1": [], "limit_label": []}),
               fill_color=UPPER_LIMIT_COLOR, fill_alpha=0.2, line_alpha=0, legend_field="limit_label",
               name="upper_limit")
    fig.hspan(y="y", source=ColumnDataSource({"y": [], "none_label": []}), line_color=UPPER_LIMIT_COLOR,
              line_dash="dashdot", line_width=1.5, legend_field="none_label", name="no_iron")
    fig.line("feh", "m2lnl", source=ColumnDataSource({"feh": [], "m2lnl": []}), color=ZERO_COLOR, line_width=2,
             legend_label="−2 ln L of all usable lines", name="m2lnl")
    marked = fig.vspan(x="x", source=ColumnDataSource({k: [] for k in _MARK_COLUMNS}), line_color="color",
                       line_width="width", line_dash="dash", legend_field="label", name="marks")
    fig.add_tools(HoverTool(renderers=[marked], tooltips=[("", "@label")]))
    update_likelihood_figure(fig, feh_grid, m2lnl, marks, upper, synthetic, m2lnl_none=m2lnl_none, title=title)
    place_legend(fig, "below", ncols=1)  # one entry a row: the labels carry their values and are long
    return fig


def update_likelihood_figure(
    fig: figure,
    feh_grid: Any,
    m2lnl: Any,
    marks: Mapping[str, float],
    upper: float | None = None,
    synthetic: bool = True,
    *,
    m2lnl_none: float | None = None,
    title: str | None = None,
) -> figure:
    """Redraw a :func:`likelihood_figure` for another star in place: its data, view and title (arguments alike).

    Only the data sources, the ranges and the title change, so a notebook widget showing the figure sends just
    that to the browser.
    """
    grid = np.asarray(feh_grid, float)
    curve = np.asarray(m2lnl, float)
    if grid.ndim != 1 or curve.shape != grid.shape:
        raise PlotInputError(f"m2lnl: expected one value per point of feh_grid, shape {grid.shape}; found shape "
                             f"{curve.shape} (pass one star's row of likelihood_profile(...)['m2lnl'])")
    best = float(np.nanmin(curve)) if np.isfinite(curve).any() else 0.0
    delta = curve - best
    fig.select_one({"name": "m2lnl"}).data_source.data = {"feh": grid, "m2lnl": delta}
    rows: dict[str, list[Any]] = {k: [] for k in _MARK_COLUMNS}
    for key, value in marks.items():
        value = as_float(value)
        if not math.isfinite(value):
            continue
        label, color, line_width, dash = _mark_style(key, synthetic)
        for column, item in zip(_MARK_COLUMNS, (value, f"{label}: {value:.2f}", key, color, line_width, dash),
                                strict=True):
            rows[column].append(item)
    fig.select_one({"name": "marks"}).data_source.data = rows
    upper = as_float(upper)
    limit = math.isfinite(upper)
    fig.select_one({"name": "upper_limit"}).data_source.data = {
        "x0": [upper] if limit else [], "x1": [float(grid[-1])] if limit else [],
        "limit_label": [f"excluded at 3σ: [Fe/H] > {upper:.2f} (upper limit)"] if limit else []}
    none = as_float(m2lnl_none) - best if m2lnl_none is not None else math.nan
    fig.select_one({"name": "no_iron"}).data_source.data = {
        "y": [none] if math.isfinite(none) else [],
        "none_label": [f"no iron at all: Δ = {none:.1f}"] if math.isfinite(none) else []}

    # the view: where the curve is under the top of the plot, and every mark
    inside = grid[np.isfinite(delta) & (delta <= LIKELIHOOD_TOP)]
    shown = [*rows["x"], *([upper] if limit else [])]
    lo = min([*inside[:1], *shown], default=float(grid[0]))
    hi = max([*inside[-1:], *shown], default=float(grid[-1]))
    pad = max(0.2, 0.1 * (hi - lo))
    fig.x_range.start = max(float(grid[0]), round(float(lo - pad), 2))
    fig.x_range.end = min(float(grid[-1]), round(float(hi + pad), 2))
    fig.title.text = titled(title or "joint likelihood of the Fe lines", synthetic)
    return fig


def line_ew_figure(
    line_wave: Any,
    ew: Any,
    ew_err: Any,
    model_ew_at_best: Any,
    usable: Any,
    *,
    flag: Any = None,
    feh_best: float | None = None,
    synthetic: bool = True,
    title: str | None = None,
    width: int = 860,
    height: int = 380,
) -> figure:
    """Plot one star's measured EW of each Fe line, with its 1-sigma error bar, beside the curve-of-growth model.

    One column per line, in the order given (labelled by vacuum wavelength). Lines the joint likelihood uses are
    ``"measured"`` dots with ``"measured_err"`` bars; lines it leaves out (``usable`` False: a suspected blend)
    are greyed, ``"unusable"`` and ``"unusable_err"``; a line without an EW (masked, failed fit) has no dot and is
    counted under the plot (``"note"``). The ``"model"`` dashes are the curve-of-growth EWs at the best-fit
    [Fe/H]: where the dots scatter about them by their error bars, the lines agree on one abundance.
    :func:`update_line_ew_figure` redraws the same figure for another star.

    Parameters
    ----------
    line_wave : (n_lines,) float
        Vacuum wavelength of each line (Å).
    ew, ew_err : (n_lines,) float
        Measured EW (also weak or negative) and its 1-sigma error (mÅ); NaN where there is none.
    model_ew_at_best : (n_lines,) float
        Curve-of-growth EW at the best-fit [Fe/H] (mÅ), e.g. ``likelihood_profile(...)["model_ew"][i, k]`` at the
        grid point ``k`` of the minimum.
    usable : (n_lines,) bool
        Lines that enter the joint likelihood.
    flag : (n_lines,) str, optional
        Each line's EW flag, shown on hover.
    feh_best : float, optional
        The best-fit [Fe/H] the model EWs belong to (for the title).
    synthetic : bool
        Whether the star is simulated (the title says SYNTHETIC).
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> fig = line_ew_figure([15207.5, 15298.7], [12.0, 3.0], [2.0, 2.5], [11.0, 4.0], [True, False])
    >>> fig.select_one({"name": "measured"}).data_source.data["ew"].tolist()
    [12.0]
    >>> fig.select_one({"name": "unusable"}).data_source.data["line"]
    ['15298.70']
    """
    labels = _line_labels(line_wave)
    fig = figure(width=width, height=height, tools=TOOLS, x_range=FactorRange(*labels),
                 x_axis_label="Fe I line (vacuum wavelength, Å)", y_axis_label="equivalent width (mÅ)")
    fig.xaxis.major_label_orientation = math.pi / 2
    fig.add_layout(Span(location=0, dimension="width", line_color=ZERO_COLOR, line_dash="dashed"))
    empty = {k: [] for k in _LINE_COLUMNS}
    used, left_out = ColumnDataSource(dict(empty)), ColumnDataSource(dict(empty))
    fig.segment(x0="line", x1="line", y0="lo", y1="hi", source=left_out, color=UPPER_LIMIT_COLOR, line_alpha=0.6,
                name="unusable_err")
    grey = fig.scatter("line", "ew", source=left_out, size=7, color=UPPER_LIMIT_COLOR, fill_alpha=0.3,
                       legend_label="left out of the likelihood (blend suspected)", name="unusable")
    fig.segment(x0="line", x1="line", y0="lo", y1="hi", source=used, color=MEASURED_COLOR, line_width=1.5,
                legend_label="measured ±1σ", name="measured_err")
    dots = fig.scatter("line", "ew", source=used, size=7, color=MEASURED_COLOR, legend_label="measured ±1σ",
                       name="measured")
    model = fig.scatter("line", "model", source=ColumnDataSource(dict(empty)), marker="dash", size=18,
                        line_width=2.5, color=MODELS["cog"][2], legend_label="curve of growth at the best fit",
                        name="model")
    fig.add_tools(HoverTool(renderers=[dots, grey, model], tooltips=[
        ("line", "@line Å"), ("EW", "@ew{0.0} ± @err{0.0} mÅ"), ("model", "@model{0.0} mÅ"), ("flag", "@flag")]))
    fig.add_layout(Title(text="", text_font_size="9pt", text_font_style="italic", name="note"), "below")
    update_line_ew_figure(fig, line_wave, ew, ew_err, model_ew_at_best, usable, flag=flag, feh_best=feh_best,
                          synthetic=synthetic, title=title)
    place_legend(fig, "below", ncols=3)
    return fig


def update_line_ew_figure(
    fig: figure,
    line_wave: Any,
    ew: Any,
    ew_err: Any,
    model_ew_at_best: Any,
    usable: Any,
    *,
    flag: Any = None,
    feh_best: float | None = None,
    synthetic: bool = True,
    title: str | None = None,
) -> figure:
    """Redraw a :func:`line_ew_figure` for another star in place: its data, lines, note and title."""
    labels = _line_labels(line_wave)
    n = len(labels)
    arrays = {}
    for name, value in (("ew", ew), ("ew_err", ew_err), ("model_ew_at_best", model_ew_at_best)):
        arrays[name] = np.asarray(value, float).ravel()
        if arrays[name].shape != (n,):
            raise PlotInputError(f"{name}: expected one value per line ({n}), found shape {np.shape(value)}")
    use = np.asarray(usable, bool).ravel()
    if use.shape != (n,):
        raise PlotInputError(f"usable: expected one value per line ({n}), found shape {np.shape(usable)}")
    flags = np.full(n, "", dtype=object) if flag is None else np.asarray(flag, dtype=object).ravel()
    value, err, model = arrays["ew"], arrays["ew_err"], arrays["model_ew_at_best"]
    has = np.isfinite(value)
    if list(fig.x_range.factors) != labels:
        fig.x_range.factors = labels

    def rows(sel: np.ndarray) -> dict[str, Any]:
        e = np.where(np.isfinite(err), err, 0.0)
        return {"line": [labels[i] for i in np.flatnonzero(sel)], "wave": np.asarray(line_wave, float)[sel],
                "ew": value[sel], "err": err[sel], "lo": (value - e)[sel], "hi": (value + e)[sel],
                "model": model[sel], "flag": [str(f) for f in flags[sel]]}

    fig.select_one({"name": "measured"}).data_source.data = rows(has & use)
    fig.select_one({"name": "unusable"}).data_source.data = rows(has & ~use)
    fig.select_one({"name": "model"}).data_source.data = rows(np.isfinite(model))
    fig.select_one({"name": "note"}).text = (
        f"{int((has & use).sum())} lines in the likelihood, {int((has & ~use).sum())} left out (grey), "
        f"{int((~has).sum())} without an EW (masked or failed fit)")
    if title is None:
        at = as_float(feh_best)
        title = ("measured EWs and the curve of growth at the best fit"
                 + (f", [Fe/H] = {at:.2f}" if math.isfinite(at) else ""))
    fig.title.text = titled(title, synthetic)
    return fig


_MARK_COLUMNS = ("x", "label", "key", "color", "width", "dash")


_LINE_COLUMNS = ("line", "wave", "ew", "err", "lo", "hi", "model", "flag")


def _mark_style(key: str, synthetic: bool) -> tuple[str, str, float, str]:
    """Label, colour, line width and dash of one mark of :func:`likelihood_figure`."""
    if key == "truth":
        return ("true [Fe/H] (SYNTHETIC truth)" if synthetic else "reference [Fe/H]"), TRUTH_COLOR, 2.5, "solid"
    try:
        column = model_column(key)
    except ValueError:
        return key, "#17becf", 1.5, "dashed"
    if column == "feh":
        return model_label(column), model_color(column), 3.5, "solid"
    if column == "feh_cog":
        return model_label(column), model_color(column), 2.5, "solid"
    return model_label(column), model_color(column), 1.5, "dashed"


def _line_labels(line_wave: Any) -> list[str]:
    waves = np.asarray(line_wave, float).ravel()
    return [f"{w:.2f}" for w in waves]
