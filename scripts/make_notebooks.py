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

CONTINUUM_EW = [
    new_markdown_cell(
        "# Continuum and equivalent widths: from a spectrum to the strength of each Fe line\n\n"
        "This stage turns a spectrum into about 30 numbers per star: the equivalent width (EW) of each Fe I line, "
        "with its error and a flag. It runs in two steps, `fehkit.continuum.normalize` and "
        "`fehkit.ew.measure_ew`, both on whole batches at once.\n\n"
        "Most of this notebook uses a small **SYNTHETIC** benchmark (`fehkit.synth`), because only simulated "
        "spectra come with the true continuum and the true EWs to check against. The last part measures the two "
        "**real** DR17 example spectra packaged with fehkit."
    ),
    new_code_cell(
        "import numpy as np\n"
        "import pandas as pd\n"
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.resources import INLINE\n\n"
        "from fehkit.continuum import normalize\n"
        "from fehkit.ew import measure_ew\n"
        "from fehkit.plots import continuum_figure, ew_comparison_figure\n"
        "from fehkit.synth import make_benchmark\n"
        "from fehkit.widgets import ContinuumExplorer, LineInspector\n\n"
        "output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too"
    ),
    new_markdown_cell(
        "## The continuum\n\n"
        "The continuum is the flux the star would have without absorption lines: a smooth curve, the star's "
        "spectral slope times the instrument response. APOGEE has three detectors with different responses, so "
        "fehkit fits one low-order (Legendre) polynomial per detector, and the chip gaps between them stay "
        "empty. Dividing by it gives the *normalized* spectrum, 1 where there is no line.\n\n"
        "It matters: an EW is measured against the continuum, and a continuum 1% too low under a 20 mÅ line "
        "changes its EW by ~7 mÅ, more than the noise at S/N 100.\n\n"
        "**Why asymmetric clipping.** A plain fit through every pixel is pulled down by the absorption lines. So "
        "the fit is repeated, each time dropping pixels more than `low` = 2 sigma *below* it (they are probably "
        "in a line) or more than `high` = 3 sigma *above* it (cosmic rays, sky residuals). The limits differ "
        "because lines only absorb: nothing real sits far above the continuum. The small upward bias that "
        "clipping noise at -2/+3 sigma leaves is known and removed.\n\n"
        "A SYNTHETIC benchmark of 40 stars (EMP giants and a few dwarfs, S/N 30-300), normalized in one call:"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "sim = make_benchmark(40, seed=11)\n"
        "norm_batch, continuum, diagnostics = normalize(sim.batch, order=3, low=2.0, high=3.0)\n"
        "print(f'{sim.batch.n_spectra} SYNTHETIC spectra, {len(diagnostics)} detector fits, '\n"
        "      f'{(diagnostics.flag == \"ok\").sum()} ok')"
    ),
    new_markdown_cell(
        "`diagnostics` has one row per (spectrum, detector): pixels used, iterations, whether the clipping "
        "converged, and `noise_scale` (the scatter about the fit in units of the pipeline's errors: ~1 when the "
        "errors are right)."
    ),
    new_code_cell("diagnostics[['star_id', 'chip', 'n_pixels', 'n_used', 'n_iter', 'converged', 'noise_scale', "
                  "'flag']].head(6)"),
    new_markdown_cell(
        "### How good is it? Against the SYNTHETIC truth\n\n"
        "For each star, the median of |fitted / true continuum - 1| over its usable pixels (in %); then, per S/N "
        "bin, the median over the stars, the worst star, and the median signed error."
    ),
    new_code_cell(
        "good = ~norm_batch.mask\n"
        "rel = np.where(good, continuum / sim.continuum - 1, np.nan)\n"
        "stars = pd.DataFrame({'snr': sim.truth.snr,\n"
        "                      'median |error| %': 100 * np.nanmedian(np.abs(rel), axis=1),\n"
        "                      'median error %': 100 * np.nanmedian(rel, axis=1)})\n"
        "bins = pd.cut(stars.snr, [30, 60, 100, 200, 300], include_lowest=True)\n"
        "stars.groupby(bins, observed=True).agg(n_stars=('snr', 'size'), **{\n"
        "    'median |error| %': ('median |error| %', 'median'), 'worst star |error| %': ('median |error| %', 'max'),\n"
        "    'median error %': ('median error %', 'median')}).round(3).rename_axis('S/N (SYNTHETIC)')"
    ),
    new_markdown_cell(
        "A few tenths of a percent for most stars, hardly better at high S/N: what is left is not noise but the "
        "blanket of weak lines of other elements, too shallow to clip, which pulls the fit a little low (the "
        "negative signed error). The worst star is the coolest and most metal-rich one: its spectrum is so "
        "crowded that few pixels are true continuum."
    ),
    new_code_cell(
        "worst = int(np.nanargmax(stars['median |error| %']))\n"
        "sim.truth.loc[[worst], ['star_id', 'teff', 'logg', 'feh', 'snr']].assign(**{\n"
        "    'median error %': stars['median error %'][worst].round(2)})"
    ),
    new_markdown_cell(
        "One spectrum: the flux (blue), the fitted continuum (orange) and the true one (green dashed). The grey "
        "bands are the chip gaps; scroll to zoom in wavelength."
    ),
    new_code_cell("show(continuum_figure(sim.batch, continuum, 0, true_continuum=sim.continuum))"),
    new_markdown_cell(
        "### Try it\n\n"
        "The explorer re-fits one spectrum whenever a slider moves (zoom in first: the zoom is kept). The table "
        "under the plot adds, per detector, the median error against the SYNTHETIC truth. Things to try: `order` "
        "1 (a straight line cannot follow a detector's response); the worst star above, with `clip below` at 5 "
        "sigma (its lines are no longer clipped and drag the continuum further down) and at 1 sigma; a star at "
        "S/N 30."
    ),
    new_code_cell("ContinuumExplorer(sim.batch, true_continuum=sim.continuum)"),
    new_markdown_cell(
        "## Equivalent widths\n\n"
        "The equivalent width is the area of a line in units of the continuum, `EW = ∫ (1 - F/F_c) dλ`: the "
        "width of a box of zero flux that would absorb as much. It is quoted in mÅ. For weak lines it is "
        "proportional to the number of iron atoms, which is why it carries [Fe/H].\n\n"
        "fehkit fits each line, in a window of ±20 pixels (~±4.4 Å), with a Voigt profile on a local continuum "
        "level, with the EW itself as a fit parameter, so its error comes straight from the fit. All windows of "
        "all spectra are fitted together.\n\n"
        "**How small is detectable?** Cayrel (1988): `σ_EW ≈ 1.5 √(FWHM × pixel) / (S/N)`. For APOGEE (R = 22,500, "
        "FWHM ≈ 0.69 Å, pixels ≈ 0.21 Å):"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "wave, resolution, pixel = 15500.0, 22500, 15500.0 * np.log(10) * 6e-6  # apStar: 6e-6 dex per pixel\n"
        "sigma_ew = 1.5 * np.sqrt(wave / resolution * pixel) / 100 * 1e3\n"
        "print(f'Cayrel: sigma_EW ~ {sigma_ew:.1f} mA per line at S/N 100')"
    ),
    new_markdown_cell(
        "The strongest H-band Fe I lines of a [Fe/H] = -3 giant are only ~20 mÅ: 3 sigma at S/N 100.\n\n"
        "**Why weak lines use the star's shared shape.** A fit with free centre and width, given a line at 1-3 "
        "sigma, finds the deepest noise dip nearby and makes the EW too large, exactly for the weak lines EMP "
        "stars have. So only lines detected at >= 10 sigma get their own centre and width. From them fehkit "
        "takes the star's shared line shape (its residual velocity and line width) and fits every other line "
        "with that shape fixed: then only the EW and the level are free, the fit is linear, and the EW is "
        "unbiased even with no line at all. That is why some measured EWs are negative: noise, kept on purpose, "
        "because the later stages need unbiased values.\n\n"
        "**Flags** (one per line; the first that applies in this order):\n"
        "- `masked`: too few good pixels in the line or its window; no EW.\n"
        "- `fit_failed`: the fit did not converge, hit a bound, or the window is not a clean line (saturated, "
        "local continuum far off); no EW.\n"
        "- `upper_limit`: EW below 3 times its error; `ew_upper_mA` is the 3-sigma upper limit.\n"
        "- `blend_suspect`: a known neighbour inside the profile, a width or velocity far off the star's shared "
        "shape, or residuals beyond the noise.\n"
        "- `ok`: a clean detection.\n\n"
        "`reasons` spells out why. Errors come twice: from the fit, and from refitting 20 noisy copies of the "
        "spectrum (Monte Carlo; 100 by default, 20 here to stay fast)."
    ),
    new_code_cell(
        "table = measure_ew(norm_batch, mc_draws=20, seed=0)\n"
        "print('SYNTHETIC benchmark, lines per flag:', pd.Series(table.flag.ravel()).value_counts().to_dict())\n"
        "print('Monte Carlo / fit error, median ratio:', round(table.error_agreement()['median_ratio'], 2))\n"
        "table.to_frame().head()"
    ),
    new_markdown_cell(
        "### Measured against true\n\n"
        "Every measured line of the SYNTHETIC benchmark, with its 1-sigma error bar, coloured by flag (masked "
        "and failed lines have no EW). If the errors were exact and the EWs unbiased, 68% of the usable lines "
        "would lie within 1 sigma of the truth; the number printed under the plot says how close this gets. "
        "Hover for the numbers; click a flag in the legend to hide it; zoom into the weak lines near zero, "
        "where EMP stars live."
    ),
    new_code_cell(
        "show(ew_comparison_figure(table.ew_mA, table.ew_err_mA, sim.ew, flag=table.flag))\n"
        "clean = np.isin(table.flag, ['ok', 'upper_limit'])\n"
        "within = np.abs(table.ew_mA - sim.ew)[clean] <= table.ew_err_mA[clean]\n"
        "print(f'SYNTHETIC: {within.mean():.0%} of {clean.sum()} ok/upper_limit lines within 1 sigma of the truth')"
    ),
    new_markdown_cell(
        "### Inspect any line\n\n"
        "Pick a star and a line (the list shows each line's flag): the plot shows the pixels with their error "
        "bars, masked pixels shaded red, the fitted profile and the reasons behind the flag; the table beside it "
        "all the numbers, with the true EW from the SYNTHETIC truth."
    ),
    new_code_cell("LineInspector(norm_batch, table, truth_ew=sim.ew)"),
    new_markdown_cell(
        "## Real DR17 spectra\n\n"
        "The two **real** apStar files packaged with fehkit, measured the same way. They are solar-metallicity "
        "stars (an M giant and a dwarf), not the metal-poor stars fehkit is built for: their spectra are "
        "crowded with strong lines of many elements, so there is little true continuum to fit, the Fe lines are "
        "strong and sit on their neighbours' wings. Many `blend_suspect` and `fit_failed` flags are the honest "
        "outcome here, not a bug: the flags say which numbers not to trust."
    ),
    new_code_cell(
        "from fehkit.examples import example_paths\n"
        "from fehkit.io import read_apogee\n\n"
        "real = read_apogee(example_paths())\n"
        "real_norm, real_continuum, real_diagnostics = normalize(real)\n"
        "real_table = measure_ew(real_norm, mc_draws=20, seed=0)\n"
        "frame = real_table.to_frame()\n"
        "pd.crosstab(frame.star_id, frame.flag).rename_axis(index='REAL DR17 star', columns='flag')"
    ),
    new_code_cell("show(continuum_figure(real, real_continuum, 0))"),
    new_code_cell(
        "frame[['star_id', 'line_wave', 'ew_mA', 'ew_err_mA', 'ew_upper_mA', 'flag', 'reason']].head(10)"
    ),
    new_code_cell("LineInspector(real_norm, real_table)"),
]


FEH_ENSEMBLE = [
    new_markdown_cell(
        "# From EWs to [Fe/H]: the ensemble, the classical method and their limits\n\n"
        "The last stage turns each star's ~30 equivalent widths, with its Teff, log g and vmic, into [Fe/H]. "
        "fehkit does it twice, on the same stars:\n\n"
        "- **the classical method**, done fully (`fehkit.physics.joint`): every line's measured EW, also a weak "
        "or negative one, is compared with the MOOG curve of growth on a fine [Fe/H] grid, and the Gaussian "
        "log-likelihoods of all lines add up. Thirty 1-sigma lines together make a 5-sigma signal.\n"
        "- **the ensemble** (`fehkit.models.FeHEnsemble`): a random forest, XGBoost and a small neural net, "
        "each learning what the classical value misses (blends, continuum, grid systematics), fused with "
        "weights from their out-of-fold errors; its per-star error `feh_err` is calibrated on out-of-fold "
        "residuals, never on the test stars.\n\n"
        "Where the joint Fe signal of a star stays below 3 sigma, its spectrum holds no measurement, only an "
        "**upper limit**, and neither method can do better: that is the information limit.\n\n"
        "Everything here is **SYNTHETIC**: simulated spectra with known truth (`fehkit.synth`), because few "
        "real extremely metal-poor stars have a trusted [Fe/H]. To stay fast this notebook runs a *small* "
        "benchmark (400 stars, lighter models, no Cannon, no ablation); the full default is `fehkit demo` "
        "(or `make demo`): 1,500 stars, 1.5-3 minutes on 2 cores, with the HTML report."
    ),
    new_code_cell(
        "import tempfile\n"
        "import time\n"
        "from pathlib import Path\n\n"
        "import numpy as np\n"
        "import pandas as pd\n"
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.layouts import row\n"
        "from bokeh.resources import INLINE\n\n"
        "from fehkit.models import FeHEnsemble\n"
        "from fehkit.pipeline import run_benchmark\n"
        "from fehkit.plots_feh import binned_mae_figure, model_label, model_stats, one_to_one_figure\n"
        "from fehkit.widgets import FeHExplorer\n\n"
        "output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too"
    ),
    new_markdown_cell(
        "## A small benchmark, start to finish\n\n"
        "`run_benchmark` is `fehkit demo` in one call: simulate, normalize, measure the EWs, build the features, "
        "train the ensemble on the training stars (70%; 10% validation for the network's early stopping), "
        "predict the test stars (20%) and score every method against the truth. The stellar parameters the "
        "methods get are the noisy *reference* labels an observer would have (100 K, 0.2 dex, 0.2 km/s "
        "errors), not the truth."
    ),
    new_code_cell(
        "start = time.perf_counter()\n"
        "run = run_benchmark(n_stars=400, seed=11, cannon=False, ablation=False,\n"
        "                    ensemble=dict(rf={'n_estimators': 100}, xgb={'n_estimators': 200},\n"
        "                              dnn={'max_epochs': 100}))\n"
        "m, pred = run.metrics, run.predictions\n"
        "print(f'SYNTHETIC benchmark: {m[\"n_train\"]} training, {m[\"n_val\"]} validation, '\n"
        "      f'{m[\"n_test\"]} test stars in {time.perf_counter() - start:.0f} s; '\n"
        "      f'{m[\"n_upper_limits\"]} test stars are upper limits')"
    ),
    new_markdown_cell(
        "## How well each method does\n\n"
        "Scored on the *headline subset*: test stars with a detected joint Fe signal and S/N >= 50 (upper limits "
        "are counted, not averaged: an undetected star has no [Fe/H] to be wrong about). `weight` is each "
        "member's share of the ensemble. With only ~30 headline stars the numbers move by a few hundredths of a "
        "dex from run to run; `metrics.json` of `fehkit demo` gives them with bootstrap intervals."
    ),
    new_code_cell(
        "table = pd.DataFrame(model_stats(m)).T[['n', 'mae', 'bias', 'scatter', 'r']].astype(float)\n"
        "table['weight'] = pd.Series(m['weights'])\n"
        "print('SYNTHETIC:', m['headline_subset'])\n"
        "table.rename(index=model_label).round(3)"
    ),
    new_markdown_cell(
        "On synthetic spectra made with the same curve of growth, the classical joint likelihood is a strong "
        "baseline, and the ensemble starts from it: it cannot add information the lines do not hold, only remove "
        "what the curve of growth gets wrong. The per-line median, the textbook way, uses only lines detected on "
        "their own and is worse.\n\n"
        "Predicted against true [Fe/H], the ensemble (left) and the classical method (right). Whiskers are the "
        "1-sigma errors; grey triangles are the 3-sigma upper limits of the undetected stars, drawn at the limit "
        "(the truth lies below it). Hover a star for its id and S/N."
    ),
    new_code_cell(
        "show(row(one_to_one_figure(pred, width=480, height=470),\n"
        "         one_to_one_figure(pred, 'cog', width=480, height=470)))"
    ),
    new_markdown_cell(
        "The error per bin of true [Fe/H] and of S/N. The bars behind the lines count each bin's stars, grey for "
        "upper limits: below [Fe/H] ~ -3.5 most stars are limits, and the MAE there describes the few that were "
        "detected."
    ),
    new_code_cell(
        "show(row(binned_mae_figure(m, 'by_feh', width=480, height=460),\n"
        "         binned_mae_figure(m, 'by_snr', width=480, height=460)))"
    ),
    new_markdown_cell(
        "## The information limit\n\n"
        "At [Fe/H] = -4 the strongest H-band Fe I line of a giant is ~2 mÅ; at S/N 100 one line's error is ~6 mÅ. "
        "Adding all lines helps, but only so far. Whether a star is detected involves no training, so here are "
        "all 400 SYNTHETIC stars: upper limits / stars, per bin of true [Fe/H] and S/N."
    ),
    new_code_cell(
        "stars = run.features.stars.assign(true_feh=run.sim.truth['feh'].to_numpy())\n"
        "feh_bin = pd.cut(stars.true_feh, np.arange(-4.5, -0.99, 0.5), right=False)\n"
        "snr_bin = pd.cut(stars.snr, [30, 50, 100, 200, 301], right=False)\n"
        "detected = stars.groupby([feh_bin, snr_bin], observed=False)['cog_detected']\n"
        "counts = (detected.size() - detected.sum()).astype(str) + ' / ' + detected.size().astype(str)\n"
        "counts.unstack().rename_axis(index='true [Fe/H] (SYNTHETIC)', columns='S/N')"
    ),
    new_markdown_cell(
        "The lowest true [Fe/H] still detected near S/N 50, 100 and 200, and where half the stars are detected "
        "(a logistic fit; `_per_line`: the same for the textbook per-line method, which needs one line detected "
        "on its own). Below that, report the upper limit `feh_upper`, not `feh`: the ensemble still returns a "
        "number for an undetected star, but it is only what the training stars made likely, not a measurement."
    ),
    new_code_cell("pd.DataFrame(m['lowest_feh']).round(2)"),
    new_markdown_cell(
        "## One star at a time\n\n"
        "Pick a test star (sorted by true [Fe/H]). Left: its joint likelihood, -2 ln L above the best fit, with "
        "the truth, the classical value, the ensemble and its members marked; where the curve crosses the Δ = 1 "
        "line is the 1-sigma interval; an undetected star's curve stays flat towards low [Fe/H] and only an "
        "upper limit is left (the shaded range is excluded at 3 sigma). Right: the numbers. Below: each line's "
        "measured EW against the curve of growth at the best fit.\n\n"
        "Things to try: the first star of the list (far below the limit: a flat curve); a star near -3 at "
        "S/N 50 and one at S/N 200; a star where the ensemble and the classical value differ."
    ),
    new_code_cell("FeHExplorer(run)"),
    new_markdown_cell(
        "## Saving and loading the model\n\n"
        "`FeHEnsemble.save` writes no pickles: the forest with skops, XGBoost as JSON, the network as "
        "safetensors, and `card.json` with the versions, the features, the weights and each file's SHA-256. "
        "Loaded back, it predicts the same test stars exactly."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "folder = tempfile.TemporaryDirectory()\n"
        "model_dir = run.ensemble.save(Path(folder.name) / 'model')\n"
        "print(sorted(p.name for p in model_dir.iterdir()))\n"
        "test = run.features.select(run.sim.truth['split'].to_numpy() == 'test')\n"
        "loaded = FeHEnsemble.load(model_dir)\n"
        "print('same predictions:', np.allclose(loaded.predict(test)['feh'], pred['feh']))"
    ),
    new_markdown_cell(
        "A model someone sends you is code you would run, so `load` checks every file against the card before "
        "reading it. One extra byte at the end of the XGBoost file:"
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "xgb_file = model_dir / 'xgb.json'\n"
        "xgb_file.write_bytes(xgb_file.read_bytes() + b' ')\n"
        "try:\n"
        "    FeHEnsemble.load(model_dir)\n"
        "except Exception as err:  # fehkit.models.persist.TamperedModelError\n"
        "    print(type(err).__name__ + ':', str(err).replace(folder.name, '<tmp>'))\n"
        "folder.cleanup()"
    ),
]


NOTEBOOK_CELLS = {
    "00_quickstart": QUICKSTART,
    "01_get_data": GET_DATA,
    "02_synthetic_benchmark": SYNTHETIC,
    "03_continuum_and_ew": CONTINUUM_EW,
    "04_feh_ensemble": FEH_ENSEMBLE,
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
