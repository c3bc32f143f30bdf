"""Figures of the [Fe/H] results of many stars: predicted against true, residuals, members, binned errors.

Every builder takes the predictions table of the test stars (``predictions.csv``: one row per star, the model
columns ``feh``, ``feh_rf``, ... beside the truth ``true_feh``, ``true_teff``, ``snr``) or the ``metrics.json``
dict, and returns one standalone Bokeh figure; numbers are only drawn, never computed beyond a difference
(predicted - true) and a histogram. A model column that the table lacks (``feh_cannon`` when The Cannon is not
installed) is left out (the residual histogram names it under the plot); a column a figure cannot do without, or
a metrics key it needs, raises :class:`~fehkit.errors.PlotInputError` naming it. Figures of a simulated benchmark
say SYNTHETIC in their title.

Glyphs that tests and notebooks look up carry a name (``fig.select_one({"name": "envelope"})``):
``"detected"``, ``"envelope"``, ``"upper_limits"``, ``"one_to_one"``, ``"cog"``, ``"hist_<column>"``,
``"mae"`` and ``"ci"`` (per model), ``"mae_<model>"``, ``"n_detected"``, ``"n_upper_limits"`` (per bin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, LinearAxis, Range1d, Span, Title
from bokeh.plotting import figure

from fehkit.errors import PlotInputError
from fehkit.flags import has_flag
from fehkit.plots.style import (
    BIN_LABELS,
    BIN_MAE_KEYS,
    FEH_LABEL,
    MODELS,
    TOOLS,
    UPPER_LIMIT_COLOR,
    X_LABELS,
    ZERO_COLOR,
    as_float,
    as_pair,
    legend_columns,
    model_color,
    model_column,
    model_label,
    place_legend,
    subtitle,
    titled,
)
from fehkit.spectra import is_synthetic


def one_to_one_figure(
    pred: pd.DataFrame,
    model: str = "feh",
    synthetic: bool | None = None,
    title: str | None = None,
    width: int = 570,
    height: int = 520,
) -> figure:
    """Plot predicted against true [Fe/H] with the 1-sigma error whiskers, the upper limits and the 1:1 line.

    Detected stars (``flag`` not ``"upper_limit"``) are dots with a vertical 1-sigma whisker (the ``"envelope"``
    glyph) from the model's error column ``<column>_err`` (``feh_err`` for the ensemble, ``feh_cog_err`` for the
    curve of growth), when ``pred`` has it. Stars flagged ``upper_limit`` are downward triangles at the 3-sigma
    limit ``<column>_upper`` (or the ensemble's ``feh_upper`` for a model without its own; ``"upper_limits"``):
    no model value of an undetected star means more than that. Hover a star for its id, S/N and true Teff.

    Parameters
    ----------
    pred : pandas.DataFrame
        The predictions of the test stars: ``true_feh`` and the model column at least; ``feh_err``,
        ``feh_upper``, ``flag``, ``star_id``, ``snr``, ``true_teff``, ``n_lines`` are used when present.
    model : str
        The model: its metrics.json key (``"ensemble"``, ``"cog"``, ...) or its column (``"feh"``, ``"feh_cog"``).
    synthetic : bool, optional
        Whether the stars are simulated; default from the ``synthetic`` column. The title then says SYNTHETIC.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> import pandas as pd
    >>> pred = pd.DataFrame({"star_id": ["a", "b", "c"], "true_feh": [-2.0, -3.0, -4.2],
    ...                      "feh": [-2.1, -2.9, float("nan")], "feh_err": [0.1, 0.15, float("nan")],
    ...                      "feh_upper": [float("nan"), float("nan"), -3.6],
    ...                      "flag": ["ok", "ok", "upper_limit"], "synthetic": True})
    >>> fig = one_to_one_figure(pred)
    >>> fig.title.text, fig.above[-1].text
    ('SYNTHETIC: ensemble vs true [Fe/H]', '2 detected, 1 upper limits')
    >>> fig.select_one({"name": "upper_limits"}).data_source.data["y"].tolist()
    [-3.6]
    """
    column = model_column(model)
    require_columns(pred, ["true_feh", column], "one_to_one_figure")
    synthetic = is_synthetic(pred) if synthetic is None else synthetic
    upper = _upper_limit_mask(pred)
    y = pred[column].to_numpy(float)
    truth = pred["true_feh"].to_numpy(float)
    detected = ~upper & np.isfinite(y) & np.isfinite(truth)
    upper_column = _companion(pred, column, "upper")
    limit = pred[upper_column].to_numpy(float) if upper_column else np.full(len(pred), np.nan)
    upper &= np.isfinite(limit) & np.isfinite(truth)
    err_column = _companion(pred, column, "err")

    label = model_label(column)
    counts = f"{detected.sum()} detected, {upper.sum()} upper limits"
    fig = figure(title=titled(f"{label} vs true [Fe/H]" if title is None else title, synthetic), width=width,
                 height=height, tools=TOOLS, x_axis_label="true [Fe/H] (dex)",
                 y_axis_label=f"predicted {FEH_LABEL}: {label}")
    subtitle(fig, counts)  # under the title, so that neither is cut in a figure half a notebook cell wide
    shown = np.concatenate([truth[detected | upper], y[detected], limit[upper]])
    lo, hi = (float(np.min(shown)) - 0.2, float(np.max(shown)) + 0.2) if shown.size else (-5.0, 0.0)
    fig.line([lo, hi], [lo, hi], color=ZERO_COLOR, line_dash="dashed", legend_label="predicted = true",
             name="one_to_one")
    if err_column:
        err = pred[err_column].to_numpy(float)
        ok = detected & np.isfinite(err)
        fig.segment(x0=truth[ok], x1=truth[ok], y0=(y - err)[ok], y1=(y + err)[ok], color=model_color(column),
                    line_alpha=0.35, legend_label=f"±1σ ({err_column})", name="envelope")
    color = model_color(column)
    dots = fig.scatter("x", "y", source=_star_source(pred, detected, truth, y), size=5, color=color, alpha=0.8,
                       legend_label=f"detected ({label})", name="detected")
    limits = fig.scatter("x", "y", source=_star_source(pred, upper, truth, limit), marker="inverted_triangle",
                         size=8, fill_alpha=0.15, color=UPPER_LIMIT_COLOR,
                         legend_label=f"3σ upper limit ({upper_column})", name="upper_limits")
    fig.add_tools(HoverTool(renderers=[dots, limits], tooltips=_STAR_TOOLTIPS))
    place_legend(fig, "top_left", inside=True)
    return fig


def residual_histogram_figure(
    pred: pd.DataFrame,
    models: Sequence[str] | None = None,
    bins: int = 40,
    synthetic: bool | None = None,
    title: str | None = None,
    width: int = 570,
    height: int = 460,
) -> figure:
    """Overlay step histograms of predicted - true [Fe/H] of each model, over the detected stars only.

    All models share the bin edges, so the outlines compare directly. Each outline is the glyph
    ``"hist_<column>"`` (its data: ``x`` the repeated edges, ``y`` the counts); models whose column ``pred``
    lacks are skipped and named under the plot.

    Parameters
    ----------
    pred : pandas.DataFrame
        The predictions of the test stars (``true_feh``, the model columns, ``flag``).
    models : sequence of str, optional
        Models by metrics.json key or column; default every model of :data:`MODELS` that ``pred`` has.
    bins : int
        Number of bins across the central 99% of the residuals (the rest pile into the outer bins).
    synthetic : bool, optional
        Whether the stars are simulated; default from the ``synthetic`` column.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure
    """
    require_columns(pred, ["true_feh"], "residual_histogram_figure")
    synthetic = is_synthetic(pred) if synthetic is None else synthetic
    wanted = [model_column(m) for m in (models if models is not None else [c for c, _, _ in MODELS.values()])]
    present = [c for c in dict.fromkeys(wanted) if c in pred]
    missing = [c for c in dict.fromkeys(wanted) if c not in pred]
    detected = ~_upper_limit_mask(pred)
    truth = pred["true_feh"].to_numpy(float)
    residuals = {}
    for column in present:
        r = pred[column].to_numpy(float) - truth
        residuals[column] = r[detected & np.isfinite(r)]
    pooled = np.concatenate(list(residuals.values())) if residuals else np.array([])
    # symmetric about zero, so a bias shows as a shift against the zero line
    half = float(np.percentile(np.abs(pooled), 99.5)) if pooled.size else 1.0
    edges = np.linspace(-(half or 1.0), half or 1.0, bins + 1)

    if title is None:
        title = f"residuals of the detected stars ({int(detected.sum())})"
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools=TOOLS,
                 x_axis_label="predicted − true [Fe/H] (dex)", y_axis_label="stars per bin")
    for column, r in residuals.items():
        counts, _ = np.histogram(np.clip(r, edges[0], edges[-1]), bins=edges)
        x = np.repeat(edges, 2)
        y = np.concatenate([[0], np.repeat(counts, 2), [0]]).astype(float)
        width_px = 3 if column == "feh" else 1.5
        fig.line("x", "y", source=ColumnDataSource({"x": x, "y": y}), color=model_color(column),
                 line_width=width_px, legend_label=f"{model_label(column)} (n={r.size})", name=f"hist_{column}")
    fig.add_layout(Span(location=0, dimension="height", line_color=ZERO_COLOR, line_dash="dashed"))
    if missing:
        fig.add_layout(Title(text=f"not in the predictions: {', '.join(missing)}", text_font_style="italic",
                             text_font_size="9pt"), "below")
    if residuals:
        place_legend(fig, "below")
    return fig


def residual_vs_figure(
    pred: pd.DataFrame,
    x: str = "snr",
    model: str = "feh",
    baseline: str | None = "cog",
    synthetic: bool | None = None,
    title: str | None = None,
    width: int = 570,
    height: int = 460,
) -> figure:
    """Plot predicted - true [Fe/H] of one model against S/N, true [Fe/H] or true Teff, with the zero line.

    The model's detected stars are dots (``"detected"``, with 1-sigma whiskers ``"envelope"`` from
    ``<column>_err`` where ``pred`` has it); the classical curve-of-growth baseline is drawn in a second colour
    behind them (``"cog"``); stars flagged ``upper_limit`` are downward triangles at their 3-sigma limit minus the
    truth (``"upper_limits"``, as in :func:`one_to_one_figure`): the true residual lies below. S/N is shown on a
    log axis.

    Parameters
    ----------
    pred : pandas.DataFrame
        The predictions of the test stars.
    x : {"snr", "true_feh", "true_teff"}
        The column on the horizontal axis.
    model : str
        The model (metrics.json key or column); default the ensemble.
    baseline : str or None
        The model drawn behind for comparison (default the joint curve of growth); None or a column ``pred``
        lacks: none.
    synthetic : bool, optional
        Whether the stars are simulated; default from the ``synthetic`` column.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure
    """
    if x not in X_LABELS:
        raise PlotInputError(f"x: expected one of {sorted(X_LABELS)}, found {x!r}")
    column = model_column(model)
    require_columns(pred, ["true_feh", x, column], "residual_vs_figure")
    synthetic = is_synthetic(pred) if synthetic is None else synthetic
    xv = pred[x].to_numpy(float)
    truth = pred["true_feh"].to_numpy(float)
    upper = _upper_limit_mask(pred)
    finite_x = np.isfinite(xv) & (xv > 0 if x == "snr" else True)
    r = pred[column].to_numpy(float) - truth
    detected = ~upper & finite_x & np.isfinite(r)
    upper_column = _companion(pred, column, "upper")
    limit = pred[upper_column].to_numpy(float) - truth if upper_column else np.full(len(pred), np.nan)
    upper &= finite_x & np.isfinite(limit)

    label = model_label(column)
    if title is None:
        title = f"{label}: residual vs {X_LABELS[x].split(' (')[0]}"
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools=TOOLS,
                 x_axis_type="log" if x == "snr" else "linear", x_axis_label=X_LABELS[x],
                 y_axis_label="predicted − true [Fe/H] (dex)")
    base = model_column(baseline) if baseline else None
    if base and base != column and base in pred:
        rb = pred[base].to_numpy(float) - truth
        ok = ~_upper_limit_mask(pred) & finite_x & np.isfinite(rb)
        fig.scatter("x", "y", source=_star_source(pred, ok, xv, rb), size=4, color=model_color(base), alpha=0.45,
                    legend_label=model_label(base), name="cog" if base == "feh_cog" else f"baseline_{base}")
    err_column = _companion(pred, column, "err")
    if err_column:
        err = pred[err_column].to_numpy(float)
        ok = detected & np.isfinite(err)
        fig.segment(x0=xv[ok], x1=xv[ok], y0=(r - err)[ok], y1=(r + err)[ok], color=model_color(column),
                    line_alpha=0.3, legend_label=f"±1σ ({err_column})", name="envelope")
    dots = fig.scatter("x", "y", source=_star_source(pred, detected, xv, r), size=5, color=model_color(column),
                       alpha=0.8, legend_label=f"detected ({label})", name="detected")
    limits = fig.scatter("x", "y", source=_star_source(pred, upper, xv, limit), marker="inverted_triangle", size=8,
                         fill_alpha=0.15, color=UPPER_LIMIT_COLOR, legend_label="3σ upper limit − true",
                         name="upper_limits")
    fig.add_tools(HoverTool(renderers=[dots, limits], tooltips=_STAR_TOOLTIPS))
    fig.add_layout(Span(location=0, dimension="width", line_color=ZERO_COLOR, line_dash="dashed"))
    if detected.any():
        # frame the measurements: upper limits far above them would squeeze the residuals into a line (the
        # limits stay pannable)
        span = float(np.nanpercentile(np.abs(r[detected]), 99.5))
        fig.y_range = Range1d(-1.3 * span - 0.02, 1.6 * span + 0.02)
    place_legend(fig, "below")
    return fig


def members_figure(
    metrics: Mapping[str, Any],
    models: Sequence[str] | None = None,
    title: str | None = None,
    width: int = 570,
    height: int = 360,
) -> figure:
    """Plot the MAE of each model on the headline subset, with its 95% bootstrap interval as a whisker.

    One row per model: the ensemble members, the ensemble, the classical curve of growth (joint likelihood and
    per-line median) and The Cannon, each drawn only when ``metrics`` has it. The points are ``"mae"``, the
    whiskers ``"ci"``; hover a point for n, bias, scatter, r and the ensemble weight.

    Parameters
    ----------
    metrics : dict
        ``metrics.json``: ``models`` -> {key: {n, mae, mae_ci95, bias, scatter, r}}, ``cog_per_line_median``,
        ``weights``, ``synthetic``, ``headline_subset``.
    models : sequence of str, optional
        metrics.json keys to show, top to bottom; default all of :data:`MODELS`.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> m = {"synthetic": True, "models": {"ensemble": {"n": 80, "mae": 0.09, "mae_ci95": [0.08, 0.1]},
    ...                                    "cog": {"n": 80, "mae": 0.16, "mae_ci95": [0.14, 0.19]}}}
    >>> fig = members_figure(m)
    >>> list(fig.select_one({"name": "mae"}).data_source.data["model"])
    ['ensemble', 'curve of growth (joint)']
    """
    stats = model_stats(metrics)
    keys = [k for k in (models if models is not None else MODELS) if k in stats]
    if not keys:
        raise PlotInputError(f"metrics['models']: expected the stats of at least one model, found {sorted(stats)}")
    weights = metrics.get("weights") or {}
    rows: dict[str, list[Any]] = {k: [] for k in ("model", "key", "mae", "lo", "hi", "n", "bias", "scatter", "r",
                                                   "weight", "color", "size")}
    for key in keys:
        s = stats[key]
        lo, hi = as_pair(s.get("mae_ci95"))
        rows["model"].append(model_label(key) if key in MODELS else key)
        rows["key"].append(key)
        rows["mae"].append(as_float(s.get("mae")))
        rows["lo"].append(lo)
        rows["hi"].append(hi)
        rows["n"].append(as_float(s.get("n")))
        for name in ("bias", "scatter", "r"):
            rows[name].append(as_float(s.get(name)))
        w = as_float(weights.get(key))  # only the members have a weight: no NaN shown for the others
        rows["weight"].append(f"{w:.2f}" if math.isfinite(w) else "not a member")
        rows["color"].append(MODELS[key][2] if key in MODELS else "#17becf")
        rows["size"].append(12 if key == "ensemble" else 8)
    factors = rows["model"][::-1]  # the first model on top
    finite = [v for v in rows["mae"] + rows["hi"] if math.isfinite(v)]
    xmax = 1.15 * max(finite) if finite else 1.0
    if title is None:
        title = "MAE per model with its 95% interval"
    fig = figure(title=titled(title, bool(metrics.get("synthetic"))), width=width, height=height,
                 y_range=FactorRange(*factors), x_range=Range1d(0, xmax), tools="save,reset",
                 x_axis_label="mean absolute error in [Fe/H] (dex)")
    # the subset under the title (a Title added above sits between the title and the plot)
    subtitle(fig, _subset_text(metrics), reserved=260)  # the model names take the left of the figure
    source = ColumnDataSource(rows)
    fig.segment(x0="lo", x1="hi", y0="model", y1="model", source=source, color="color", line_width=3,
                line_alpha=0.6, name="ci")
    points = fig.scatter("mae", "model", source=source, size="size", color="color", name="mae")
    fig.add_tools(HoverTool(renderers=[points], tooltips=[
        ("model", "@model"), ("n", "@n{0}"), ("MAE", "@mae{0.000} dex [@lo{0.000}, @hi{0.000}]"),
        ("bias", "@bias{+0.000} dex"), ("scatter", "@scatter{0.000} dex"), ("r", "@r{0.000}"),
        ("ensemble weight", "@weight")]))
    return fig


def binned_mae_figure(
    metrics: Mapping[str, Any],
    key: str = "by_feh",
    members: bool = True,
    title: str | None = None,
    width: int = 570,
    height: int = 460,
) -> figure:
    """Plot the MAE of the ensemble and the curve of growth (and the members) in bins of [Fe/H], S/N or Teff.

    The MAE lines use the left axis (``"mae_<model>"``, e.g. ``"mae_ensemble"``, ``"mae_cog"``); behind them,
    on the right axis, each bin's stars as a bar split into detected stars (``"n_detected"``) and upper limits
    (``"n_upper_limits"``, grey), so an empty or limit-dominated bin is seen at once. A bin without detected
    stars has no MAE (a gap in the line). Hover a bin for its numbers.

    Parameters
    ----------
    metrics : dict
        ``metrics.json``; ``metrics[key]`` is a list of {lo, hi, n, n_upper_limits, mae, bias, mae_cog, mae_rf,
        mae_xgb, mae_dnn, mae_cannon} (MAEs may be null).
    key : {"by_feh", "by_snr", "by_teff"}
        Which binning.
    members : bool
        Also draw the members and The Cannon (thin dashed lines) where the bins have them.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> m = {"by_snr": [{"lo": 20, "hi": 50, "n": 40, "n_upper_limits": 30, "mae": 0.3, "mae_cog": 0.4},
    ...                 {"lo": 50, "hi": None, "n": 60, "n_upper_limits": 5, "mae": 0.1, "mae_cog": None}]}
    >>> fig = binned_mae_figure(m, "by_snr")
    >>> list(fig.x_range.factors), fig.select_one({"name": "n_upper_limits"}).data_source.data["n_upper"].tolist()
    (['[20, 50)', '≥ 50'], [30.0, 5.0])
    """
    if key not in BIN_LABELS:
        raise PlotInputError(f"key: expected one of {sorted(BIN_LABELS)}, found {key!r}")
    bins = metrics.get(key)
    if not bins:
        raise PlotInputError(f"metrics[{key!r}]: expected a list of bins, found {bins!r}")
    bins = side_by_side(bins)
    labels = [bin_label(b.get("lo"), b.get("hi")) for b in bins]
    n = np.array([as_float(b.get("n")) for b in bins])
    n_upper = np.array([as_float(b.get("n_upper_limits")) for b in bins])
    n_upper = np.where(np.isfinite(n_upper), n_upper, 0.0)
    n = np.where(np.isfinite(n), n, 0.0)
    data: dict[str, Any] = {"bin": labels, "n": n, "n_upper": n_upper, "n_detected": np.maximum(n - n_upper, 0.0)}
    drawn = [m for m in BIN_MAE_KEYS if m in ("ensemble", "cog") or members]
    for model in drawn:
        data[model] = np.array([as_float(b.get(BIN_MAE_KEYS[model])) for b in bins])
    drawn = [m for m in drawn if np.isfinite(data[m]).any()]
    maes = np.concatenate([data[m] for m in drawn]) if drawn else np.array([])
    ymax = 1.2 * float(np.nanmax(maes)) if np.isfinite(maes).any() else 1.0

    what, axis_label = BIN_LABELS[key]
    if title is None:
        title = f"MAE per {what} bin"
    fig = figure(title=titled(title, bool(metrics.get("synthetic"))), width=width, height=height,
                 x_range=FactorRange(*labels), y_range=Range1d(0, ymax), tools="save,reset",
                 x_axis_label=axis_label, y_axis_label="mean absolute error in [Fe/H] (dex)")
    subtitle(fig, "lines: MAE of the detected stars; bars: stars per bin (right axis)")
    if len(labels) * 75 > width - 120:  # the bin labels would run into each other
        fig.xaxis.major_label_orientation = 0.7
    fig.extra_y_ranges = {"stars": Range1d(0, 1.1 * max(float(n.max()), 1.0))}
    fig.add_layout(LinearAxis(y_range_name="stars", axis_label="stars per bin (bars)"), "right")
    source = ColumnDataSource(data)
    fig.vbar(x="bin", bottom=0, top="n_detected", width=0.7, source=source, y_range_name="stars",
             fill_color=MODELS["ensemble"][2], fill_alpha=0.12, line_alpha=0, legend_label="stars: detected",
             name="n_detected")
    fig.vbar(x="bin", bottom="n_detected", top="n", width=0.7, source=source, y_range_name="stars",
             fill_color=UPPER_LIMIT_COLOR, fill_alpha=0.3, line_alpha=0, hatch_pattern="/", hatch_alpha=0.3,
             legend_label="stars: upper limit", name="n_upper_limits")
    main = []
    for model in drawn:
        _, label, color = MODELS[model]
        core = model in ("ensemble", "cog")
        fig.line("bin", model, source=source, color=color, line_width=3 if model == "ensemble" else 2 if core else 1,
                 line_dash="solid" if core else "dashed", legend_label=label, name=f"mae_{model}")
        main.append(fig.scatter("bin", model, source=source, color=color, size=8 if core else 4,
                                legend_label=label))
    tooltips = [("bin", "@bin"), ("stars", "@n{0} (@n_upper{0} upper limits)")]
    tooltips += [(f"MAE {MODELS[m][1]}", f"@{{{m}}}{{0.000}} dex") for m in drawn]
    fig.add_tools(HoverTool(renderers=main[:1] or "auto", tooltips=tooltips, mode="vline"))
    place_legend(fig, "below", ncols=legend_columns(fig))
    return fig


def model_stats(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Return the stat dict of every model of ``metrics``, the per-line curve of growth included, in display order.

    ``metrics["models"]`` holds the members, the ensemble, ``cog`` and ``cannon``; the per-line median curve of
    growth sits apart in ``metrics["cog_per_line_median"]``. Models that are absent (or null) are left out.
    """
    models = dict(metrics.get("models") or {})
    if metrics.get("cog_per_line_median"):
        models.setdefault("cog_per_line_median", metrics["cog_per_line_median"])
    ordered = {k: models[k] for k in MODELS if models.get(k)}
    ordered.update({k: v for k, v in models.items() if k not in ordered and v})
    return ordered


def side_by_side(bins: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the bins that lie side by side, in order: a bin overlapping one kept before it is left out.

    A figure joins its bins by a line, so an overlapping summary bin (``≥ 100`` after ``[100, 150)`` and ``≥ 150``,
    as in metrics written by fehkit before its S/N bins were made disjoint) would be drawn as if it came next.

    Examples
    --------
    >>> bins = [{"lo": 65, "hi": 100}, {"lo": 100, "hi": 150}, {"lo": 150, "hi": None}, {"lo": 100, "hi": None}]
    >>> [bin_label(b["lo"], b["hi"]) for b in side_by_side(bins)]
    ['[65, 100)', '[100, 150)', '≥ 150']
    """
    kept: list[Mapping[str, Any]] = []
    edge = -math.inf
    for b in bins:
        lo, hi = as_float(b.get("lo")), as_float(b.get("hi"))
        lo = lo if math.isfinite(lo) else -math.inf
        if kept and lo < edge:
            continue
        kept.append(b)
        edge = hi if math.isfinite(hi) else math.inf
    return kept


def bin_label(lo: Any, hi: Any, fmt: str = "g") -> str:
    """Return a bin as a half-open interval, ``"[-4, -3.5)"``; an open end (None, NaN, ±inf) gives ``"≥ lo"``.

    Examples
    --------
    >>> bin_label(-4.0, -3.5), bin_label(200, None), bin_label(None, 50)
    ('[-4, -3.5)', '≥ 200', '< 50')
    """
    lo, hi = as_float(lo), as_float(hi)
    if not math.isfinite(hi):
        return f"≥ {lo:{fmt}}" if math.isfinite(lo) else "all"
    if not math.isfinite(lo):
        return f"< {hi:{fmt}}"
    return f"[{lo:{fmt}}, {hi:{fmt}})"


_STAR_TOOLTIPS = [("star", "@star_id"), ("S/N", "@snr{0}"), ("true Teff", "@true_teff{0} K"),
                  ("true [Fe/H]", "@true_feh{0.00}"), ("shown", "@y{0.000}"), ("lines", "@n_lines{0}"),
                  ("flag", "@flag")]


def require_columns(pred: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise an error naming the columns ``where`` needs that the predictions table lacks."""
    missing = [c for c in columns if c not in pred]
    if missing:
        raise PlotInputError(f"{where}: the predictions lack the column(s) {missing}; found {list(pred.columns)}")


def _companion(pred: pd.DataFrame, column: str, kind: str) -> str | None:
    """Return the error (``kind="err"``) or 3-sigma limit (``"upper"``) column of a model column, if ``pred`` has it.

    ``feh`` -> ``feh_err`` / ``feh_upper``, ``feh_cog`` -> ``feh_cog_err`` / ``feh_cog_upper``; a model without
    its own limit falls back to the ensemble's ``feh_upper`` (the stars flagged ``upper_limit`` are the same).
    """
    own = f"{column}_{kind}"
    if own in pred:
        return own
    return "feh_upper" if kind == "upper" and "feh_upper" in pred else None


def _upper_limit_mask(pred: pd.DataFrame) -> np.ndarray:
    if "flag" not in pred:
        return np.zeros(len(pred), dtype=bool)
    return has_flag(pred["flag"], "upper_limit")


def _star_source(pred: pd.DataFrame, sel: np.ndarray, x: np.ndarray, y: np.ndarray) -> ColumnDataSource:
    """Column data of the selected stars: x, y and the hover fields (NaN or "" where the table lacks them)."""
    data: dict[str, Any] = {"x": x[sel], "y": y[sel]}
    for name in ("snr", "true_teff", "true_feh", "n_lines"):
        data[name] = pred[name].to_numpy(float)[sel] if name in pred else np.full(int(sel.sum()), np.nan)
    for name in ("star_id", "flag"):
        data[name] = (pred[name].astype(str).to_numpy()[sel] if name in pred
                      else np.full(int(sel.sum()), "", dtype=object))
    return ColumnDataSource(data)


def _subset_text(metrics: Mapping[str, Any]) -> str:
    subset = metrics.get("headline_subset")
    n = metrics.get("n_headline")
    text = f"{n} stars" if n is not None else "headline subset"
    return f"{text}: {subset}" if subset else text
