"""What every results figure shares: the models' names, labels and colours, axis labels, titles and legends."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

from bokeh.models import Title
from bokeh.plotting import figure

from fehkit.errors import PlotInputError

#: The models fehkit reports, in display order: metrics.json key -> (predictions column, label, colour).
MODELS: dict[str, tuple[str, str, str]] = {
    "rf": ("feh_rf", "random forest", "#009e73"),
    "xgb": ("feh_xgb", "XGBoost", "#e69f00"),
    "dnn": ("feh_dnn", "neural net", "#cc79a7"),
    "ensemble": ("feh", "ensemble", "#1f3b73"),
    "cog": ("feh_cog", "curve of growth (joint)", "#d62728"),
    "cog_per_line_median": ("feh_cog_median", "curve of growth (per-line median)", "#8c564b"),
    "cannon": ("feh_cannon", "The Cannon", "#7f7f7f"),
}


#: The key of each model's MAE in a ``by_snr`` / ``by_feh`` / ``by_teff`` bin of metrics.json.
BIN_MAE_KEYS: dict[str, str] = {"ensemble": "mae", "cog": "mae_cog", "rf": "mae_rf", "xgb": "mae_xgb",
                                "dnn": "mae_dnn", "cannon": "mae_cannon"}


UPPER_LIMIT_COLOR = "#7f7f7f"


ZERO_COLOR = "#444444"


SYNTHETIC_PREFIX = "SYNTHETIC: "


FEH_LABEL = "[Fe/H] (dex)"


X_LABELS = {"snr": "S/N per pixel", "true_feh": "true [Fe/H] (dex)", "true_teff": "true Teff (K)"}


BIN_LABELS = {"by_feh": ("true [Fe/H]", "true [Fe/H] bin (dex)"), "by_snr": ("S/N", "S/N per pixel bin"),
              "by_teff": ("true Teff", "true Teff bin (K)")}


TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def model_column(model: str) -> str:
    """Return the predictions column of a model given by its metrics.json key or its column name.

    Examples
    --------
    >>> model_column("ensemble"), model_column("rf"), model_column("feh_cog"), model_column("cog_per_line_median")
    ('feh', 'feh_rf', 'feh_cog', 'feh_cog_median')
    """
    if model in MODELS:
        return MODELS[model][0]
    if model == "feh" or model.startswith("feh_"):
        return model
    raise PlotInputError(f"model: expected one of {sorted(MODELS)} or a predictions column such as 'feh_rf', "
                         f"found {model!r}")


def model_label(model: str) -> str:
    """Return the display name of a model (key or column); an unknown column is shown as it is."""
    column = model_column(model)
    return next((label for col, label, _ in MODELS.values() if col == column), column)


def model_color(model: str) -> str:
    """Return the colour of a model (key or column), the same in every figure."""
    column = model_column(model)
    return next((color for col, _, color in MODELS.values() if col == column), "#17becf")


def titled(title: str, synthetic: bool) -> str:
    """Return ``title``, prefixed "SYNTHETIC: " for a simulated benchmark."""
    return (SYNTHETIC_PREFIX if synthetic else "") + title


def as_float(value: Any) -> float:
    """Return a float, NaN for None or anything that is not a number (JSON null, "n/a")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def as_pair(value: Any) -> tuple[float, float]:
    """Return a two-element sequence (a CI from metrics.json) as two floats; (NaN, NaN) for anything else."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return as_float(value[0]), as_float(value[1])
    return math.nan, math.nan


#: Width of one character of a 9 pt subtitle, in screen pixels (generous, so a wrapped line is never cut).
SUBTITLE_CHAR_PX = 6.3


def subtitle(fig: figure, text: str, font_size: str = "9pt", reserved: int = 70) -> Title:
    """Add ``text`` under the title, wrapped to the figure's width (a Bokeh title does not wrap; it is cut).

    A Title added above sits between the title and the plot; lines are broken at spaces to fit ``fig.width``
    less ``reserved`` pixels (the axis and its labels, the toolbar), so the text is whole in a figure half a
    notebook cell wide.
    """
    chars = max(24, int((fig.width - reserved) / SUBTITLE_CHAR_PX))
    title = Title(text="\n".join(textwrap.wrap(text, chars)), text_font_size=font_size, text_font_style="normal")
    fig.add_layout(title, "above")
    return title


def legend_columns(fig: figure, widest: int = 3) -> int:
    """Return how many legend columns fit under a figure: ``widest`` at 560 px and more, fewer below."""
    return max(1, min(widest, int(fig.width // 190)))


def place_legend(fig: figure, where: str, inside: bool = False, ncols: int = 2) -> None:
    """Put the legend inside the frame at ``where``, or outside it (``"below"``: in columns), clickable to hide."""
    legend = fig.legend[0]
    legend.click_policy = "hide"
    legend.label_text_font_size = "8.5pt"
    if inside:
        legend.location = where
        legend.background_fill_alpha = 0.7
        return
    if where == "below":  # in columns, so the figure keeps its width for the data; fewer when it is narrow
        legend.orientation = "horizontal"
        legend.ncols = min(ncols, legend_columns(fig, ncols))
        legend.spacing, legend.padding, legend.margin = 2, 4, 4
    fig.add_layout(legend, where)  # outside the data, so it hides no point
