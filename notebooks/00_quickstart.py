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
# # fehkit quick start: what an APOGEE spectrum file holds
#
# fehkit measures the iron abundance [Fe/H] of extremely metal-poor stars from APOGEE H-band spectra (1.51-1.70 µm, R ~ 22,500). Every stage works on a `SpectrumBatch`: many spectra on one wavelength grid, as numpy arrays.
#
# This notebook reads the two **real SDSS DR17 apStar files** packaged with fehkit (a 3-visit M giant and a 1-visit dwarf; neither is metal-poor) and shows what they hold: the grid, the chip gaps, the masked pixels, the visits, and where the Fe I lines fall.

# %%
from bokeh.io import output_notebook, show
from bokeh.resources import INLINE

from fehkit import load_linelist, read_apogee
from fehkit.examples import example_paths
from fehkit.plots import spectrum_figure
from fehkit.widgets import SpectrumViewer

output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too

# %%
# NBVAL_CHECK_OUTPUT
batch = read_apogee(example_paths())
print(batch.n_spectra, 'spectra x', batch.n_pixels, 'pixels,',
      f'{batch.wave[0]:.2f}-{batch.wave[-1]:.2f} A (vacuum, rest frame)')

# %% [markdown]
# One line per spectrum: the header S/N, the number of visits, the wavelength range with usable data, the fraction of masked pixels (no data, zero or huge errors, APOGEE bad-pixel bits) and the two gaps between the three detectors.

# %%
batch.summary()

# %% [markdown]
# ## The Fe I lines fehkit measures
#
# About 30 Fe I lines lie on the detectors, clear of the gaps. Fe II has essentially no usable lines in the H band, so the list is Fe I only. At [Fe/H] = -3 the strongest of them are only ~20 mÅ deep in equivalent width, which is why metal-poor stars are hard.

# %%
lines = load_linelist()
print(len(lines), 'Fe I lines')
lines[['wave_vac', 'chi', 'loggf', 'chip', 'window_lo', 'window_hi']].head()

# %% [markdown]
# ## One spectrum
#
# Grey bands are the chip gaps, red crosses the masked pixels, orange bands the Fe I fit windows (hover over one to see the line). Scroll to zoom in wavelength.

# %%
show(spectrum_figure(batch, 0, lines=lines))

# %% [markdown]
# ## Browse them all
#
# The drop-down switches the plot; the widget holds no science.

# %%
SpectrumViewer(batch, lines)

# %% [markdown]
# ## Visits
#
# An apStar file also holds each visit. Visit rows mark the chip gaps with zeros rather than NaN; fehkit masks both.

# %%
# NBVAL_CHECK_OUTPUT
visits = read_apogee(example_paths()[0], rows='visits')
print(visits.meta[['star_id', 'visit', 'visit_file']].to_string(index=False))

# %%
visits.summary()[['row', 'snr', 'masked_fraction', 'chip_gaps']]
