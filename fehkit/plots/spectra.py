"""Figures of whole spectra: flux with masks and chip gaps, spectra side by side, the fitted continuum.

Data in, figure out, no science inside.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from fehkit.errors import PlotInputError
from fehkit.spectra import SpectrumBatch, is_synthetic

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


CONTINUUM_COLOR = "#ff7f0e"


TRUTH_COLOR = "#2ca02c"


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
        raise PlotInputError(f"continuum: expected shape {batch.flux.shape} (like batch.flux), found {continuum.shape}")
    if true_continuum is not None and np.shape(true_continuum) != batch.flux.shape:
        raise PlotInputError(f"true_continuum: expected shape {batch.flux.shape} (like batch.flux), found "
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
