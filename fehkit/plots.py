"""Bokeh figure builders: data in, figure out, no science inside.

Figures are standalone Bokeh models, so they render in static HTML, in notebooks (``bokeh.io.show`` or
``jupyter_bokeh.BokehModel``) and under nbval alike; nothing here needs a Bokeh server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Title
from bokeh.plotting import figure

from fehkit.ew import window_pixels
from fehkit.io import SPEED_OF_LIGHT_KMS
from fehkit.lines import WINDOW_HALF_WIDTH_PIX
from fehkit.spectra import SpectrumBatch

if TYPE_CHECKING:  # only for the annotation of line_fit_figure
    from fehkit.ew import EWTable

FLUX_COLOR = "#1f3b73"
MASK_COLOR = "#d62728"
WINDOW_COLOR = "#ff9f1c"
GAP_COLOR = "#7f7f7f"


def spectrum_sources(batch: SpectrumBatch, index: int) -> dict[str, dict[str, np.ndarray]]:
    """Column data for :func:`spectrum_figure`: the flux, its masked pixels and the data gaps of one spectrum.

    Returns
    -------
    dict
        ``"flux"``: wave, flux (NaN where there is no data, so the line breaks there); ``"masked"``: wave,
        flux of masked pixels that have a finite flux; ``"gaps"``: left, right of each data gap.
    """
    wave, flux, mask = batch.wave, batch.flux[index].astype(float), batch.mask[index]
    finite = np.isfinite(flux)
    gaps = batch.data_gaps()[index] if batch.n_spectra else []
    return {
        "flux": {"wave": wave, "flux": np.where(finite, flux, np.nan)},
        "masked": {"wave": wave[mask & finite], "flux": flux[mask & finite]},
        "gaps": {"left": np.array([g[0] for g in gaps]), "right": np.array([g[1] for g in gaps])},
    }


def flux_range(batch: SpectrumBatch, index: int) -> tuple[float, float]:
    """Return a y range that shows the unmasked flux of one spectrum without letting outliers squash it."""
    good = batch.flux[index][~batch.mask[index]]
    if good.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(good, [0.5, 99.5])
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    return float(lo - pad), float(hi + pad)


def spectrum_figure(
    batch: SpectrumBatch,
    index: int = 0,
    lines: pd.DataFrame | None = None,
    title: str | None = None,
    width: int = 1000,
    height: int = 320,
) -> figure:
    """Plot one spectrum with its masked pixels, data gaps and the Fe line fit windows.

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra.
    index : int
        Which spectrum of the batch to draw.
    lines : pandas.DataFrame, optional
        A line list (:func:`fehkit.lines.load_linelist`); its fit windows are shaded and hoverable.
    title : str, optional
        Figure title; default the star id and SNR.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure
    """
    meta = batch.meta.iloc[index]
    if title is None:
        snr = meta.get("snr", np.nan)
        title = f"{meta.get('star_id', index)}" + (f"  (S/N {snr:.0f})" if np.isfinite(snr) else "")
    unit = batch.flux_unit or "normalized"
    fig = figure(
        title=title,
        width=width,
        height=height,
        x_axis_label="vacuum wavelength (Å)",
        y_axis_label=f"flux ({unit})",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        active_scroll="xwheel_zoom",
        x_range=Range1d(float(batch.wave[0]), float(batch.wave[-1])),
    )
    ylo, yhi = flux_range(batch, index)
    fig.y_range = Range1d(ylo, yhi)
    data = spectrum_sources(batch, index)

    gaps = ColumnDataSource(dict(data["gaps"], bottom=np.full(len(data["gaps"]["left"]), ylo),
                                 top=np.full(len(data["gaps"]["left"]), yhi)))
    fig.quad(left="left", right="right", bottom="bottom", top="top", source=gaps, fill_color=GAP_COLOR,
             fill_alpha=0.15, line_alpha=0, legend_label="chip gap (no data)")
    if lines is not None and len(lines):
        windows = ColumnDataSource(
            {
                "left": lines["window_lo"].to_numpy(float),
                "right": lines["window_hi"].to_numpy(float),
                "bottom": np.full(len(lines), ylo),
                "top": np.full(len(lines), yhi),
                "wave": lines["wave_vac"].to_numpy(float),
                "chi": lines["chi"].to_numpy(float),
                "loggf": lines["loggf"].to_numpy(float),
            }
        )
        boxes = fig.quad(left="left", right="right", bottom="bottom", top="top", source=windows,
                         fill_color=WINDOW_COLOR, fill_alpha=0.18, line_alpha=0, legend_label="Fe I fit window")
        fig.add_tools(HoverTool(renderers=[boxes], tooltips=[("Fe I", "@wave{0.00} Å"), ("χ", "@chi{0.00} eV"),
                                                            ("log gf", "@loggf{0.000}")]))
    flux = fig.line("wave", "flux", source=ColumnDataSource(data["flux"]), color=FLUX_COLOR, line_width=1,
                    legend_label="flux")
    fig.add_tools(HoverTool(renderers=[flux], tooltips=[("λ", "@wave{0.00} Å"), ("flux", "@flux{0.000}")],
                            mode="vline"))
    fig.scatter("wave", "flux", source=ColumnDataSource(data["masked"]), marker="x", size=5, color=MASK_COLOR,
                legend_label="masked pixel")
    legend = fig.legend[0]
    legend.orientation = "horizontal"
    legend.click_policy = "hide"
    legend.label_text_font_size = "9pt"
    fig.add_layout(legend, "above")  # outside the data, so it hides no pixel
    return fig


def display_continuum(wave: np.ndarray, flux: np.ndarray, width: int = 301, q: float = 90.0) -> np.ndarray:
    """Return a running upper percentile of the flux per detector: a quick pseudo-continuum **for display only**.

    It lets spectra of different flux levels share one axis; fehkit's continuum normalization is a separate,
    tested stage. NaN stays NaN.
    """
    from scipy.ndimage import percentile_filter

    from fehkit.spectra import CHIPS

    out = np.full(flux.shape, np.nan)
    for lo, hi in CHIPS.values():
        sel = (wave >= lo) & (wave <= hi)
        seg = flux[sel].astype(float)
        good = np.isfinite(seg)
        if good.sum() < 10:
            continue
        filled = np.interp(np.arange(seg.size), np.flatnonzero(good), seg[good])
        out[sel] = percentile_filter(filled, q, size=width, mode="nearest")
    return out


def comparison_figure(
    wave: np.ndarray,
    spectra: list[tuple[str, np.ndarray, str]],
    title: str = "",
    offset: float = 0.7,
    width: int = 1100,
    height: int = 520,
) -> figure:
    """Plot normalized spectra on the same axes, each shifted up by ``offset`` from the one below.

    Parameters
    ----------
    wave : numpy.ndarray
        Shared wavelength grid.
    spectra : list of (label, normalized flux, color)
        Bottom to top; NaN breaks the line.
    """
    fig = figure(width=width, height=height, title=title, x_axis_label="vacuum wavelength (Å)",
                 y_axis_label="normalized flux + offset", tools="xpan,xwheel_zoom,box_zoom,reset,save",
                 active_scroll="xwheel_zoom")
    for k, (label, flux, color) in enumerate(spectra):
        fig.line(wave, np.asarray(flux, float) + k * offset, color=color, line_width=1, legend_label=label)
    fig.y_range = Range1d(0.2, 1.25 + offset * (len(spectra) - 1))
    fig.x_range = Range1d(15150.0, 15800.0, bounds=(float(wave[0]), float(wave[-1])))
    legend = fig.legend[0]
    legend.click_policy = "hide"
    fig.add_layout(legend, "below")  # outside the plot, so it hides no spectrum
    return fig


# ---------------------------------------------------------------------------------------------------------------
# continuum normalization and equivalent widths
# ---------------------------------------------------------------------------------------------------------------
CONTINUUM_COLOR = "#ff7f0e"
TRUTH_COLOR = "#2ca02c"
MODEL_COLOR = "#d62728"
FLAG_COLORS = {"ok": "#1f77b4", "upper_limit": "#7f7f7f", "blend_suspect": "#ff7f0e", "fit_failed": "#d62728",
               "masked": "#9467bd"}


def is_synthetic(batch: SpectrumBatch, index: int) -> bool:
    """Return True when spectrum ``index`` of ``batch`` is simulated (``meta["synthetic"]``)."""
    if "synthetic" not in batch.meta:
        return False
    value = batch.meta["synthetic"].iloc[index]
    return bool(value) if not pd.isna(value) else False


def spectrum_label(batch: SpectrumBatch, index: int) -> str:
    """Return a short name of one spectrum: its star id and S/N, prefixed "SYNTHETIC" when it is simulated.

    Examples
    --------
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.5], "vmic": [1.8], "snr": [120],
    ...                 "star_id": ["demo"]}, seed=1)
    >>> spectrum_label(sim.batch, 0)
    'SYNTHETIC demo (S/N 120)'
    """
    meta = batch.meta.iloc[index]
    snr = meta.get("snr", np.nan)
    text = f"{meta.get('star_id', index)}"
    if snr is not None and np.isfinite(snr):
        text += f" (S/N {snr:.0f})"
    return ("SYNTHETIC " if is_synthetic(batch, index) else "") + text


def continuum_figure(
    batch: SpectrumBatch,
    continuum: np.ndarray,
    index: int = 0,
    true_continuum: np.ndarray | None = None,
    title: str | None = None,
    width: int = 1000,
    height: int = 340,
) -> figure:
    """Plot one spectrum in flux units with its fitted continuum (and the true one of a simulation).

    The chip gaps are shaded and break every line (the continuum is NaN off the detectors), and masked pixels are
    marked. The fitted-continuum line is named ``"continuum"`` (``fig.select_one({"name": "continuum"})``) so that
    a widget can replace its data without rebuilding the figure, keeping the user's zoom.

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra **before** normalization (flux units).
    continuum : (n_spec, n_pix) float
        Fitted continuum, e.g. from :func:`fehkit.continuum.normalize`; NaN where there is none.
    index : int
        Which spectrum to draw.
    true_continuum : (n_spec, n_pix) float, optional
        The true continuum of simulated spectra (``Simulation.continuum``); drawn dashed and labelled as
        synthetic truth.
    title : str, optional
        Default: the star id and S/N, with "SYNTHETIC" for simulated spectra.
    width, height : int
        Size in screen pixels.

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from fehkit.continuum import normalize
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.5], "vmic": [1.8], "snr": [100]}, seed=1)
    >>> fig = continuum_figure(sim.batch, normalize(sim.batch).continuum, 0, true_continuum=sim.continuum)
    >>> fig.title.text.startswith("SYNTHETIC"), [item.label.value for item in fig.legend[0].items][-2:]
    (True, ['fitted continuum', 'true continuum (SYNTHETIC truth)'])
    """
    continuum = np.asarray(continuum)
    if continuum.shape != batch.flux.shape:
        raise ValueError(f"continuum: expected shape {batch.flux.shape} (like batch.flux), found {continuum.shape}")
    if true_continuum is not None and np.shape(true_continuum) != batch.flux.shape:
        raise ValueError(f"true_continuum: expected shape {batch.flux.shape} (like batch.flux), found "
                         f"{np.shape(true_continuum)}")
    if title is None:
        title = f"{spectrum_label(batch, index)}: continuum fit"
    fig = figure(
        title=title, width=width, height=height, x_axis_label="vacuum wavelength (Å)",
        y_axis_label=f"flux ({batch.flux_unit or 'normalized'})", tools="xpan,xwheel_zoom,box_zoom,reset,save",
        active_scroll="xwheel_zoom", x_range=Range1d(float(batch.wave[0]), float(batch.wave[-1])),
    )
    ylo, yhi = flux_range(batch, index)
    fig.y_range = Range1d(ylo, yhi)
    data = spectrum_sources(batch, index)
    n_gaps = len(data["gaps"]["left"])
    fig.quad(left="left", right="right", bottom="bottom", top="top", fill_color=GAP_COLOR, fill_alpha=0.15,
             line_alpha=0, legend_label="chip gap (no data)",
             source=ColumnDataSource(dict(data["gaps"], bottom=np.full(n_gaps, ylo), top=np.full(n_gaps, yhi))))
    flux = fig.line("wave", "flux", source=ColumnDataSource(data["flux"]), color=FLUX_COLOR, line_width=1,
                    legend_label="flux")
    fig.scatter("wave", "flux", source=ColumnDataSource(data["masked"]), marker="x", size=5, color=MASK_COLOR,
                legend_label="masked pixel")
    fig.line("wave", "continuum", source=ColumnDataSource(continuum_source(batch.wave, continuum[index])),
             color=CONTINUUM_COLOR, line_width=2.5, legend_label="fitted continuum", name="continuum")
    if true_continuum is not None:
        fig.line("wave", "continuum", source=ColumnDataSource(continuum_source(batch.wave, true_continuum[index])),
                 color=TRUTH_COLOR, line_width=2, line_dash="dashed", legend_label="true continuum (SYNTHETIC truth)",
                 name="true_continuum")
    fig.add_tools(HoverTool(renderers=[flux], tooltips=[("λ", "@wave{0.00} Å"), ("flux", "@flux{0.000}")],
                            mode="vline"))
    legend = fig.legend[0]
    legend.orientation = "horizontal"
    legend.click_policy = "hide"
    legend.label_text_font_size = "9pt"
    fig.add_layout(legend, "above")
    return fig


def continuum_source(wave: np.ndarray, continuum: np.ndarray) -> dict[str, np.ndarray]:
    """Column data of one continuum line: ``wave`` (n_pix,) and ``continuum`` (n_pix,) float64, NaN kept."""
    return {"wave": np.asarray(wave, float), "continuum": np.asarray(continuum, float)}


def line_fit_figure(
    norm_batch: SpectrumBatch,
    table: EWTable,
    index: int,
    k: int,
    width: int = 640,
    height: int = 340,
) -> figure:
    """Plot the fit window of one line of one spectrum: the data, the fitted Voigt profile and the flag.

    The pixels are drawn with their 1-sigma error bars, masked pixels are shaded red (whatever their flux), the
    fitted profile comes from ``table.model`` on a fine grid, the dashed vertical line is the fitted line centre
    and the dotted horizontal one the fitted local continuum level. The title names the spectrum and the line; a
    second line under it gives the EW with its error, the flag and whether the line kept its own shape
    (``fig.above[-1]``), and the reasons behind the flag are listed under the plot.

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
        Size in screen pixels.

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
    >>> fig.above[-1].text.split("   ")[1]
    'flag: ok'
    """
    if norm_batch.flux_unit != "":
        raise ValueError(f"norm_batch: expected continuum-normalized spectra (flux_unit ''), found flux_unit "
                         f"{norm_batch.flux_unit!r}; pass normalize(batch).batch, the batch measure_ew was given")
    if table.n_spectra != norm_batch.n_spectra:
        raise ValueError(f"table: expected one row per spectrum of norm_batch ({norm_batch.n_spectra}), found "
                         f"{table.n_spectra}")
    line = table.lines.iloc[k]
    lam0 = float(line["wave_vac"])
    idx, inside = window_pixels(norm_batch.wave, table.lines.iloc[[k]],
                                int(table.info.get("half_width_pix", WINDOW_HALF_WIDTH_PIX)))
    pix = idx[0][inside[0]]
    wave = norm_batch.wave[pix]
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
    shape = "own line shape" if bool(table.free_shape[index, k]) else "the star's shared line shape"
    fig = figure(
        title=f"{spectrum_label(norm_batch, index)}: Fe I {lam0:.2f} Å", width=width, height=height,
        x_axis_label="vacuum wavelength (Å)", y_axis_label="normalized flux", tools="box_zoom,reset,save",
        x_range=Range1d(float(wave[0]), float(wave[-1])), y_range=Range1d(ylo, yhi),
    )
    # the numbers go under the title (a second Title added above sits between the title and the plot) and each
    # reason on a line of its own under the plot: Bokeh titles do not wrap
    fig.add_layout(Title(text=f"{measured}   flag: {flag}   ({shape})", text_font_size="10pt",
                         text_font_style="normal"), "above")
    for reason in reasons.split("; ") if reasons else []:
        fig.add_layout(Title(text=f"• {reason}", text_font_style="italic", text_font_size="8.5pt"), "below")
    if mask.any():
        half = 0.5 * np.gradient(wave)
        bad = ColumnDataSource({"left": (wave - half)[mask], "right": (wave + half)[mask],
                                "bottom": np.full(mask.sum(), ylo), "top": np.full(mask.sum(), yhi)})
        fig.quad(left="left", right="right", bottom="bottom", top="top", source=bad, fill_color=MASK_COLOR,
                 fill_alpha=0.15, line_alpha=0, legend_label="masked pixel")
    if table.used is not None:
        # pixels the fit dropped as outliers (a cosmic ray, a neighbouring line): drawn hollow
        dropped = good & ~table.used[index, k][inside[0]]
        if dropped.any():
            fig.scatter(wave[dropped], flux[dropped], size=8, marker="circle", fill_alpha=0, line_color=MASK_COLOR,
                        legend_label="dropped by the fit")
    fig.segment(x0=wave[good], x1=wave[good], y0=(flux - err)[good], y1=(flux + err)[good], color=FLUX_COLOR,
                line_alpha=0.5, legend_label="±1σ")
    pixels = fig.scatter("wave", "flux", source=ColumnDataSource({"wave": wave[good], "flux": flux[good],
                                                                  "err": err[good]}),
                         size=5, color=FLUX_COLOR, legend_label="data")
    fig.add_tools(HoverTool(renderers=[pixels], tooltips=[("λ", "@wave{0.000} Å"), ("flux", "@flux{0.000}"),
                                                          ("σ", "@err{0.000}")]))
    if np.isfinite(model).any():
        fig.line(fine, model, color=MODEL_COLOR, line_width=2, legend_label="fitted profile")
    if np.isfinite(level):
        fig.line([wave[0], wave[-1]], [level, level], color=GAP_COLOR, line_dash="dotted",
                 legend_label="local continuum")
    if np.isfinite(centre):
        fig.line([centre, centre], [ylo, yhi], color=MODEL_COLOR, line_dash="dashed", line_alpha=0.6,
                 legend_label="line centre")
    legend = fig.legend[0]
    legend.label_text_font_size = "8pt"
    legend.click_policy = "hide"
    fig.add_layout(legend, "right")  # outside the data, so it hides no pixel
    return fig


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
        raise ValueError(f"measured, err, true: expected the same number of values, found {measured.size}, "
                         f"{err.size} and {true.size}")
    flags = (np.full(measured.size, "measured", dtype=object) if flag is None
             else np.asarray(flag, dtype=object).ravel())
    if flags.size != measured.size:
        raise ValueError(f"flag: expected {measured.size} values (like measured), found {flags.size}")
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
