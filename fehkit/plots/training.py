"""Figures of how the ensemble learns and fuses: the MLP's loss curves, out-of-fold residuals, weights, importances.

These are the figures of :class:`fehkit.widgets.TrainingDashboard` and :class:`fehkit.widgets.FusionExplorer`;
each builder takes numbers (losses, predictions, weights) and returns a standalone Bokeh figure, and each has an
``update_*`` twin (or, for the loss curves, :func:`stream_loss` and :func:`start_loss_curve`) that changes its data
sources in place, so a widget showing it sends only the new data to the browser and keeps the user's zoom.

Glyphs that tests and notebooks look up carry a name (``fig.select_one({"name": "train_loss"})``):
``"train_loss"``, ``"val_loss"``, ``"earlier_fits"``, ``"best"``, ``"best_span"`` (loss figure);
``"oof_<member>"`` and ``"oof_ensemble"`` (residuals); ``"weights"`` (weights); ``"mae"``, ``"mae_reference"``
(fusion metrics); ``"importance"`` (importances).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, NumeralTickFormatter, Range1d, Span
from bokeh.plotting import figure

from fehkit.errors import PlotInputError
from fehkit.plots.style import (
    FEH_LABEL,
    TOOLS,
    ZERO_COLOR,
    as_float,
    model_color,
    model_label,
    place_legend,
    titled,
)

TRAIN_COLOR = "#0072b2"


VAL_COLOR = "#d55e00"


EARLIER_COLOR = "#bbbbbb"


#: Columns of the loss figure's current-fit source.
LOSS_COLUMNS = ("epoch", "train_loss", "val_loss")


def loss_figure(title: str = "MLP loss while it trains", *, synthetic: bool = True, width: int = 860,
                height: int = 360) -> figure:
    """Plot the MLP's training and validation loss per epoch, empty until :func:`stream_loss` adds epochs.

    ``"train_loss"`` and ``"val_loss"`` are the fit in progress; ``"earlier_fits"`` keeps the validation curves of
    the fits before it (the cross-validation folds) in grey; ``"best"`` and the vertical ``"best_span"`` mark the
    early-stopping point: the epoch of lowest validation loss, whose weights the fit keeps. Losses are the MSE of
    the standardized target (1.0: predicting the mean).

    Examples
    --------
    >>> fig = loss_figure()
    >>> stream_loss(fig, 1, 0.9, 0.8, best_epoch=1, best_loss=0.8)
    >>> list(fig.select_one({"name": "val_loss"}).data_source.data["val_loss"])
    [0.8]
    """
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools=TOOLS,
                 x_axis_label="epoch", y_axis_label="loss (MSE of the standardized target)")
    fig.multi_line("xs", "ys", source=ColumnDataSource({"xs": [], "ys": [], "fit": []}), color=EARLIER_COLOR,
                   line_width=1, legend_label="validation loss of the earlier fits", name="earlier_fits")
    source = ColumnDataSource({k: [] for k in LOSS_COLUMNS})
    fig.line("epoch", "train_loss", source=source, color=TRAIN_COLOR, line_width=2,
             legend_label="training loss (mean over the epoch's batches)", name="train_loss")
    val = fig.line("epoch", "val_loss", source=source, color=VAL_COLOR, line_width=2,
                   legend_label="validation loss (early stopping watches it)", name="val_loss")
    fig.scatter("epoch", "val_loss", source=ColumnDataSource({"epoch": [], "val_loss": []}), size=11,
                marker="diamond", color=VAL_COLOR, line_color="black",
                legend_label="early-stopping point: the weights kept", name="best")
    fig.add_layout(Span(location=None, dimension="height", line_color=VAL_COLOR, line_dash="dashed",
                        line_width=1, name="best_span"))
    fig.add_tools(HoverTool(renderers=[val], tooltips=[("epoch", "@epoch"), ("training", "@train_loss{0.0000}"),
                                                      ("validation", "@val_loss{0.0000}")], mode="vline"))
    place_legend(fig, "below", ncols=2)  # below: the curves of every fit stay visible
    return fig


def stream_loss(fig: figure, epoch: int, train_loss: float, val_loss: float, *, best_epoch: int,
                best_loss: float) -> None:
    """Add one epoch to a :func:`loss_figure` (a stream: only the new row goes to the browser); move the marker."""
    fig.select_one({"name": "val_loss"}).data_source.stream(
        {"epoch": [int(epoch)], "train_loss": [float(train_loss)], "val_loss": [float(val_loss)]})
    best = fig.select_one({"name": "best"}).data_source
    if list(best.data["epoch"]) != [int(best_epoch)]:
        best.data = {"epoch": [int(best_epoch)], "val_loss": [float(best_loss)]}
        fig.select_one({"name": "best_span"}).location = int(best_epoch)


def start_loss_curve(fig: figure, title: str) -> None:
    """Begin a new fit on a :func:`loss_figure`: the finished fit's validation curve joins the grey earlier fits."""
    current = fig.select_one({"name": "val_loss"}).data_source
    if len(current.data["epoch"]):
        earlier = fig.select_one({"name": "earlier_fits"}).data_source
        earlier.stream({"xs": [list(current.data["epoch"])], "ys": [list(current.data["val_loss"])],
                        "fit": [fig.title.text]})
    current.data = {k: [] for k in LOSS_COLUMNS}
    fig.select_one({"name": "best"}).data_source.data = {"epoch": [], "val_loss": []}
    fig.select_one({"name": "best_span"}).location = None
    fig.title.text = title


def oof_residuals_figure(labels: Any, members: Mapping[str, Any], fused: Any, *, synthetic: bool = True,
                         title: str = "out-of-fold residuals of the training stars", width: int = 540,
                         height: int = 400) -> figure:
    """Plot each member's out-of-fold residual (prediction - label) against the label, and the fused one's.

    Out-of-fold: each star predicted by the member trained on the other folds, so these are honest errors; their
    mean square sets the member's weight. One scatter per member (``"oof_<member>"``, click its legend entry to
    hide it) and ``"oof_ensemble"``; :func:`update_oof_residuals_figure` redraws them in place.

    Parameters
    ----------
    labels : (n,) float
        The training labels of the stars ([Fe/H], dex).
    members : dict of str to (n,) float
        Each member's out-of-fold [Fe/H] (``FeHEnsemble.oof_predictions_["feh_<member>"]``).
    fused : (n,) float
        The fused out-of-fold [Fe/H] (``oof_predictions_["feh"]``).
    """
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools=TOOLS,
                 x_axis_label="training label " + FEH_LABEL, y_axis_label="out-of-fold prediction − label (dex)")
    fig.add_layout(Span(location=0, dimension="width", line_color=ZERO_COLOR, line_dash="dashed"))
    renderers = []
    for key in (*members, "ensemble"):
        size, alpha = (6, 0.9) if key == "ensemble" else (4, 0.45)
        renderers.append(fig.scatter("label", "resid", source=ColumnDataSource({"label": [], "resid": []}),
                                     size=size, alpha=alpha, color=model_color(key), legend_label=model_label(key),
                                     name=f"oof_{key}"))
    fig.add_tools(HoverTool(renderers=renderers, tooltips=[("label", "@label{0.00}"), ("residual", "@resid{+0.000}")]))
    update_oof_residuals_figure(fig, labels, members, fused)
    place_legend(fig, "below", ncols=4)
    return fig


def update_oof_residuals_figure(fig: figure, labels: Any, members: Mapping[str, Any], fused: Any) -> figure:
    """Redraw an :func:`oof_residuals_figure` with new out-of-fold predictions (arguments alike)."""
    y = np.asarray(labels, float)
    for key, pred in (*members.items(), ("ensemble", fused)):
        p = np.asarray(pred, float)
        if p.shape != y.shape:
            raise PlotInputError(f"out-of-fold predictions of {key!r}: shape {p.shape}; expected one per label "
                                 f"{y.shape}")
        glyph = fig.select_one({"name": f"oof_{key}"})
        if glyph is None:
            raise PlotInputError(f"members: {key!r} is not drawn by this figure; expected the members it was built "
                                 "with")
        ok = np.isfinite(p) & np.isfinite(y)
        glyph.data_source.data = {"label": y[ok], "resid": p[ok] - y[ok]}
    return fig


def weights_figure(weights: Mapping[str, float], oof_mse: Mapping[str, float] | None = None, *,
                   synthetic: bool = True, title: str = "fused weights", width: int = 320,
                   height: int = 400) -> figure:
    """Plot each member's weight in the ensemble as a bar (``"weights"``), its out-of-fold RMS beside it.

    :func:`update_weights_figure` sets other weights in place.
    """
    names = list(weights)
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools="save",
                 y_range=FactorRange(*[model_label(m) for m in names][::-1]), x_range=Range1d(0, 1.25),
                 x_axis_label="weight")
    source = ColumnDataSource({k: [] for k in ("member", "weight", "color", "text", "oof_rms")})
    fig.hbar(y="member", right="weight", height=0.6, color="color", source=source, name="weights")
    fig.text(x="weight", y="member", text="text", source=source, x_offset=4, text_baseline="middle",
             text_font_size="9pt")
    fig.add_tools(HoverTool(tooltips=[("member", "@member"), ("weight", "@weight{0.000}"),
                                      ("out-of-fold RMS", "@oof_rms{0.000} dex")]))
    update_weights_figure(fig, weights, oof_mse)
    return fig


def update_weights_figure(fig: figure, weights: Mapping[str, float],
                          oof_mse: Mapping[str, float] | None = None) -> figure:
    """Redraw a :func:`weights_figure` with other weights (the same members)."""
    rms = {m: math.sqrt(v) if math.isfinite(v := as_float((oof_mse or {}).get(m))) and v >= 0 else math.nan
           for m in weights}
    w = {m: as_float(v) for m, v in weights.items()}
    fig.select_one({"name": "weights"}).data_source.data = {
        "member": [model_label(m) for m in w], "weight": [v if math.isfinite(v) else 0.0 for v in w.values()],
        "color": [model_color(m) for m in w],
        "text": [(f"{v:.2f}" if math.isfinite(v) else "") + (f" (OOF RMS {rms[m]:.3f})" if math.isfinite(rms[m])
                                                              else "") for m, v in w.items()],
        "oof_rms": [rms[m] for m in w]}
    fig.y_range.factors = [model_label(m) for m in w][::-1]
    return fig


def fusion_metrics_figure(mae: Mapping[str, float], reference: Mapping[str, float] | None = None, *,
                          synthetic: bool = True, title: str = "MAE of the fused [Fe/H]", width: int = 380,
                          height: int = 330) -> figure:
    """Plot the fused [Fe/H]'s MAE on each set of stars (``"mae"`` bars) against a reference (``"mae_reference"``).

    ``mae`` maps a set name ("out-of-fold", "test") to its MAE; ``reference`` holds the same for the
    inverse-variance weights, drawn as black dashes so a change of weights shows as a bar above or below them.
    :func:`update_fusion_metrics_figure` sets new values in place.
    """
    sets = list(mae)
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools="save",
                 x_range=FactorRange(*sets), y_range=Range1d(0, 0.1), y_axis_label="MAE (dex)")
    fig.vbar(x="set", top="mae", width=0.55, color="#1f3b73", alpha=0.8,
             source=ColumnDataSource({"set": [], "mae": [], "text": []}), legend_label="these weights", name="mae")
    fig.text(x="set", y="mae", text="text", source=fig.select_one({"name": "mae"}).data_source, y_offset=-4,
             text_align="center", text_baseline="bottom", text_font_size="9pt")
    fig.scatter("set", "mae", source=ColumnDataSource({"set": [], "mae": []}), marker="dash", size=60,
                line_width=3, color="black", legend_label="inverse-variance weights", name="mae_reference")
    place_legend(fig, "below", ncols=2)
    update_fusion_metrics_figure(fig, mae, reference)
    return fig


def update_fusion_metrics_figure(fig: figure, mae: Mapping[str, float],
                                 reference: Mapping[str, float] | None = None) -> figure:
    """Redraw a :func:`fusion_metrics_figure` with new MAEs (and, if given, a new reference)."""
    values = {k: as_float(v) for k, v in mae.items()}
    fig.select_one({"name": "mae"}).data_source.data = {
        "set": list(values), "mae": [v if math.isfinite(v) else 0.0 for v in values.values()],
        "text": [f"{v:.4f}" if math.isfinite(v) else "n/a" for v in values.values()]}
    if reference is not None:
        ref = {k: as_float(v) for k, v in reference.items() if math.isfinite(as_float(v))}
        fig.select_one({"name": "mae_reference"}).data_source.data = {"set": list(ref), "mae": list(ref.values())}
    shown = [v for v in values.values() if math.isfinite(v)]
    shown += list(fig.select_one({"name": "mae_reference"}).data_source.data["mae"])
    top = 1.25 * max(shown, default=0.08)
    if top > fig.y_range.end or top < 0.5 * fig.y_range.end:  # rescale only on a large change: the bars stay put
        fig.y_range.end = top
    return fig


def importance_figure(names: Sequence[str], values: Any, *, synthetic: bool = True,
                      title: str = "permutation importance", x_label: str = "MAE increase when shuffled (dex)",
                      width: int = 470, height: int = 330) -> figure:
    """Plot feature importances as horizontal bars (``"importance"``), the most important on top, each labelled.

    When the first bar dwarfs the others (more than 4 times the second), the axis stops at 1.5 times the second
    so the rest stay readable, and the first bar runs off the frame with its value written at the edge.
    :func:`update_importance_figure` redraws them (other values, other features) in place.
    """
    fig = figure(title=titled(title, synthetic), width=width, height=height, tools="save",
                 y_range=FactorRange(), x_range=Range1d(0, 1), x_axis_label=x_label)
    source = ColumnDataSource({"feature": [], "value": [], "text": [], "text_x": []})
    fig.hbar(y="feature", right="value", height=0.7, color="#1f3b73", alpha=0.8, source=source, name="importance")
    fig.text(x="text_x", y="feature", text="text", source=source, x_offset=-3, text_align="right",
             text_baseline="middle", text_font_size="8pt", text_color="white")
    fig.add_tools(HoverTool(tooltips=[("feature", "@feature"), ("importance", "@value{0.0000}")]))
    fig.yaxis.major_label_text_font_size = "8pt"
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0000]")
    fig.xaxis.ticker.desired_num_ticks = 4
    update_importance_figure(fig, names, values)
    return fig


def update_importance_figure(fig: figure, names: Sequence[str], values: Any) -> figure:
    """Redraw an :func:`importance_figure` with new features and values (in the order given: the first on top)."""
    v = np.asarray(values, float)
    if v.shape != (len(names),):
        raise PlotInputError(f"values: shape {v.shape}; expected one per name ({len(names)})")
    names = [str(n) for n in names]
    finite = np.sort(v[np.isfinite(v)])[::-1]
    end = float(1.1 * finite[0]) if finite.size and finite[0] > 0 else 1.0
    if finite.size > 1 and finite[1] > 0 and finite[0] > 4 * finite[1]:
        end = float(1.5 * finite[1])
    # each bar's value written inside its end, or at the frame's edge for a bar that runs off it
    text_x = np.minimum(np.nan_to_num(v), end)
    fig.select_one({"name": "importance"}).data_source.data = {
        "feature": names, "value": v, "text": [f"{x:.4f}" if np.isfinite(x) and x > 0.3 * end else "" for x in v],
        "text_x": text_x}
    fig.y_range.factors = names[::-1]
    fig.x_range.end = end
    return fig
