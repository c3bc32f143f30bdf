"""HTML pages about spectra: ``fehkit inspect``'s summary and plots, and simulated spectra beside real ones.

The page embeds BokehJS itself (``bokeh.resources.INLINE``), so it opens without the internet, on a laptop or
from a cluster's scratch disk.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import Div
from bokeh.resources import INLINE

from fehkit.files import atomic_output
from fehkit.plots.spectra import spectrum_figure
from fehkit.spectra import SpectrumBatch


def summary_html(summary: pd.DataFrame) -> str:
    """Render :meth:`SpectrumBatch.summary` as a small HTML table."""
    shown = summary.assign(
        file=summary["file"].map(lambda p: Path(str(p)).name),
        snr=summary["snr"].map(lambda v: f"{v:.1f}"),
        wave_range=[f"{a:.1f}-{b:.1f}" for a, b in zip(summary["wave_min"], summary["wave_max"], strict=True)],
        masked=summary["masked_fraction"].map(lambda v: f"{100 * v:.1f}%"),
    )[["star_id", "file", "row", "snr", "nvisits", "wave_range", "masked", "chip_gaps"]]
    return shown.to_html(index=False, border=0, classes="summary", escape=True)


def inspect_page(
    batch: SpectrumBatch,
    out: str | os.PathLike[str],
    lines: pd.DataFrame | None = None,
    title: str = "fehkit inspect",
    max_plots: int = 50,
) -> Path:
    """Write an HTML page with the summary table and one plot per spectrum (masked pixels, line windows).

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra to show.
    out : path
        The HTML file to write (atomically).
    lines : pandas.DataFrame, optional
        Line list whose fit windows are marked.
    title : str
        Page title.
    max_plots : int
        Plot at most this many spectra (the first ones), so a page for a whole field stays light; the table
        lists them all.

    Returns
    -------
    Path
        ``out``.
    """
    intro = (
        f"<h2>{html.escape(title)}</h2><p>{batch.n_spectra} spectra on a {batch.n_pixels}-pixel grid, "
        f"{batch.wave[0]:.2f}-{batch.wave[-1]:.2f} Å (vacuum, rest frame). Grey: chip gaps (no data); "
        "red crosses: masked pixels (APOGEE bad bits, zero or huge errors); orange: Fe I fit windows "
        "(hover for the line).</p>"
    )
    skipped = ""
    if batch.skipped:
        items = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in batch.skipped)
        skipped = f"<p><b>{len(batch.skipped)} files skipped:</b></p><ul>{items}</ul>"
    style = "<style>table.summary td, table.summary th {padding: 2px 10px; text-align: left;}</style>"
    parts = [Div(text=style + intro + summary_html(batch.summary()) + skipped, width=1000)]
    n_plots = min(batch.n_spectra, max_plots)
    if n_plots < batch.n_spectra:
        parts.append(Div(text=f"<p>Plots of the first {n_plots} of {batch.n_spectra} spectra.</p>"))
    parts += [spectrum_figure(batch, i, lines=lines) for i in range(n_plots)]
    page = file_html(column(*parts), resources=INLINE, title=title)
    path = Path(out)
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def realism_page(sim: object, out: str | os.PathLike[str], n_show: int = 2) -> Path:
    """Write an HTML page setting simulated spectra beside the real DR17 example spectra on the same axes.

    ``sim`` is a :class:`fehkit.synth.Simulation`; the page shows its first ``n_show`` stars (normalized by
    their true continuum) and the packaged real spectra (normalized for display by a running percentile).
    """
    import numpy as np

    from fehkit.examples import example_paths
    from fehkit.io import read_apogee
    from fehkit.plots.spectra import comparison_figure, display_continuum

    real = read_apogee(example_paths())
    shown = []
    for i in range(min(n_show, sim.batch.n_spectra)):
        t = sim.truth.iloc[i]
        f = np.where(sim.batch.mask[i], np.nan, sim.batch.flux[i] / sim.continuum[i])
        shown.append((f"SYNTHETIC {t.star_id}: Teff {t.teff:.0f}, logg {t.logg:.2f}, [Fe/H] {t.feh:.2f}, "
                      f"S/N {t.snr:.0f}", f, "#d62728"))
    for i in range(real.n_spectra):
        f = np.where(real.mask[i], np.nan, real.flux[i])
        shown.append((f"real DR17 {real.meta.star_id[i]} (S/N {real.meta.snr[i]:.0f}; not metal-poor)",
                       f / display_continuum(real.wave, f), "#1f3b73"))
    intro = (
        "<h2>fehkit simulate: SYNTHETIC spectra beside real APOGEE spectra</h2><p>Red: simulated (synthetic) "
        "spectra from the MOOG curve-of-growth grid and blend background, divided by their true continuum. Blue: "
        "the two real DR17 apStar example spectra (a solar-metallicity M giant and a dwarf, not metal-poor), "
        "divided by a running 90th percentile for display. Masked pixels are left out. Zoom with the mouse "
        "wheel.</p>"
    )
    fig = comparison_figure(real.wave, shown, title="synthetic (red) vs real DR17 (blue)")
    page = file_html(column(Div(text=intro, width=1100), fig), resources=INLINE, title="fehkit simulate")
    path = Path(out)
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
