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
    width: int = 860,
    height: int = 320,
) -> figure:
    """Plot one spectrum with its masked pixels, data gaps and the Fe line fit windows.

    The renderers are named (``"flux"``, ``"masked"``, ``"gaps"``, ``"windows"``) so that
    :func:`update_spectrum_figure` can show another spectrum of the batch in the same figure, keeping the zoom.

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
        Size in screen pixels (the default fits a notebook cell).

    Returns
    -------
    bokeh.plotting.figure
    """
    if title is None:
        title = _spectrum_title(batch, index)
    unit = batch.flux_unit or "normalized"
    fig = figure(
        title=title,
        width=width,
        height=height,
        sizing_mode="stretch_width",  # as wide as the notebook cell or page; ``width`` until it is laid out
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
             fill_alpha=0.15, line_alpha=0, legend_label="chip gap (no data)", name="gaps")
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
                         fill_color=WINDOW_COLOR, fill_alpha=0.18, line_alpha=0, legend_label="Fe I fit window",
                         name="windows")
        fig.add_tools(HoverTool(renderers=[boxes], tooltips=[("Fe I", "@wave{0.00} Å"), ("χ", "@chi{0.00} eV"),
                                                            ("log gf", "@loggf{0.000}")]))
    flux = fig.line("wave", "flux", source=ColumnDataSource(data["flux"]), color=FLUX_COLOR, line_width=1,
                    legend_label="flux", name="flux")
    fig.add_tools(HoverTool(renderers=[flux], tooltips=[("λ", "@wave{0.00} Å"), ("flux", "@flux{0.000}")],
                            mode="vline"))
    fig.scatter("wave", "flux", source=ColumnDataSource(data["masked"]), marker="x", size=5, color=MASK_COLOR,
                legend_label="masked pixel", name="masked")
    _legend_above(fig, ncols=4)
    return fig


def update_spectrum_figure(fig: figure, batch: SpectrumBatch, index: int, title: str | None = None) -> None:
    """Show spectrum ``index`` of ``batch`` in a figure of :func:`spectrum_figure`, in place.

    Only the data, the flux range and the title change: the figure, its tools and its wavelength zoom stay, so a
    :class:`jupyter_bokeh.BokehModel` holding it sends just the new columns to the browser. ``batch`` must share
    the wavelength grid of the batch the figure was made from.
    """
    _check_index(batch, index)
    data = spectrum_sources(batch, index)
    ylo, yhi = flux_range(batch, index)
    fig.select_one({"name": "flux"}).data_source.data = data["flux"]
    fig.select_one({"name": "masked"}).data_source.data = data["masked"]
    _update_shading(fig, data["gaps"], ylo, yhi)
    fig.y_range.update(start=ylo, end=yhi)
    fig.title.text = _spectrum_title(batch, index) if title is None else title


def _spectrum_title(batch: SpectrumBatch, index: int) -> str:
    meta = batch.meta.iloc[index]
    snr = meta.get("snr", np.nan)
    return f"{meta.get('star_id', index)}" + (f"  (S/N {snr:.0f})" if snr is not None and np.isfinite(snr) else "")


def _update_shading(fig: figure, gaps: dict[str, np.ndarray], ylo: float, yhi: float) -> None:
    """Give the chip gaps (and the fit windows, when drawn) of a figure the new data and the new flux range."""
    n = len(gaps["left"])
    fig.select_one({"name": "gaps"}).data_source.data = dict(gaps, bottom=np.full(n, ylo), top=np.full(n, yhi))
    windows = fig.select_one({"name": "windows"})
    if windows is not None:
        src = windows.data_source
        n = len(src.data["left"])
        src.data = dict(src.data, bottom=np.full(n, ylo), top=np.full(n, yhi))


def _legend_above(fig: figure, ncols: int = 3) -> None:
    """Put the legend above the data (it hides no pixel), in columns, so that it fits a narrow notebook cell."""
    legend = fig.legend[0]
    legend.orientation = "horizontal"
    legend.ncols = ncols
    legend.click_policy = "hide"
    legend.label_text_font_size = "9pt"
    legend.spacing, legend.padding, legend.margin = 2, 4, 4
    fig.add_layout(legend, "above")


def _check_index(batch: SpectrumBatch, index: int) -> None:
    if not 0 <= index < batch.n_spectra:
        raise PlotInputError(f"index: expected 0 to {batch.n_spectra - 1} (a spectrum of the batch), found {index}")


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
    width: int = 860,
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
                 active_scroll="xwheel_zoom", sizing_mode="stretch_width")
    for k, (label, flux, color) in enumerate(spectra):
        fig.line(wave, np.asarray(flux, float) + k * offset, color=color, line_width=1, legend_label=label)
    fig.y_range = Range1d(0.2, 1.25 + offset * (len(spectra) - 1))
    fig.x_range = Range1d(15150.0, 15800.0, bounds=(float(wave[0]), float(wave[-1])))
    legend = fig.legend[0]
    legend.click_policy = "hide"
    legend.label_text_font_size = "9pt"
    legend.spacing, legend.padding, legend.margin = 2, 4, 4
    fig.add_layout(legend, "below")  # outside the plot, so it hides no spectrum; one label a row, never cut
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
    width: int = 860,
    height: int = 340,
) -> figure:
    """Plot one spectrum in flux units with its fitted continuum (and the true one of a simulation).

    The chip gaps are shaded and break every line (the continuum is NaN off the detectors), and masked pixels are
    marked. The renderers are named (the fitted-continuum line ``"continuum"``, ``fig.select_one({"name":
    "continuum"})``, and ``"flux"``, ``"masked"``, ``"gaps"``, ``"true_continuum"``) so that a widget can replace
    their data without rebuilding the figure, keeping the user's zoom (:func:`update_continuum_figure`).

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
        Size in screen pixels (the default fits a notebook cell).

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
    continuum = _check_continuum(batch, continuum, true_continuum)
    _check_index(batch, index)
    if title is None:
        title = f"{spectrum_label(batch, index)}: continuum fit"
    fig = figure(
        title=title, width=width, height=height, sizing_mode="stretch_width", x_axis_label="vacuum wavelength (Å)",
        y_axis_label=f"flux ({batch.flux_unit or 'normalized'})", tools="xpan,xwheel_zoom,box_zoom,reset,save",
        active_scroll="xwheel_zoom", x_range=Range1d(float(batch.wave[0]), float(batch.wave[-1])),
    )
    ylo, yhi = flux_range(batch, index)
    fig.y_range = Range1d(ylo, yhi)
    data = spectrum_sources(batch, index)
    n_gaps = len(data["gaps"]["left"])
    fig.quad(left="left", right="right", bottom="bottom", top="top", fill_color=GAP_COLOR, fill_alpha=0.15,
             line_alpha=0, legend_label="chip gap (no data)", name="gaps",
             source=ColumnDataSource(dict(data["gaps"], bottom=np.full(n_gaps, ylo), top=np.full(n_gaps, yhi))))
    flux = fig.line("wave", "flux", source=ColumnDataSource(data["flux"]), color=FLUX_COLOR, line_width=1,
                    legend_label="flux", name="flux")
    fig.scatter("wave", "flux", source=ColumnDataSource(data["masked"]), marker="x", size=5, color=MASK_COLOR,
                legend_label="masked pixel", name="masked")
    fig.line("wave", "continuum", source=ColumnDataSource(continuum_source(batch.wave, continuum[index])),
             color=CONTINUUM_COLOR, line_width=2.5, legend_label="fitted continuum", name="continuum")
    if true_continuum is not None:
        fig.line("wave", "continuum", source=ColumnDataSource(continuum_source(batch.wave, true_continuum[index])),
                 color=TRUTH_COLOR, line_width=2, line_dash="dashed", legend_label="true continuum (SYNTHETIC truth)",
                 name="true_continuum")
    fig.add_tools(HoverTool(renderers=[flux], tooltips=[("λ", "@wave{0.00} Å"), ("flux", "@flux{0.000}")],
                            mode="vline"))
    _legend_above(fig)
    return fig


def update_continuum_figure(
    fig: figure,
    batch: SpectrumBatch,
    continuum: np.ndarray,
    index: int = 0,
    true_continuum: np.ndarray | None = None,
    title: str | None = None,
) -> None:
    """Show spectrum ``index`` and its continuum in a figure of :func:`continuum_figure`, in place.

    The data, the flux range and the title change; the figure and its wavelength zoom stay. The arguments are
    those of :func:`continuum_figure` (a figure made without a true continuum cannot be given one later).
    """
    continuum = _check_continuum(batch, continuum, true_continuum)
    _check_index(batch, index)
    data = spectrum_sources(batch, index)
    ylo, yhi = flux_range(batch, index)
    fig.select_one({"name": "flux"}).data_source.data = data["flux"]
    fig.select_one({"name": "masked"}).data_source.data = data["masked"]
    fig.select_one({"name": "continuum"}).data_source.data = continuum_source(batch.wave, continuum[index])
    truth = fig.select_one({"name": "true_continuum"})
    if truth is not None and true_continuum is not None:
        truth.data_source.data = continuum_source(batch.wave, true_continuum[index])
    _update_shading(fig, data["gaps"], ylo, yhi)
    fig.y_range.update(start=ylo, end=yhi)
    fig.title.text = f"{spectrum_label(batch, index)}: continuum fit" if title is None else title


def continuum_residual_figure(
    batch: SpectrumBatch,
    continuum: np.ndarray,
    index: int = 0,
    true_continuum: np.ndarray | None = None,
    x_range: Range1d | None = None,
    width: int = 860,
    height: int = 240,
) -> figure:
    """Plot the relative residual of a continuum fit, ``(flux - continuum) / continuum``, under the spectrum.

    In flux units a change of the fit by a percent is a hair's width; here it shifts the whole curve. The grey
    line is each unmasked pixel, the orange one its running median over :data:`RESIDUAL_MEDIAN_PIXELS` pixels
    (about zero where the fit follows the continuum, below zero where the fit runs above the star's true
    continuum), and the dashed green one the true continuum's relative offset from the fit (``truth / fit - 1``)
    for simulated spectra: what the fit gets wrong. Renderers are named ``"residual"``, ``"residual_median"`` and
    ``"truth_offset"`` for :func:`update_continuum_residual_figure`.

    Parameters
    ----------
    batch, continuum, index, true_continuum
        As for :func:`continuum_figure`.
    x_range : bokeh.models.Range1d, optional
        The wavelength range to share, e.g. ``continuum_figure(...).x_range``, so both panels zoom together.
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
    >>> fit = normalize(sim.batch).continuum
    >>> top = continuum_figure(sim.batch, fit, 0)
    >>> bottom = continuum_residual_figure(sim.batch, fit, 0, sim.continuum, x_range=top.x_range)
    >>> bottom.x_range is top.x_range, bottom.yaxis.axis_label
    (True, '(flux − continuum) / continuum')
    """
    continuum = _check_continuum(batch, continuum, true_continuum)
    _check_index(batch, index)
    data = residual_sources(batch, continuum, index, true_continuum)
    fig = figure(width=width, height=height, sizing_mode="stretch_width", x_axis_label="vacuum wavelength (Å)",
                 y_axis_label="(flux − continuum) / continuum", tools="xpan,xwheel_zoom,box_zoom,reset,save",
                 active_scroll="xwheel_zoom",
                 x_range=x_range or Range1d(float(batch.wave[0]), float(batch.wave[-1])),
                 y_range=Range1d(*_residual_range(data)))
    fig.hspan(y=[0.0], line_color=GAP_COLOR, line_width=1.5)
    fig.line("wave", "residual", source=ColumnDataSource(data["residual"]), color=GAP_COLOR, line_width=1,
             line_alpha=0.6, legend_label="pixels", name="residual")
    fig.line("wave", "median", source=ColumnDataSource(data["median"]), color=CONTINUUM_COLOR, line_width=2.5,
             legend_label=f"running median ({RESIDUAL_MEDIAN_PIXELS} pixels)", name="residual_median")
    if true_continuum is not None:
        fig.line("wave", "offset", source=ColumnDataSource(data["truth"]), color=TRUTH_COLOR, line_width=2,
                 line_dash="dashed", legend_label="true / fitted continuum − 1 (SYNTHETIC truth)",
                 name="truth_offset")
    _legend_above(fig)
    return fig


def update_continuum_residual_figure(
    fig: figure,
    batch: SpectrumBatch,
    continuum: np.ndarray,
    index: int = 0,
    true_continuum: np.ndarray | None = None,
) -> None:
    """Show the residual of another fit (or another spectrum) in a figure of :func:`continuum_residual_figure`.

    The curves and the y range change in place; the figure and its shared wavelength zoom stay.
    """
    continuum = _check_continuum(batch, continuum, true_continuum)
    _check_index(batch, index)
    data = residual_sources(batch, continuum, index, true_continuum)
    fig.select_one({"name": "residual"}).data_source.data = data["residual"]
    fig.select_one({"name": "residual_median"}).data_source.data = data["median"]
    truth = fig.select_one({"name": "truth_offset"})
    if truth is not None:
        truth.data_source.data = data["truth"]
    lo, hi = _residual_range(data)
    fig.y_range.update(start=lo, end=hi)


#: Width in pixels of the running median of the continuum residual (about 6 Å: several line widths).
RESIDUAL_MEDIAN_PIXELS = 101


def residual_sources(batch: SpectrumBatch, continuum: np.ndarray, index: int,
                     true_continuum: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Column data of :func:`continuum_residual_figure`: the relative residual of one spectrum's continuum fit.

    Returns
    -------
    dict
        ``"residual"``: wave, residual (NaN at masked pixels and where there is no fit); ``"median"``: wave,
        median (its running median over :data:`RESIDUAL_MEDIAN_PIXELS` pixels, at least a third of them
        unmasked); ``"truth"``: wave, offset (``true / fit - 1``, all NaN without a true continuum).
    """
    wave = np.asarray(batch.wave, float)
    flux = batch.flux[index].astype(float)
    fit = np.asarray(continuum[index], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.where(~batch.mask[index] & (fit > 0), flux / fit - 1.0, np.nan)
        offset = (np.asarray(true_continuum[index], float) / fit - 1.0 if true_continuum is not None
                  else np.full(wave.size, np.nan))
    median = (pd.Series(resid).rolling(RESIDUAL_MEDIAN_PIXELS, center=True,
                                        min_periods=RESIDUAL_MEDIAN_PIXELS // 3).median().to_numpy(copy=True))
    median[~np.isfinite(fit)] = np.nan  # no median across a chip gap
    return {"residual": {"wave": wave, "residual": resid}, "median": {"wave": wave, "median": median},
            "truth": {"wave": wave, "offset": np.where(np.isfinite(offset), offset, np.nan)}}


def _residual_range(data: dict[str, dict[str, np.ndarray]]) -> tuple[float, float]:
    """Return a y range that holds most pixels, the whole running median and the truth offset."""
    resid = data["residual"]["residual"]
    resid = resid[np.isfinite(resid)]
    lo, hi = (np.percentile(resid, [1, 99]) if resid.size else (-0.05, 0.05))
    curves = np.concatenate([data["median"]["median"], data["truth"]["offset"]])
    curves = curves[np.isfinite(curves)]
    if curves.size:
        lo, hi = min(lo, curves.min()), max(hi, curves.max())
    pad = 0.1 * (hi - lo or 0.02)
    return float(lo - pad), float(hi + pad)


def _check_continuum(batch: SpectrumBatch, continuum: np.ndarray, true_continuum: np.ndarray | None) -> np.ndarray:
    continuum = np.asarray(continuum)
    if continuum.shape != batch.flux.shape:
        raise PlotInputError(f"continuum: expected shape {batch.flux.shape} (like batch.flux), found {continuum.shape}")
    if true_continuum is not None and np.shape(true_continuum) != batch.flux.shape:
        raise PlotInputError(f"true_continuum: expected shape {batch.flux.shape} (like batch.flux), found "
                             f"{np.shape(true_continuum)}")
    return continuum


def continuum_source(wave: np.ndarray, continuum: np.ndarray) -> dict[str, np.ndarray]:
    """Column data of one continuum line: ``wave`` (n_pix,) and ``continuum`` (n_pix,) float64, NaN kept."""
    return {"wave": np.asarray(wave, float), "continuum": np.asarray(continuum, float)}
