"""HTML pages: a standalone file with the tables and Bokeh figures, readable offline.

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

from fehkit.io import atomic_output
from fehkit.plots import spectrum_figure
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
