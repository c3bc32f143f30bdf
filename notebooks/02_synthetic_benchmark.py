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
# # The synthetic EMP benchmark: spectra with known truth
#
# Real extremely metal-poor stars with trusted [Fe/H] are few, so fehkit tests every stage, and trains its embedded default, on **synthetic** APOGEE spectra. Everything in this notebook is synthetic unless it says *real*.
#
# The Fe I line strengths come from LTE radiative transfer: a curve-of-growth grid computed with MOOG on atmosnet model atmospheres (`fehkit.physics`). The forward model (`fehkit.synth`) multiplies a continuum, a background of all other lines, the Fe I lines and telluric residuals, shifts the star slightly in velocity, adds noise, and masks pixels like real DR17 files.

# %%
import numpy as np
from bokeh.io import output_notebook, show
from bokeh.plotting import figure
from bokeh.resources import INLINE

from fehkit.physics import CurveOfGrowth
from fehkit.synth import make_benchmark, simulate

output_notebook(INLINE, hide_banner=True)

# %% [markdown]
# ## The curve of growth
#
# Equivalent width against iron abundance for the strongest line of the list, for a metal-poor giant (Teff 4800 K, log g 1.5). The line is weak (EW proportional to the number of iron atoms, slope 1 in log-log) below [Fe/H] ~ -2.5 and saturates above. At [Fe/H] = -4 it is ~2 mÅ: below what an APOGEE spectrum at S/N 100 can detect (~6 mÅ per line at 1 sigma).

# %%
cog = CurveOfGrowth.load()
feh = np.linspace(-5, -0.5, 100)
line = cog.line_index([15298.7])  # Fe I 15294.56 (air)
fig = figure(width=600, height=350, y_axis_type='log', x_axis_label='[Fe/H]', y_axis_label='EW (mÅ)',
             title='MOOG curve of growth, Fe I 15294.56 (Teff 4800, log g 1.5)')
for vmic, color in [(1.0, 'navy'), (2.0, 'firebrick')]:
    ew = cog.ew(np.full(feh.size, 4800.0), 1.5, feh, vmic, 0.4, lines=line)[:, 0]
    fig.line(feh, ew, color=color, legend_label=f'vmic {vmic} km/s')
fig.legend.location = 'top_left'
show(fig)

# %% [markdown]
# The classical curve-of-growth method inverts it: a measured EW gives an abundance per line.

# %%
# NBVAL_CHECK_OUTPUT
ew = cog.ew(4800, 1.5, -2.5, 2.0, 0.4)
back = cog.abundance(ew, 4800, 1.5, 2.0, 0.4)
print(f'{cog.n_lines} lines, [Fe/H] recovered: {np.nanmin(back):.3f} .. {np.nanmax(back):.3f}')

# %% [markdown]
# ## A benchmark
#
# `make_benchmark` draws an EMP halo population (mostly metal-poor giants, 20% subgiants and dwarfs, [Fe/H] -4.5 to -1, S/N 30-300), simulates its spectra, and adds the labels a user would have: Teff, log g, vmic with survey-pipeline errors and an optical [Fe/H] with 0.05 dex errors. 300 stars here; the default is 1,500.

# %%
sim = make_benchmark(300, seed=1)
sim.truth[['star_id', 'teff', 'logg', 'feh', 'snr', 'teff_ref', 'feh_ref', 'population', 'split']].head()

# %%
# NBVAL_CHECK_OUTPUT
t = sim.truth
print(f'{len(t)} SYNTHETIC stars; below [Fe/H] = -2.5: {(t.feh < -2.5).mean():.0%}; giants: '
      f'{(t.population == "giant").mean():.0%}')
print(t.split.value_counts().reindex(['train', 'val', 'test']).to_dict())

# %% [markdown]
# ## Simulated beside real
#
# The same axes for two simulated stars (red, divided by their true continuum) and the two real DR17 example spectra (blue; solar-metallicity stars, so their lines are much stronger). Zoom with the mouse wheel.

# %%
from fehkit.examples import example_paths
from fehkit.io import read_apogee
from fehkit.plots import comparison_figure, display_continuum

real = read_apogee(example_paths())
shown = []
for i in np.argsort(sim.truth.feh.to_numpy())[[-1, 150]]:
    r = sim.truth.iloc[i]
    f = np.where(sim.batch.mask[i], np.nan, sim.batch.flux[i] / sim.continuum[i])
    shown.append((f'SYNTHETIC [Fe/H] {r.feh:.2f}, Teff {r.teff:.0f}, S/N {r.snr:.0f}', f, 'firebrick'))
for i in range(real.n_spectra):
    f = np.where(real.mask[i], np.nan, real.flux[i])
    shown.append((f'real DR17 {real.meta.star_id[i]}', f / display_continuum(real.wave, f), 'navy'))
show(comparison_figure(real.wave, shown, title='synthetic (red) vs real DR17 (blue)'))

# %% [markdown]
# ## Noise and the detection limit
#
# The same metal-poor giant at S/N 50 and 200 and [Fe/H] -2 and -3.5, around the strongest line. At -3.5 the line is a few mÅ: lost in the noise at S/N 50.

# %%
params = {'teff': [4800.0] * 4, 'logg': [1.5] * 4, 'feh': [-2.0, -2.0, -3.5, -3.5], 'vmic': [1.8] * 4,
          'snr': [50, 200, 50, 200], 'rv_shift': 0.0}
four = simulate(params, seed=3, continuum=False)
w = four.batch.wave
sel = np.abs(w - 15298.7) < 6
fig = figure(width=600, height=350, x_axis_label='vacuum wavelength (Å)', y_axis_label='normalized flux',
             title='SYNTHETIC: Fe I 15298.7 at two [Fe/H] and two S/N')
for i, color in enumerate(['navy', 'royalblue', 'firebrick', 'salmon']):
    fig.line(w[sel], four.batch.flux[i, sel] - 0.15 * i, color=color,
             legend_label=f"[Fe/H] {params['feh'][i]}, S/N {params['snr'][i]}")
fig.legend.location = 'bottom_left'
show(fig)

# %% [markdown]
# ## Exercise: when does the strongest line of a [Fe/H] = -3.5 giant become detectable?
#
# Cayrel's (1988) estimate of the 1-sigma error of an EW is `σ_EW ≈ 1.5 √(FWHM × pixel) / (S/N)` (FWHM = λ/R with R = 22,500; an apStar pixel is λ ln(10) 6e-6 wide). A line is *detected* at 3 sigma. Find the S/N at which Fe I 15298.7 of the giant above (4800 K, log g 1.5, vmic 1.8 km/s, [α/Fe] +0.4) at [Fe/H] = -3.5 is a 3-sigma line: take its EW from the curve of growth (`cog.ew(..., lines=line)`, in mÅ) and solve Cayrel's formula for S/N. Replace the value of `snr_needed` with your formula; the next cell then simulates 60 such spectra at your S/N, measures the line with fehkit's EW engine and checks that its median significance is close to 3.

# %%
snr_needed = 3 * 1.5 * np.sqrt(15298.7 / 22500 * 15298.7 * np.log(10) * 6e-6) * 1e3 / float(
    cog.ew(4800, 1.5, -3.5, 1.8, 0.4, lines=line)[0, 0])  # your answer here
print(f'your S/N: {snr_needed:.0f}')

# %%
from fehkit.ew import measure_ew

trial = simulate({'teff': [4800.0] * 60, 'logg': [1.5] * 60, 'feh': [-3.5] * 60, 'vmic': [1.8] * 60,
                  'snr': [snr_needed] * 60, 'rv_shift': 0.0}, seed=7, continuum=False)
measured = measure_ew(trial.batch, mc_draws=0)
k = int(np.argmin(np.abs(measured.lines['wave_vac'].to_numpy() - 15298.7)))
significance = float(np.median(measured.ew_mA[:, k] / measured.ew_err_mA[:, k]))
print(f'SYNTHETIC: at S/N {snr_needed:.0f} the line is measured at a median {significance:.1f} sigma')
assert 2.4 < significance < 3.6, f'{significance:.1f} sigma at S/N {snr_needed:.0f}: not a 3-sigma line; try again'
