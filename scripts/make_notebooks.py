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

SYNTHETIC = [
    new_markdown_cell(
        "# The synthetic EMP benchmark: spectra with known truth\n\n"
        "Real extremely metal-poor stars with trusted [Fe/H] are few, so fehkit tests every stage, and trains its "
        "embedded default, on **synthetic** APOGEE spectra. Everything in this notebook is synthetic unless it "
        "says *real*.\n\n"
        "The Fe I line strengths come from LTE radiative transfer: a curve-of-growth grid computed with MOOG on "
        "atmosnet model atmospheres (`fehkit.physics`). The forward model (`fehkit.synth`) multiplies a "
        "continuum, a background of all other lines, the Fe I lines and telluric residuals, shifts the star "
        "slightly in velocity, adds noise, and masks pixels like real DR17 files."
    ),
    new_code_cell(
        "import numpy as np\n"
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.plotting import figure\n"
        "from bokeh.resources import INLINE\n\n"
        "from fehkit.physics import CurveOfGrowth\n"
        "from fehkit.synth import make_benchmark, simulate\n\n"
        "output_notebook(INLINE, hide_banner=True)"
    ),
    new_markdown_cell(
        "## The curve of growth\n\n"
        "Equivalent width against iron abundance for the strongest line of the list, for a metal-poor giant "
        "(Teff 4800 K, log g 1.5). The line is weak (EW proportional to the number of iron atoms, slope 1 in "
        "log-log) below [Fe/H] ~ -2.5 and saturates above. At [Fe/H] = -4 it is ~2 mÅ: below what an APOGEE "
        "spectrum at S/N 100 can detect (~6 mÅ per line at 1 sigma)."
    ),
    new_code_cell(
        "cog = CurveOfGrowth.load()\n"
        "feh = np.linspace(-5, -0.5, 100)\n"
        "line = cog.line_index([15298.7])  # Fe I 15294.56 (air)\n"
        "fig = figure(width=600, height=350, y_axis_type='log', x_axis_label='[Fe/H]', y_axis_label='EW (mÅ)',\n"
        "             title='MOOG curve of growth, Fe I 15294.56 (Teff 4800, log g 1.5)')\n"
        "for vmic, color in [(1.0, 'navy'), (2.0, 'firebrick')]:\n"
        "    ew = cog.ew(np.full(feh.size, 4800.0), 1.5, feh, vmic, 0.4, lines=line)[:, 0]\n"
        "    fig.line(feh, ew, color=color, legend_label=f'vmic {vmic} km/s')\n"
        "fig.legend.location = 'top_left'\n"
        "show(fig)"
    ),
    new_markdown_cell(
        "The classical curve-of-growth method inverts it: a measured EW gives an abundance per line."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "ew = cog.ew(4800, 1.5, -2.5, 2.0, 0.4)\n"
        "back = cog.abundance(ew, 4800, 1.5, 2.0, 0.4)\n"
        "print(f'{cog.n_lines} lines, [Fe/H] recovered: {np.nanmin(back):.3f} .. {np.nanmax(back):.3f}')"
    ),
    new_markdown_cell(
        "## A benchmark\n\n"
        "`make_benchmark` draws an EMP halo population (mostly metal-poor giants, 20% subgiants and dwarfs, "
        "[Fe/H] -4.5 to -1, S/N 30-300), simulates its spectra, and adds the labels a user would have: Teff, "
        "log g, vmic with survey-pipeline errors and an optical [Fe/H] with 0.05 dex errors. 300 stars here; the "
        "default is 1,500."
    ),
    new_code_cell(
        "sim = make_benchmark(300, seed=1)\n"
        "sim.truth[['star_id', 'teff', 'logg', 'feh', 'snr', 'teff_ref', 'feh_ref', 'population', 'split']].head()"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "t = sim.truth\n"
        "print(f'{len(t)} SYNTHETIC stars; below [Fe/H] = -2.5: {(t.feh < -2.5).mean():.0%}; giants: '\n"
        "      f'{(t.population == \"giant\").mean():.0%}')\n"
        "print(t.split.value_counts().reindex(['train', 'val', 'test']).to_dict())"
    ),
    new_markdown_cell(
        "## Simulated beside real\n\n"
        "The same axes for two simulated stars (red, divided by their true continuum) and the two real DR17 "
        "example spectra (blue; solar-metallicity stars, so their lines are much stronger). Zoom with the "
        "mouse wheel."
    ),
    new_code_cell(
        "from fehkit.examples import example_paths\n"
        "from fehkit.io import read_apogee\n"
        "from fehkit.plots import comparison_figure, display_continuum\n\n"
        "real = read_apogee(example_paths())\n"
        "shown = []\n"
        "for i in np.argsort(sim.truth.feh.to_numpy())[[-1, 150]]:\n"
        "    r = sim.truth.iloc[i]\n"
        "    f = np.where(sim.batch.mask[i], np.nan, sim.batch.flux[i] / sim.continuum[i])\n"
        "    shown.append((f'SYNTHETIC [Fe/H] {r.feh:.2f}, Teff {r.teff:.0f}, S/N {r.snr:.0f}', f, 'firebrick'))\n"
        "for i in range(real.n_spectra):\n"
        "    f = np.where(real.mask[i], np.nan, real.flux[i])\n"
        "    shown.append((f'real DR17 {real.meta.star_id[i]}', f / display_continuum(real.wave, f), 'navy'))\n"
        "show(comparison_figure(real.wave, shown, title='synthetic (red) vs real DR17 (blue)'))"
    ),
    new_markdown_cell(
        "## Noise and the detection limit\n\n"
        "The same metal-poor giant at S/N 50 and 200 and [Fe/H] -2 and -3.5, around the strongest line. At "
        "-3.5 the line is a few mÅ: lost in the noise at S/N 50."
    ),
    new_code_cell(
        "params = {'teff': [4800.0] * 4, 'logg': [1.5] * 4, 'feh': [-2.0, -2.0, -3.5, -3.5], 'vmic': [1.8] * 4,\n"
        "          'snr': [50, 200, 50, 200], 'rv_shift': 0.0}\n"
        "four = simulate(params, seed=3, continuum=False)\n"
        "w = four.batch.wave\n"
        "sel = np.abs(w - 15298.7) < 6\n"
        "fig = figure(width=600, height=350, x_axis_label='vacuum wavelength (Å)', y_axis_label='normalized flux',\n"
        "             title='SYNTHETIC: Fe I 15298.7 at two [Fe/H] and two S/N')\n"
        "for i, color in enumerate(['navy', 'royalblue', 'firebrick', 'salmon']):\n"
        "    fig.line(w[sel], four.batch.flux[i, sel] - 0.15 * i, color=color,\n"
        "             legend_label=f\"[Fe/H] {params['feh'][i]}, S/N {params['snr'][i]}\")\n"
        "fig.legend.location = 'bottom_left'\n"
        "show(fig)"
    ),
]


GET_DATA = [
    new_markdown_cell(
        "# Getting real data: APOGEE spectra, reference [Fe/H], a training table\n\n"
        "`fehkit.data` fetches what a recalibration on real stars needs, in a few calls: APOGEE DR17 allStar rows "
        "(astroquery: VizieR III/286 or the SDSS SkyServer SQL tables), their apStar/asStar files from the SAS "
        "(pooch: cached, checked, retried, resumable), high-resolution [Fe/H] of metal-poor stars (JINAbase, "
        "Montelius et al. 2026, GALAH), and the cross-match of the two on the sky: a training table with the "
        "columns `fehkit train --data` reads (file, feh_ref, feh_ref_err, teff, logg, vmic).\n\n"
        "**With internet** this notebook fetches a small real sample. **Offline** it says so and falls back to the "
        "embedded **synthetic** benchmark and the two real example spectra packaged with fehkit."
    ),
    new_code_cell(
        "import astropy.units as u\n"
        "from astropy.coordinates import SkyCoord\n"
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.resources import INLINE\n\n"
        "from fehkit.data import (TRAINING_COLUMNS, DataAccessError, cache_dir, crossmatch, fetch_spectra,\n"
        "                         load_manifest, load_reference, online, query_apogee)\n"
        "from fehkit.examples import example_paths\n"
        "from fehkit.io import read_apogee\n"
        "from fehkit.plots import spectrum_figure\n\n"
        "output_notebook(INLINE, hide_banner=True)\n"
        "ONLINE = online(timeout=3)  # can we reach VizieR? (a 3 s TCP check)\n"
        "print('internet: yes, fetching a small REAL sample' if ONLINE else\n"
        "      'internet: no, using the SYNTHETIC benchmark and the packaged real example spectra')\n"
        "print('cache:', cache_dir())"
    ),
    new_markdown_cell(
        "## What fehkit can fetch\n\n"
        "Every remote product is listed in `data_manifest.yaml` with its url, sha256 where the file is fixed, "
        "size, licence and citation (`fehkit fetch list` prints the same). SAGA is a link only: its licence "
        "(CC BY-NC-SA) does not allow fehkit to download or redistribute it; export what you need yourself and "
        "read it with `load_reference('saga', path=...)`."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "print(load_manifest().table()[['name', 'kind', 'citation']].to_string(index=False))"
    ),
    new_markdown_cell(
        "## A small sample\n\n"
        "Online: the reference [Fe/H] of very metal-poor giants below ASPCAP's grid (Montelius et al. 2026), "
        "the APOGEE rows within 3 arcsec of the first 20 of them (one VizieR request for all positions), the "
        "spectra of up to five into the cache, and the cross-match. Every call is cached: run it again and "
        "nothing is downloaded.\n\n"
        "Offline: the **synthetic** benchmark (100 stars, `fehkit.synth.make_benchmark`) stands in for the "
        "training table, with its noisy reference labels in the same columns, and the spectra shown are the two "
        "packaged **real** DR17 files (neither is metal-poor)."
    ),
    new_code_cell(
        "train = None\n"
        "if ONLINE:\n"
        "    try:\n"
        "        refs = load_reference('montelius2026')\n"
        "        near = SkyCoord(refs['ra'][:20], refs['dec'][:20], unit='deg')\n"
        "        rows = fetch_spectra(query_apogee(center=near, radius=3 * u.arcsec).head(5))\n"
        "        train = crossmatch(rows, refs, radius=2 * u.arcsec)\n"
        "        spectra = read_apogee(list(rows['path'].dropna()))\n"
        "        print(f'REAL data: {len(refs)} reference stars, {len(rows)} APOGEE spectra fetched, '\n"
        "              f'{len(train)} in the training table')\n"
        "    except DataAccessError as err:  # a service is down: say so and go on offline\n"
        "        print(f'the services failed ({err}); falling back to the offline sample')\n"
        "        train = None\n"
        "if train is None:\n"
        "    from fehkit.synth import REF_ERRORS, make_benchmark\n"
        "\n"
        "    bench = make_benchmark(100, seed=0)\n"
        "    t = bench.truth[bench.truth.split == 'train']\n"
        "    train = t[['file']].assign(feh_ref=t.feh_ref, feh_ref_err=REF_ERRORS['feh'], teff=t.teff_ref,\n"
        "                               logg=t.logg_ref, vmic=t.vmic_ref, synthetic=True)\n"
        "    spectra = read_apogee(example_paths())\n"
        "    print(f'OFFLINE sample: the SYNTHETIC benchmark ({len(train)} training stars, '\n"
        "          'not observations) and the 2 real example spectra packaged with fehkit')\n"
        "train.head()"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "print('training table columns start with', list(train.columns[:6]) == list(TRAINING_COLUMNS))"
    ),
    new_markdown_cell("## One of the spectra\n\nReal DR17 data in both cases (fetched online, packaged offline)."),
    new_code_cell("show(spectrum_figure(spectra, 0))"),
    new_markdown_cell(
        "## Save it for training\n\n"
        "```python\n"
        "train.to_csv('train.csv', index=False)   # then: fehkit train --data train.csv --out model/\n"
        "```\n\n"
        "The same from a shell: save allStar-like rows (TELESCOPE, FIELD, FILE) to a CSV and run "
        "`fehkit fetch spectra rows.csv --out fetched.csv`. An interrupted fetch resumes where it stopped; "
        "`FEHKIT_CACHE` moves the cache and `FEHKIT_DATA_URL` points at a mirror of the SAS."
    ),
]


NOTEBOOK_CELLS = {
    "00_quickstart": QUICKSTART,
    "01_get_data": GET_DATA,
    "02_synthetic_benchmark": SYNTHETIC,
}


def main() -> None:
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, cells in NOTEBOOK_CELLS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating changes nothing that did not change
        nbformat.write(nb, NOTEBOOKS / f"{name}.ipynb")


if __name__ == "__main__":
    main()
