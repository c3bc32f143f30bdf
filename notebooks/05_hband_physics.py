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
# # The physics of the H band: why metal-poor Fe I lines vanish there
#
# An optical spectrum of a star with [Fe/H] = -4 still shows dozens of Fe I lines; an APOGEE spectrum of the same star shows almost none. This notebook explains why, in four steps: **excitation** (which atoms can absorb), **continuum opacity** (what the lines are measured against), an **optical line beside an H-band line** computed with the same physics, and the **curve of growth** with a detection limit, which you can explore with sliders. It ends with exercises that the notebook checks.
#
# **The data.** No observed spectra are used. The equivalent widths (EWs) are computed, not measured: fehkit's curve-of-growth grid (MOOG `ewfind` on atmosnet model atmospheres, shipped with fehkit) and a small table of four optical Fe I lines computed with the same MOOG and atmospheres (`scripts/physics/build_optical_lines.py`). The noisy pixels in the explorer are **SYNTHETIC** (random noise of the S/N you choose). The formulas and their published sources are in `docs/hband_physics.md`.

# %%
import numpy as np
import pandas as pd
from bokeh.io import output_notebook, show
from bokeh.resources import INLINE

from fehkit.lines import load_linelist
from fehkit.physics.line_formation import (
    boltzmann_factor,
    cayrel_sigma_ew,
    detection_snr,
    hminus_opacity,
    line_profile,
    load_optical_comparison,
    one_layer_ew,
    one_layer_fit,
    reduced_curve_of_growth,
)
from fehkit.plots.cog import ew_vs_feh_figure, opacity_figure
from fehkit.profiles import voigt
from fehkit.widgets import CurveOfGrowthExplorer

output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too

# %% [markdown]
# ## 1. Excitation: few iron atoms can absorb an H-band line
#
# An absorption line takes its photons from atoms in its *lower level*. In a stellar atmosphere (local thermodynamic equilibrium) the fraction of Fe I atoms in a level of excitation energy χ above the ground level follows the Boltzmann law; per unit statistical weight it is
#
# $$ \frac{n_\chi / g_\chi}{n_0 / g_0} = e^{-\chi / kT} = 10^{-\theta\chi}, \qquad \theta = \frac{5040\ \mathrm{K}}{T}\ \text{per eV}. $$
#
# The weight *g* is folded into the line's oscillator strength, log *gf*. The Fe I lines of the APOGEE H band all start from levels **5.3-6.3 eV** above the ground; the classic optical Fe I lines from 0-3 eV:

# %%
lines = load_linelist()
print(f'{len(lines)} packaged H-band Fe I lines: chi = {lines.chi.min():.2f}-{lines.chi.max():.2f} eV, '
      f'log gf = {lines.loggf.min():+.2f}..{lines.loggf.max():+.2f}')
examples = pd.DataFrame({
    'line (air, Å)': ['Fe I 3859.91 (optical, resonance)', 'Fe I 5232.94 (optical)', 'Fe I 15294.56 (H band)'],
    'chi (eV)': [0.000, 2.938, 5.304], 'log gf': [-0.710, -0.190, 0.622]})
for teff in (4800, 6300):
    examples[f'10^(-θχ) at {teff} K'] = boltzmann_factor(examples['chi (eV)'], teff)
examples.style.format({'10^(-θχ) at 4800 K': '{:.1e}', '10^(-θχ) at 6300 K': '{:.1e}'})

# %% [markdown]
# At 4800 K (a metal-poor red giant) a level at 5.3 eV holds **~3 millionths** of the atoms a ground level holds (per unit *g*), 300 times fewer than the lower level of Fe I 5232.94. The H-band lines have large *gf* values, which makes up only part of that: the index `log gf - θχ`, the line's strength at a given abundance, is -4.95 for the strongest H-band line and -0.71 for the resonance line 3859.91, a factor of ~17,000 in the number of absorbers. A hotter star (6300 K) populates the high levels more, but it also ionizes more of its iron (Fe II has essentially no usable H-band lines), so H-band Fe I lines are weakest in warm metal-poor dwarfs.
#
# ## 2. Continuum opacity: the H band looks deepest into the star
#
# A line's EW is its absorption measured against the *continuum* absorption at its wavelength. In stars of 4000-6500 K the continuum opacity is the negative hydrogen ion H⁻ (an H atom holding a second electron, bound by only 0.754 eV): **bound-free** (a photon detaches the electron; possible only for photons above 0.754 eV, i.e. shortward of **1.64 µm**) and **free-free** (a free electron absorbs near an H atom; grows as ~λ²). Between the two lies the **opacity minimum at ~1.6 µm**, right in the APOGEE band. Both parts grow with the electron pressure in the same way, so their shape against wavelength depends on the temperature only (formulas: Gray 2005, ch. 8):

# %%
wave = np.arange(3500.0, 25001.0, 25.0)
curves = {f'{t} K': hminus_opacity(wave, t) for t in (4000, 4800, 6300)}
show(opacity_figure(wave, curves, marks={'Fe I 5232.94': 5232.94, 'Fe I 15294.56': 15294.56}))
for t in (4000, 4800, 6300):
    k = hminus_opacity([5232.94, 15294.56], t)['total']
    lowest = wave[np.argmin(curves[f'{t} K']['total'])]
    print(f'{t} K: H- opacity at 5233 A / at 15295 A = {k[0] / k[1]:.1f}; minimum at {lowest / 1e4:.2f} micron')

# %% [markdown]
# Where the continuum opacity is low, the light comes from deeper, hotter layers, and each absorbing atom matters more: in the H band a line is *helped* by a factor of ~2-4 (the opacity ratio printed above) in EW against the same line in the optical. That does not come close to the factor of 10⁴ lost to excitation.
#
# ## 3. An optical Fe I line beside an H-band one, with the same physics
#
# fehkit's grid only holds the H-band lines, so the four optical lines below were computed once with **the same MOOG build, the same atmosnet model atmospheres and the same linemake line list** as the grid; the H-band EWs of that run reproduce the packaged grid to 1e-7 dex (stored in the file's `meta`). A metal-poor red giant, Teff 4800 K, log g 1.5, vmic 2 km/s, [α/Fe] = +0.4:

# %%
# NBVAL_CHECK_OUTPUT
table = load_optical_comparison()
print('hband EWs reproduce the packaged grid to', table.attrs['meta']['hband_max_abs_diff_from_cog_fe1'], 'dex')
giant = table[table.star == 'giant']
shown = [3859.911, 5232.94, 6252.555, 5250.209, 15294.56, 15207.526]
ew = giant[giant.wave_air.isin(shown)].pivot_table(index='feh', columns='wave_air', values='ew_mA')
ew.loc[[-4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.0]].round(1).rename_axis(
    index='[Fe/H]', columns='EW (mÅ) of Fe I (air Å)')

# %% [markdown]
# At [Fe/H] = -3 the resonance line 3859.91 has ~200 mÅ (saturated), 5232.94 has 70 mÅ, while the strongest H-band line, 15294.56, has 19 mÅ: about the **3σ detection limit of APOGEE at S/N 100** (Cayrel's formula, section 4). One dex lower the optical line 5232.94 still has 18 mÅ (easy at optical resolution and S/N), the H-band line 2 mÅ. The figure: EW against [Fe/H] on a log scale; the dashed line is the 3σ limit of one APOGEE line at S/N 100.

# %%
limit_h = 3 * float(cayrel_sigma_ew(15298.74, 100))  # Fe I 15294.56 air is 15298.74 A in vacuum
show(ew_vs_feh_figure(ew.index, {f'Fe I {w:.2f} Å': ew[w] for w in shown[:5]},
                      limits={f'3σ limit of one APOGEE line at S/N 100 ({limit_h:.0f} mÅ)': limit_h},
                      title='MOOG equivalent widths on the same atmosphere: red giant 4800 K, log g 1.5'))

# %% [markdown]
# **Why a one-layer picture is not enough.** For weak lines of one species the EW follows `log EW = c + log gf + 2 log λ - θχ - log κ(λ)` in a single layer. Fitted to the 30 H-band lines on their linear part ([Fe/H] = -4.5), this law holds very well, with an excitation temperature close to Teff. Carried to the optical lines with the H⁻ opacity ratio, it predicts them far too weak:

# %%
weak = giant[giant.feh == -4.5]
fit = one_layer_fit(*(weak[weak.band == 'H'][c] for c in ('wave_air', 'chi', 'loggf', 'ew_mA')))
print(f"one-layer fit to the 30 H-band lines: T_exc = {fit['t_exc']:.0f} K, rms {fit['rms']:.3f} dex")
optical = weak[(weak.band == 'optical') & (weak.ew_mA < 30)]  # the weak ones (3859.91 is saturated)
pd.DataFrame({'MOOG EW (mÅ)': optical.ew_mA.values,
              'one-layer EW (mÅ)': one_layer_ew(fit, optical.wave_air, optical.chi, optical.loggf)},
             index=pd.Index(optical.wave_air.values, name='[Fe/H] -4.5, Fe I (air Å)')).round(2)

# %% [markdown]
# The one-layer law makes the optical lines 7-18 times too weak, the most for the line of lowest χ (5250.21, 0.12 eV). Real lines form over a range of depths: Fe I is mostly ionized, and both the neutral fraction and the population of low levels grow towards the cooler upper layers, so low-excitation lines gain from layers a one-layer picture leaves out. A full calculation through the atmosphere, as MOOG does, is needed to set an optical line beside an H-band line, and that is what the table above holds.
#
# ## 4. The curve of growth and the detection limit
#
# As the iron abundance grows, a line's EW first grows in proportion to it (the **linear** part: every atom absorbs its own photons), then the line core goes black and the EW grows only slowly (the **saturated**, flat part; microturbulence, which widens the core, sets how high it reaches), and finally the damping wings take over. Plotted as `log(EW/λ)` against `log gf - θχ`, all lines of one species fall on one curve, the **reduced curve of growth**, and their place on it tells how they react to [Fe/H].
#
# The noise of an EW measured on a spectrum of signal-to-noise S/N per pixel follows Cayrel (1988): `σ_EW ≈ 1.5 √(FWHM × pixel) / (S/N)`. With APOGEE's FWHM = λ/22,500 and pixels of λ ln(10) 6×10⁻⁶, `σ_EW/λ` is the same for every line: one horizontal line on the reduced curve of growth. Lines together count more than one: the significance of all of them is √Σ(EW/σ)², what fehkit's joint likelihood (notebook 04) can reach.

# %%
# NBVAL_CHECK_OUTPUT
for feh in (-2.5, -3.0, -3.5):
    r = reduced_curve_of_growth(4800, 1.5, feh, 2.0, snr=100)
    print(f'[Fe/H] {feh}: at S/N 100 {int(r.detected.sum()):2d} of 30 lines above 3 sigma, all together '
          f'{r.joint_sigma:4.1f} sigma; S/N for a 3-sigma detection: all lines '
          f'{detection_snr(4800, 1.5, feh, 2.0):.0f}, strongest line alone '
          f'{detection_snr(4800, 1.5, feh, 2.0, joint=False):.0f}')

# %% [markdown]
# ### Try it
#
# The explorer below draws the 30 packaged lines of a star on the reduced curve of growth (EWs from fehkit's MOOG grid), each grey curve being one line's curve of growth over [Fe/H] -6..-0.5; the linear part is shaded green, the saturated part orange, and the dashed line is the 3σ limit of one line at the S/N you set. Filled points are lines above 3σ. Below it, the picked line as APOGEE would record it, with SYNTHETIC noise of that S/N. Things to try:
#
# - move [Fe/H] from -1 to -4: the lines slide down the curve, from the saturated part onto the linear part, and below the limit one by one;
# - at [Fe/H] = -1, move vmic: the saturated lines grow, the linear ones do not (microturbulence only matters for saturated lines);
# - move Teff at fixed [Fe/H]: the points move along x (θχ changes) and the EWs with them;
# - find the S/N at which the last line disappears into the noise at [Fe/H] = -3.5.

# %%
CurveOfGrowthExplorer(teff=4800, logg=1.5, vmic=2.0, feh=-3.0, snr=100)

# %% [markdown]
# ## Exercises
#
# Each exercise has a variable to fill in and a check cell that fails (an `AssertionError` saying what it expected) on a wrong answer. The answers are filled in already, so the notebook runs top to bottom: change them, predict before you run, and see the check fail or pass.
#
# **Exercise 1 (excitation).** At Teff = 4800 K, how many times more Fe I atoms (per unit statistical weight) sit in the lower level of Fe I 5232.94 (χ = 2.938 eV) than in that of Fe I 15294.56 (χ = 5.304 eV)? Use only the Boltzmann factor.
#
# **Exercise 2 (detection).** Find the S/N per pixel at which a red giant (Teff 4800 K, log g 1.5, vmic 2 km/s) of [Fe/H] = -3.5 becomes detectable: all 30 lines together reach 3σ. The explorer shows "all together" under the plots; or use `reduced_curve_of_growth(...).joint_sigma`. Your answer must be within 10% above the true threshold.
#
# **Exercise 3 (continuum).** A weak line is fitted with a profile of fixed shape (Gaussian σ = 0.31 Å, the LSF-dominated width of an H-band line) and the continuum held fixed. The continuum was placed **1% too low**, so the normalized spectrum is 1% too high everywhere. Predict the EW bias in mÅ (sign included). Hint: the least-squares amplitude of a profile φ (unit area) fitted to a constant offset δ is δ ∫φ / ∫φ², and ∫φ² = 1/(2√π σ) for a Gaussian. (That is why fehkit fits a local continuum level with every line: notebook 03.)

# %%
ratio_5233_to_15295 = 300   # exercise 1: your answer (a number of times)
snr_for_minus_3p5 = 185     # exercise 2: your answer (S/N per pixel)
ew_bias_mA = -11.0          # exercise 3: your answer (mÅ)

# %%
want = float(boltzmann_factor(2.938, 4800) / boltzmann_factor(5.304, 4800))
assert abs(ratio_5233_to_15295 / want - 1) < 0.05, \
    f'exercise 1: {ratio_5233_to_15295} is off; 10**(theta * (5.304 - 2.938)) at theta = 5040/4800 is not that'
print(f'exercise 1: right (10^(θΔχ) = {want:.0f})')

joint = reduced_curve_of_growth(4800, 1.5, -3.5, 2.0, snr=snr_for_minus_3p5).joint_sigma
just_below = reduced_curve_of_growth(4800, 1.5, -3.5, 2.0, snr=snr_for_minus_3p5 / 1.1).joint_sigma
assert joint >= 3.0, f'exercise 2: at S/N {snr_for_minus_3p5} all lines together give only {joint:.2f} sigma'
assert just_below < 3.0, f'exercise 2: S/N {snr_for_minus_3p5 / 1.1:.0f} is already enough ({just_below:.2f} sigma)'
print(f'exercise 2: right (at S/N {snr_for_minus_3p5}: {joint:.2f} sigma)')

# the bias of a fixed-shape, fixed-continuum fit, computed numerically on the line's profile
p = line_profile(15298.74, 10.0, 4800, 1.5, -3.5, 2.0, snr=100, half_width_pix=20)
phi = voigt(p['offset'], float(p['sigma']), float(p['gamma']))       # unit-area profile, 1/Å
data = 1 - 1.01 * p['flux']                                          # 1 - F/Fc with Fc 1% too low
ew_fit = np.sum(data * phi) / np.sum(phi * phi) * 1e3                 # mÅ
bias = ew_fit - 10.0
assert abs(ew_bias_mA - bias) < 0.1 * abs(bias), \
    f'exercise 3: {ew_bias_mA} mA; the fitted EW changes by {bias:.1f} mA (is the sign right?)'
print(f'exercise 3: right (numerical fit: {bias:.1f} mA)')
