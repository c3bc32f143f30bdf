"""Bokeh figure builders: data in, figure out, no science inside.

Figures are standalone Bokeh models, so they render in static HTML, in notebooks (``bokeh.io.show`` or
``jupyter_bokeh.BokehModel``) and under nbval alike; nothing here needs a Bokeh server.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from fehkit.spectra import SpectrumBatch

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
