"""Write the tutorial notebooks from the cell texts below (outputs are never stored in the repo).

Run `python scripts/make_notebooks.py` after editing a notebook's cells here; nbval runs them in `make test`.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"

QUICKSTART = [
    new_markdown_cell(
        "# fehkit quick start: what an APOGEE spectrum file holds\n\n"
        "fehkit measures the iron abundance [Fe/H] of extremely metal-poor stars from APOGEE H-band spectra "
        "(1.51-1.70 µm, R ~ 22,500). Every stage works on a `SpectrumBatch`: many spectra on one wavelength grid, "
        "as numpy arrays.\n\n"
        "This notebook reads the two **real SDSS DR17 apStar files** packaged with fehkit (a 3-visit M giant and a "
        "1-visit dwarf; neither is metal-poor) and shows what they hold: the grid, the chip gaps, the masked "
        "pixels, the visits, and where the Fe I lines fall."
    ),
    new_code_cell(
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.resources import INLINE\n\n"
        "from fehkit import load_linelist, read_apogee\n"
        "from fehkit.examples import example_paths\n"
        "from fehkit.plots import spectrum_figure\n"
        "from fehkit.widgets import SpectrumViewer\n\n"
        "output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "batch = read_apogee(example_paths())\n"
        "print(batch.n_spectra, 'spectra x', batch.n_pixels, 'pixels,',\n"
        "      f'{batch.wave[0]:.2f}-{batch.wave[-1]:.2f} A (vacuum, rest frame)')"
    ),
    new_markdown_cell(
        "One line per spectrum: the header S/N, the number of visits, the wavelength range with usable data, "
        "the fraction of masked pixels (no data, zero or huge errors, APOGEE bad-pixel bits) and the two gaps "
        "between the three detectors."
    ),
    new_code_cell("batch.summary()"),
    new_markdown_cell(
        "## The Fe I lines fehkit measures\n\n"
        "About 30 Fe I lines lie on the detectors, clear of the gaps. Fe II has essentially no usable lines in "
        "the H band, so the list is Fe I only. At [Fe/H] = -3 the strongest of them are only ~20 mÅ deep in "
        "equivalent width, which is why metal-poor stars are hard."
    ),
    new_code_cell(
        "lines = load_linelist()\n"
        "print(len(lines), 'Fe I lines')\n"
        "lines[['wave_vac', 'chi', 'loggf', 'chip', 'window_lo', 'window_hi']].head()"
    ),
    new_markdown_cell(
        "## One spectrum\n\nGrey bands are the chip gaps, red crosses the masked pixels, orange bands the Fe I fit "
        "windows (hover over one to see the line). Scroll to zoom in wavelength."
    ),
    new_code_cell("show(spectrum_figure(batch, 0, lines=lines))"),
    new_markdown_cell("## Browse them all\n\nThe drop-down switches the plot; the widget holds no science."),
    new_code_cell("SpectrumViewer(batch, lines)"),
    new_markdown_cell(
        "## Visits\n\nAn apStar file also holds each visit. Visit rows mark the chip gaps with zeros rather than "
        "NaN; fehkit masks both."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "visits = read_apogee(example_paths()[0], rows='visits')\n"
        "print(visits.meta[['star_id', 'visit', 'visit_file']].to_string(index=False))"
    ),
    new_code_cell("visits.summary()[['row', 'snr', 'masked_fraction', 'chip_gaps']]"),
]


def main() -> None:
    NOTEBOOKS.mkdir(exist_ok=True)
    nb = new_notebook(cells=QUICKSTART)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, NOTEBOOKS / "00_quickstart.ipynb")


if __name__ == "__main__":
    main()
