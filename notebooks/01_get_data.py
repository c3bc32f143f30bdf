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
train = None
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
# ## Save it for training
#
# ```python
# train.to_csv('train.csv', index=False)   # then: fehkit train --data train.csv --out model/
# ```
#
# The same from a shell: save allStar-like rows (TELESCOPE, FIELD, FILE) to a CSV and run `fehkit fetch spectra rows.csv --out fetched.csv`. An interrupted fetch resumes where it stopped; `FEHKIT_CACHE` moves the cache and `FEHKIT_DATA_URL` points at a mirror of the SAS.
