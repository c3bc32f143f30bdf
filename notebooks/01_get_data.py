# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Getting real data: APOGEE spectra, reference [Fe/H], a training table
#
# `fehkit.data` fetches what a recalibration on real stars needs, in a few calls: APOGEE DR17 allStar rows (astroquery: VizieR III/286 or the SDSS SkyServer SQL tables), their apStar/asStar files from the SAS (pooch: cached, checked, retried, resumable), high-resolution [Fe/H] of metal-poor stars (JINAbase, Montelius et al. 2026, GALAH), and the cross-match of the two on the sky: a training table with the columns `fehkit train --data` reads (file, feh_ref, feh_ref_err, teff, logg, vmic).
#
# **With internet** this notebook fetches a small real sample. **Offline** it says so and falls back to the embedded **synthetic** benchmark and the two real example spectra packaged with fehkit.

# %%
import astropy.units as u
from astropy.coordinates import SkyCoord
from bokeh.io import output_notebook, show
from bokeh.resources import INLINE

from fehkit.data import (
    TRAINING_COLUMNS,
    DataAccessError,
    cache_dir,
    crossmatch,
    fetch_spectra,
    load_manifest,
    load_reference,
    online,
    query_apogee,
)
from fehkit.examples import example_paths
from fehkit.io import read_apogee
from fehkit.plots import spectrum_figure

output_notebook(INLINE, hide_banner=True)
ONLINE = online(timeout=3)  # can we reach VizieR? (a 3 s TCP check)
print('internet: yes, fetching a small REAL sample' if ONLINE else
      'internet: no, using the SYNTHETIC benchmark and the packaged real example spectra')
print('cache:', cache_dir())

# %% [markdown]
# ## What fehkit can fetch
#
# Every remote product is listed in `data_manifest.yaml` with its url, sha256 where the file is fixed, size, licence and citation (`fehkit fetch list` prints the same). SAGA is a link only: its licence (CC BY-NC-SA) does not allow fehkit to download or redistribute it; export what you need yourself and read it with `load_reference('saga', path=...)`.

# %%
# NBVAL_CHECK_OUTPUT
print(load_manifest().table()[['name', 'kind', 'citation']].to_string(index=False))

# %% [markdown]
# ## A small sample
#
# Online: the reference [Fe/H] of very metal-poor giants below ASPCAP's grid (Montelius et al. 2026), the APOGEE rows within 3 arcsec of the first 20 of them (one VizieR request for all positions), the spectra of up to five into the cache, and the cross-match. Every call is cached: run it again and nothing is downloaded.
#
# Offline: the **synthetic** benchmark (100 stars, `fehkit.synth.make_benchmark`) stands in for the training table, with its noisy reference labels in the same columns, and the spectra shown are the two packaged **real** DR17 files (neither is metal-poor).

# %%
train, bench = None, None  # bench: the synthetic stand-in, offline
if ONLINE:
    try:
        refs = load_reference('montelius2026')
        near = SkyCoord(refs['ra'][:20], refs['dec'][:20], unit='deg')
        rows = fetch_spectra(query_apogee(center=near, radius=3 * u.arcsec).head(5))
        train = crossmatch(rows, refs, radius=2 * u.arcsec)
        spectra = read_apogee(list(rows['path'].dropna()))
        print(f'REAL data: {len(refs)} reference stars, {len(rows)} APOGEE spectra fetched, '
              f'{len(train)} in the training table')
    except DataAccessError as err:  # a service is down: say so and go on offline
        print(f'the services failed ({err}); falling back to the offline sample')
        train = None
if train is None:
    from fehkit.synth import REF_ERRORS, make_benchmark

    bench = make_benchmark(100, seed=0)
    t = bench.truth[bench.truth.split == 'train']
    train = t[['file']].assign(feh_ref=t.feh_ref, feh_ref_err=REF_ERRORS['feh'], teff=t.teff_ref,
                               logg=t.logg_ref, vmic=t.vmic_ref, synthetic=True)
    spectra = read_apogee(example_paths())
    print(f'OFFLINE sample: the SYNTHETIC benchmark ({len(train)} training stars, '
          'not observations) and the 2 real example spectra packaged with fehkit')
train.head()

# %%
# NBVAL_CHECK_OUTPUT
print('training table columns start with', list(train.columns[:6]) == list(TRAINING_COLUMNS))

# %% [markdown]
# ## One of the spectra
#
# Real DR17 data in both cases (fetched online, packaged offline).

# %%
show(spectrum_figure(spectra, 0))

# %% [markdown]
# ## Save it for training, and train
#
# `fehkit train --data` reads a table whose `file` column names spectrum files on disk, relative to the table's folder. This cell writes the training table and the spectra it names into the folder `fehkit-get-data/` next to this notebook: online, the table of real stars (their spectra are already in the cache); offline, the **synthetic** stand-in table and its simulated apStar-format files (marked synthetic in their headers, so every model trained on them says so).

# %%
import subprocess
import sys
from pathlib import Path

from fehkit.files import write_table
from fehkit.synth import write_benchmark

work = Path('fehkit-get-data')
work.mkdir(exist_ok=True)
if bench is not None:  # offline: the stand-in table names the simulated files; write them beside it
    write_benchmark(bench, work / 'spectra', overwrite=True)
    train = train.assign(file='spectra/' + train['file'])
write_table(train, work / 'train.csv',
            comment='SYNTHETIC stand-in training table (fehkit.synth), not observations' if bench is not None
            else 'training table: APOGEE DR17 spectra cross-matched with reference [Fe/H]')
print(f'wrote {work / "train.csv"}: {len(train)} stars, {train["file"].map(lambda f: (work / f).exists()).sum()} '
      'of their spectrum files on disk')

# %% [markdown]
# The same command you would type in a shell (here through the notebook's own Python, so it is the fehkit you are running): it measures the EWs, trains the ensemble and writes the model folder with its model card. With 70 stars it takes about 20 s on two cores. The small online sample (up to five stars) is too few to train on; the cell says so, and a larger `head()` in the query above gives more.

# %%
command = ['fehkit', 'train', '--data', str(work / 'train.csv'), '--out', str(work / 'model'), '--overwrite',
           '--quiet']
if len(train) >= 20:
    done = subprocess.run([sys.executable, '-m', *command], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr}')
    print(done.stdout.strip())
    print('model card written:', (work / 'model' / 'card.json').exists())
else:
    print(f'{len(train)} stars: too few to train; with more, run: {" ".join(command)}')

# %% [markdown]
# The same from a shell: `fehkit train --data fehkit-get-data/train.csv --out fehkit-get-data/model`. To fetch spectra without Python, save allStar-like rows (TELESCOPE, FIELD, FILE) to a CSV and run `fehkit fetch spectra rows.csv --out fetched.csv`. An interrupted fetch resumes where it stopped; `FEHKIT_CACHE` moves the cache and `FEHKIT_DATA_URL` points at a mirror of the SAS.
