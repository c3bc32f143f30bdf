"""Figures of the equivalent-width stage: one line's Voigt fit in its window, measured against true EWs.

Data in, figure out, no science inside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Title
from bokeh.plotting import figure

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.ew import window_pixels
from fehkit.lines import WINDOW_HALF_WIDTH_PIX
from fehkit.spectra import SpectrumBatch

if TYPE_CHECKING:  # only for annotations
    from fehkit.ew import EWTable

from fehkit.errors import PlotInputError
from fehkit.plots.spectra import FLUX_COLOR, GAP_COLOR, MASK_COLOR, spectrum_label

MODEL_COLOR = "#d62728"


FLAG_COLORS = {"ok": "#1f77b4", "upper_limit": "#7f7f7f", "blend_suspect": "#ff7f0e", "fit_failed": "#d62728",
               "masked": "#9467bd"}


def line_fit_figure(
    norm_batch: SpectrumBatch,
    table: EWTable,
    index: int,
    k: int,
    width: int = 520,
    height: int = 360,
) -> figure:
    """Plot the fit window of one line of one spectrum: the data, the fitted Voigt profile and the flag.

    The pixels are drawn with their 1-sigma error bars, masked pixels are shaded red (whatever their flux), the
    fitted profile comes from ``table.model`` on a fine grid, the dashed vertical line is the fitted line centre
    and the dotted horizontal one the fitted local continuum level. The title names the spectrum and the line;
    two lines under it give the EW with its error and the flag, then the upper limit of an undetected line and
    whether the line kept its own shape (``fig.above[-1]``); the reasons behind the flag are listed under the
    plot, one a line (``fig.below[-1]``). The legend, under the plot, lists only what is drawn. Every renderer is
    named, so :func:`update_line_fit_figure` shows another line or spectrum in the same figure.

    Parameters
    ----------
    norm_batch : SpectrumBatch
        The **continuum-normalized** spectra the EWs were measured on (``flux_unit == ""``).
    table : fehkit.ew.EWTable
        The measurement, with one row per spectrum of ``norm_batch``.
    index : int
        Which spectrum.
    k : int
        Which line (row of ``table.lines``).
    width, height : int
        Size in screen pixels (the default leaves room for a table beside it in a notebook cell).

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from fehkit.continuum import normalize
    >>> from fehkit.ew import measure_ew
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4700], "logg": [1.4], "feh": [-2.0], "vmic": [1.9], "snr": [150]}, seed=2)
    >>> norm_batch = normalize(sim.batch).batch
    >>> fig = line_fit_figure(norm_batch, measure_ew(norm_batch, mc_draws=0), 0, 2)
    >>> fig.title.text
    'SYNTHETIC SYN-000000 (S/N 150): Fe I 15298.74 Å'
    >>> print(fig.above[-1].text)
    EW 112.0 ± 5.8 mÅ   flag: ok
    its own line shape
    """
    check_line_fit_inputs(norm_batch, table)
    fig = figure(width=width, height=height, x_axis_label="vacuum wavelength (Å)", y_axis_label="normalized flux",
                 tools="box_zoom,reset,save", x_range=Range1d(0, 1), y_range=Range1d(0, 1))
    # the numbers go under the title (a second Title added above sits between the title and the plot) and the
    # reasons under the plot, one a line: Bokeh titles do not wrap
    fig.add_layout(Title(text="", text_font_size="10pt", text_font_style="normal", name="numbers"), "above")
    fig.add_layout(Title(text="", text_font_style="italic", text_font_size="8.5pt", name="reasons"), "below")
    empty = {"wave": [], "flux": []}
    fig.quad(left="left", right="right", bottom="bottom", top="top", name="masked", fill_color=MASK_COLOR,
             fill_alpha=0.15, line_alpha=0, legend_label="masked pixel",
             source=ColumnDataSource({"left": [], "right": [], "bottom": [], "top": []}))
    # pixels the fit dropped as outliers (a cosmic ray, a neighbouring line): drawn hollow
    fig.scatter("wave", "flux", source=ColumnDataSource(dict(empty)), size=8, marker="circle", fill_alpha=0,
                line_color=MASK_COLOR, legend_label="dropped by the fit", name="dropped")
    fig.segment(x0="wave", x1="wave", y0="lo", y1="hi", source=ColumnDataSource({"wave": [], "lo": [], "hi": []}),
                color=FLUX_COLOR, line_alpha=0.5, legend_label="±1σ", name="errors")
    pixels = fig.scatter("wave", "flux", source=ColumnDataSource({"wave": [], "flux": [], "err": []}), size=5,
                         color=FLUX_COLOR, legend_label="data", name="pixels")
    fig.add_tools(HoverTool(renderers=[pixels], tooltips=[("λ", "@wave{0.000} Å"), ("flux", "@flux{0.000}"),
                                                          ("σ", "@err{0.000}")]))
    fig.line("wave", "flux", source=ColumnDataSource(dict(empty)), color=MODEL_COLOR, line_width=2,
             legend_label="fitted profile", name="model")
    fig.line("wave", "flux", source=ColumnDataSource(dict(empty)), color=GAP_COLOR, line_dash="dotted",
             legend_label="local continuum", name="level")
    fig.line("wave", "flux", source=ColumnDataSource(dict(empty)), color=MODEL_COLOR, line_dash="dashed",
             line_alpha=0.6, legend_label="line centre", name="centre")
    legend = fig.legend[0]
    legend.label_text_font_size = "8pt"
    legend.click_policy = "hide"
    legend.orientation = "horizontal"  # under the data, in columns: the plot keeps its width, the legend is not cut
    legend.ncols = 4
    legend.spacing, legend.padding, legend.margin = 2, 4, 4
    fig.add_layout(legend, "below")
    update_line_fit_figure(fig, norm_batch, table, index, k)
    return fig


def update_line_fit_figure(fig: figure, norm_batch: SpectrumBatch, table: EWTable, index: int, k: int) -> None:
    """Show line ``k`` of spectrum ``index`` in a figure of :func:`line_fit_figure`, in place.

    Every source, the ranges (the new line's window), the titles and which legend entries show change; no model
    is added or left behind, so a :class:`jupyter_bokeh.BokehModel` holding the figure sends only the changes.
    """
    check_line_fit_inputs(norm_batch, table)
    if not 0 <= index < table.n_spectra or not 0 <= k < table.n_lines:
        raise PlotInputError(f"index, k: expected a spectrum 0-{table.n_spectra - 1} and a line "
                             f"0-{table.n_lines - 1}, found {index}, {k}")
    line = table.lines.iloc[k]
    lam0 = float(line["wave_vac"])
    idx, inside = window_pixels(norm_batch.wave, table.lines.iloc[[k]],
                                int(table.info.get("half_width_pix", WINDOW_HALF_WIDTH_PIX)))
    pix = idx[0][inside[0]]
    wave = norm_batch.wave[pix].astype(float)
    flux = norm_batch.flux[index, pix].astype(float)
    ivar = norm_batch.ivar[index, pix].astype(float)
    mask = norm_batch.mask[index, pix]
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(ivar > 0, 1.0 / np.sqrt(ivar), np.nan)
    good = ~mask & np.isfinite(flux)

    fine = np.linspace(wave[0], wave[-1], 12 * wave.size)
    model = np.asarray(table.model(index, k, fine), float)
    ew, ew_err = float(table.ew_mA[index, k]), float(table.ew_err_mA[index, k])
    flag, reasons = str(table.flag[index, k]), str(table.reasons[index, k])
    level = float(table.continuum[index, k])
    centre = lam0 * (1.0 + float(table.rv_kms[index, k]) / SPEED_OF_LIGHT_KMS)

    shown = np.concatenate([(flux - err)[good], (flux + err)[good], model[np.isfinite(model)], [1.0]])
    shown = shown[np.isfinite(shown)]
    lo, hi = float(shown.min()), float(shown.max())
    pad = 0.08 * (hi - lo or 0.1)
    ylo, yhi = lo - pad, hi + pad

    measured = f"EW {ew:.1f} ± {ew_err:.1f} mÅ" if np.isfinite(ew) else "no EW"
    shape = "its own line shape" if bool(table.free_shape[index, k]) else "the star's shared line shape"
    upper = float(table.ew_upper_mA[index, k])
    if flag == "upper_limit" and np.isfinite(upper):  # only an undetected line has an upper limit
        shape = f"not detected: EW < {upper:.1f} mÅ ({table.detection_sigma:g}σ upper limit); {shape}"
    fig.title.text = f"{spectrum_label(norm_batch, index)}: Fe I {lam0:.2f} Å"
    fig.select_one({"name": "numbers"}).text = f"{measured}   flag: {flag}\n{shape}"
    fig.select_one({"name": "reasons"}).text = "\n".join(f"• {r}" for r in reasons.split("; ")) if reasons else ""
    fig.x_range.update(start=float(wave[0]), end=float(wave[-1]))
    fig.y_range.update(start=ylo, end=yhi)

    half = 0.5 * np.gradient(wave) if wave.size > 1 else np.full(wave.size, 0.1)
    dropped = (good & ~table.used[index, k][inside[0]]) if table.used is not None else np.zeros_like(good)
    data: dict[str, dict[str, object]] = {
        "masked": {"left": (wave - half)[mask], "right": (wave + half)[mask], "bottom": np.full(mask.sum(), ylo),
                   "top": np.full(mask.sum(), yhi)},
        "dropped": {"wave": wave[dropped], "flux": flux[dropped]},
        "errors": {"wave": wave[good], "lo": (flux - err)[good], "hi": (flux + err)[good]},
        "pixels": {"wave": wave[good], "flux": flux[good], "err": err[good]},
        "model": {"wave": fine, "flux": model} if np.isfinite(model).any() else {"wave": [], "flux": []},
        "level": ({"wave": [wave[0], wave[-1]], "flux": [level, level]} if np.isfinite(level)
                  else {"wave": [], "flux": []}),
        "centre": ({"wave": [centre, centre], "flux": [ylo, yhi]} if np.isfinite(centre)
                   else {"wave": [], "flux": []}),
    }
    drawn = set()
    for name, columns in data.items():
        fig.select_one({"name": name}).data_source.data = columns
        if len(next(iter(columns.values()))):
            drawn.add(name)
    for item in fig.legend[0].items:  # the legend lists only what this line has
        item.visible = any(r.name in drawn for r in item.renderers)


def ew_comparison_figure(
    measured: np.ndarray,
    err: np.ndarray,
    true: np.ndarray,
    flag: np.ndarray | None = None,
    synthetic: bool = True,
    title: str | None = None,
    width: int = 640,
    height: int = 480,
) -> figure:
    """Plot measured against true equivalent widths, with 1-sigma error bars and the one-to-one line.

    Parameters
    ----------
    measured, err, true : array, any shape (e.g. (n_spec, n_lines)), mA
        Measured EW, its 1-sigma error and the true EW; flattened, and pairs without a finite measurement left
        out (masked and failed lines).
    flag : array of str, same shape, optional
        The flags (``EWTable.flag``); points are coloured and hoverable by flag.
    synthetic : bool
        Whether the truth comes from a simulation (the usual case): the title then says SYNTHETIC.
    title : str, optional
        Replaces the default title.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = ew_comparison_figure(np.array([10.0, 21.0, np.nan]), np.array([2.0, 2.5, np.nan]),
    ...                            np.array([11.0, 20.0, 5.0]))
    >>> fig.title.text
    'SYNTHETIC: measured vs true EW (2 lines)'
    """
    measured, err, true = (np.asarray(a, float).ravel() for a in (measured, err, true))
    if not measured.shape == err.shape == true.shape:
        raise PlotInputError(f"measured, err, true: expected the same number of values, found {measured.size}, "
                             f"{err.size} and {true.size}")
    flags = (np.full(measured.size, "measured", dtype=object) if flag is None
             else np.asarray(flag, dtype=object).ravel())
    if flags.size != measured.size:
        raise PlotInputError(f"flag: expected {measured.size} values (like measured), found {flags.size}")
    keep = np.isfinite(measured) & np.isfinite(true)
    measured, err, true, flags = measured[keep], err[keep], true[keep], flags[keep]
    if title is None:
        title = f"{'SYNTHETIC: ' if synthetic else ''}measured vs true EW ({keep.sum()} lines)"
    fig = figure(title=title, width=width, height=height, x_axis_label="true EW (mÅ)",
                 y_axis_label="measured EW (mÅ)", tools="pan,wheel_zoom,box_zoom,reset,save")
    values = np.concatenate([true, measured, [0.0, 1.0]])
    lo, hi = float(values.min()), float(values.max())
    fig.line([lo, hi], [lo, hi], color=GAP_COLOR, line_dash="dashed", legend_label="measured = true")
    e = np.where(np.isfinite(err), err, 0.0)
    for name in dict.fromkeys(flags):   # in order of appearance, each flag once
        sel = flags == name
        color = FLAG_COLORS.get(str(name), FLUX_COLOR)
        fig.segment(x0=true[sel], x1=true[sel], y0=(measured - e)[sel], y1=(measured + e)[sel], color=color,
                    line_alpha=0.35)
        src = ColumnDataSource({"true": true[sel], "measured": measured[sel], "err": err[sel],
                                "flag": flags[sel].astype(str)})
        dots = fig.scatter("true", "measured", source=src, size=4, color=color, alpha=0.8, legend_label=str(name))
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("true", "@true{0.0} mÅ"),
                                                            ("measured", "@measured{0.0} ± @err{0.0} mÅ"),
                                                            ("flag", "@flag")]))
    legend = fig.legend[0]
    legend.click_policy = "hide"
    fig.add_layout(legend, "right")  # outside the data, so it hides no point
    return fig


def check_line_fit_inputs(norm_batch: SpectrumBatch, table: EWTable) -> None:
    """Check that ``table`` was measured on ``norm_batch``: normalized spectra, one table row per spectrum."""
    if norm_batch.flux_unit != "":
        raise PlotInputError(f"norm_batch: expected continuum-normalized spectra (flux_unit ''), found flux_unit "
                             f"{norm_batch.flux_unit!r}; pass normalize(batch).batch, the batch measure_ew was given")
    if table.n_spectra != norm_batch.n_spectra:
        raise PlotInputError(f"table: expected one row per spectrum of norm_batch ({norm_batch.n_spectra}), found "
                             f"{table.n_spectra}")
