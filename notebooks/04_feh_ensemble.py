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
# # From EWs to [Fe/H]: the ensemble, the classical method and their limits
#
# The last stage turns each star's ~30 equivalent widths, with its Teff, log g and vmic, into [Fe/H]. fehkit does it twice, on the same stars:
#
# - **the classical method**, done fully (`fehkit.physics.joint`): every line's measured EW, also a weak or negative one, is compared with the MOOG curve of growth on a fine [Fe/H] grid, and the Gaussian log-likelihoods of all lines add up. Thirty 1-sigma lines together make a 5-sigma signal.
# - **the ensemble** (`fehkit.models.FeHEnsemble`): a random forest, XGBoost and a small neural net, each learning what the classical value misses (blends, continuum, grid systematics), fused with weights from their out-of-fold errors; its per-star error `feh_err` is calibrated on out-of-fold residuals, never on the test stars.
#
# Where the joint Fe signal of a star stays below 3 sigma, its spectrum holds no measurement, only an **upper limit**, and neither method can do better: that is the information limit.
#
# Everything here is **SYNTHETIC**: simulated spectra with known truth (`fehkit.synth`), because few real extremely metal-poor stars have a trusted [Fe/H]. To stay fast this notebook runs a *small* benchmark (400 stars, lighter models, no Cannon, no ablation); the full default is `fehkit demo` (or `make demo`): 1,500 stars, 1.5-3 minutes on 2 cores, with the HTML report.
#
# On the way you watch the neural net train (its loss curves drawn live, `TrainingDashboard`), and you move the ensemble's weights yourself to see what inverse-variance fusion buys (`FusionExplorer`). The notebook ends with exercises that it checks.

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bokeh.io import output_notebook, show
from bokeh.layouts import row
from bokeh.resources import INLINE

from fehkit.benchmark import run_benchmark
from fehkit.infer import infer
from fehkit.models import FeHEnsemble
from fehkit.models.ensemble import fusion_weights
from fehkit.plots import binned_mae_figure, model_label, model_stats, one_to_one_figure
from fehkit.training import reference_params
from fehkit.widgets import FeHExplorer, FusionExplorer, TrainingDashboard

output_notebook(INLINE, hide_banner=True)  # INLINE: plots work offline too

# %% [markdown]
# ## A small benchmark, start to finish
#
# `run_benchmark` is `fehkit demo` in one call: simulate, normalize, measure the EWs, build the features, train the ensemble on the training stars (70%; 10% validation for the network's early stopping), predict the test stars (20%) and score every method against the truth. The stellar parameters the methods get are the noisy *reference* labels an observer would have (100 K, 0.2 dex, 0.2 km/s errors), not the truth.
#
# The ensemble trains each member five times on four fifths of the training stars (cross-validation: each star is predicted once by a model that never saw it, *out of fold*), then once on all of them. The dashboard below draws the neural net's loss after every epoch while that happens: the **training loss** (the mean squared error of the batches it learns from) and the **validation loss** (stars it does not learn from). Training stops when the validation loss has not improved for 10 epochs (`patience`), and the weights of its best epoch are kept: the diamond and the dashed line, the *early-stopping point*. Losses are on the standardized target (1.0: always predicting the mean). Run the next two cells and watch it; the earlier folds stay in grey.

# %%
dashboard = TrainingDashboard()
dashboard

# %%
start = time.perf_counter()
run = run_benchmark(n_stars=400, seed=11, cannon=False, ablation=False, robustness=False,
                    ensemble=dict(rf={'n_estimators': 100}, xgb={'n_estimators': 200},
                              dnn={'max_epochs': 100}),
                    epoch_callback=dashboard.on_epoch)
dashboard.show_run(run)  # the lower panels of the dashboard: out-of-fold residuals and weights
m, pred = run.metrics, run.predictions
print(f'SYNTHETIC benchmark: {m["n_train"]} training, {m["n_val"]} validation, '
      f'{m["n_test"]} test stars in {time.perf_counter() - start:.0f} s; '
      f'{m["n_upper_limits"]} test stars are upper limits')

# %% [markdown]
# Scroll back up to the dashboard. The network starts from a zero output, that is from the classical value itself (it learns the *residual*), and on this small benchmark (280 training stars, fewer than 200 of them with a detected Fe signal: the stars the members learn from) the classical value is hard to beat: in most fits the training loss falls epoch after epoch while the validation loss rises after the first few epochs. That is **overfitting**: the network learns the training stars' noise. Early stopping keeps the weights of the best validation epoch, often an early one, so the net stays close to the physics. The `fehkit demo` benchmark, with 1,050 training stars, gives it more to learn from.
#
# The lower panels appeared when training ended: left, each member's out-of-fold residual (prediction minus training label) against the label; right, the weight each member got. The weight is w_i = (1/σ_i²) / Σ_j (1/σ_j²), with σ_i² the member's out-of-fold mean squared error on stars with a detected Fe signal (less the labels' own variance): a member twice as noisy gets half the weight. The members start from the same classical value and see the same features, so their errors are alike and their weights close.
# %% [markdown]
# ## How well each method does
#
# Scored on the *headline subset*: test stars with a detected joint Fe signal and S/N >= 50 (upper limits are counted, not averaged: an undetected star has no [Fe/H] to be wrong about). `weight` is each member's share of the ensemble. With only ~30 headline stars the numbers move by a few hundredths of a dex from run to run; `metrics.json` of `fehkit demo` gives them with bootstrap intervals.

# %%
table = pd.DataFrame(model_stats(m)).T[['n', 'mae', 'bias', 'scatter', 'r']].astype(float).round(3)
table['weight'] = [f'{m["weights"][k]:.2f}' if k in m['weights'] else '' for k in table.index]  # members only
print('SYNTHETIC:', m['headline_subset'])
table.rename(index=model_label)

# %% [markdown]
# On synthetic spectra made with the same curve of growth, the classical joint likelihood is a strong baseline, and the ensemble starts from it: it cannot add information the lines do not hold, only remove what the curve of growth gets wrong. The per-line median, the textbook way, uses only lines detected on their own and is worse.
#
# Predicted against true [Fe/H], the ensemble (left) and the classical method (right). Whiskers are the 1-sigma errors; grey triangles are the 3-sigma upper limits of the undetected stars, drawn at the limit (the truth lies below it). Hover a star for its id and S/N.

# %%
show(row(one_to_one_figure(pred, width=430, height=470),
         one_to_one_figure(pred, 'cog', width=430, height=470)))

# %% [markdown]
# The error per bin of true [Fe/H] and of S/N. The bars behind the lines count each bin's stars, grey for upper limits: below [Fe/H] ~ -3.5 most stars are limits, and the MAE there describes the few that were detected.

# %%
show(binned_mae_figure(m, 'by_feh', width=860, height=400))
show(binned_mae_figure(m, 'by_snr', width=860, height=400))

# %% [markdown]
# ## The information limit
#
# At [Fe/H] = -4 the strongest H-band Fe I line of a giant is ~2 mÅ; at S/N 100 one line's error is ~6 mÅ. Adding all lines helps, but only so far. Whether a star is detected involves no training, so here are all 400 SYNTHETIC stars: upper limits / stars, per bin of true [Fe/H] and S/N.

# %%
stars = run.features.stars.assign(true_feh=run.sim.truth['feh'].to_numpy())
feh_bin = pd.cut(stars.true_feh, np.arange(-4.5, -0.99, 0.5), right=False)
snr_bin = pd.cut(stars.snr, [30, 50, 100, 200, 301], right=False)
detected = stars.groupby([feh_bin, snr_bin], observed=False)['cog_detected']
counts = (detected.size() - detected.sum()).astype(str) + ' / ' + detected.size().astype(str)
counts.unstack().rename_axis(index='true [Fe/H] (SYNTHETIC)', columns='S/N')

# %% [markdown]
# The lowest true [Fe/H] still detected near S/N 50, 100 and 200, and where half the stars are detected (a logistic fit; `_per_line`: the same for the textbook per-line method, which needs one line detected on its own). Below that, report the upper limit `feh_upper`, not `feh`: the ensemble still returns a number for an undetected star, but it is only what the training stars made likely, not a measurement.

# %%
pd.DataFrame(m['lowest_feh']).round(2)

# %% [markdown]
# ## One star at a time
#
# Pick a test star (sorted by true [Fe/H]). Left: its joint likelihood, -2 ln L above the best fit, with the truth, the classical value, the ensemble and its members marked; where the curve crosses the Δ = 1 line is the 1-sigma interval; an undetected star's curve stays flat towards low [Fe/H] and only an upper limit is left (the shaded range is excluded at 3 sigma). Right: the numbers. Below: each line's measured EW against the curve of growth at the best fit.
#
# Things to try: the first star of the list (far below the limit: a flat curve); a star near -3 at S/N 50 and one at S/N 200; a star where the ensemble and the classical value differ.

# %%
FeHExplorer(run)

# %% [markdown]
# ## Fusion: what the weights do
#
# Inverse-variance weighting is the best linear combination of *independent, unbiased* estimates: it minimizes the variance of the fused value. The members here are neither fully independent nor exactly unbiased, so whether it helps is a question for the data. The explorer fuses the members' [Fe/H] with the ensemble's own code (`fehkit.models.ensemble.fuse`) under weights you choose: by rule (inverse variance, equal, one member alone) or with the sliders (rescaled to sum to 1). It scores the fused value on the headline subset twice: on the training stars predicted **out of fold** (what the weights were chosen on) and on the **test** stars (what they were not). The bars are the MAE with these weights, the black dashes the inverse-variance MAE; the table adds the bias and `coverage_68` (the fraction of stars within ±`feh_err`: the errors were calibrated for the inverse-variance weights, so other weights show how far that calibration carries).
#
# Right: **permutation importance**, on the test stars, for the fused model with these weights: each feature shuffled among the stars in turn, and how much the MAE grows. `feh_cog`, the classical joint-likelihood value every member starts from, dominates; the line features (`ew_*` of single lines) matter far less one by one.
#
# Things to try: one member alone (which is best on the out-of-fold stars, and is it also best on the test stars?); equal weights; the neural net's slider to 0.

# %%
explorer = FusionExplorer(run)
explorer

# %% [markdown]
# ## Saving and loading the model
#
# `FeHEnsemble.save` writes no pickles: the forest with skops, XGBoost as JSON, the network as safetensors, and `card.json` with the versions, the features, the weights and each file's SHA-256. Loaded back, it predicts the same test stars: here from their spectra, with `fehkit.infer.infer`, the one helper that runs the whole path (continuum, EWs, features, members, flags) on the CPU, or on a GPU with `device="cuda"` (`"auto"` picks one when torch sees it).

# %%
# NBVAL_CHECK_OUTPUT
folder = tempfile.TemporaryDirectory()
model_dir = run.ensemble.save(Path(folder.name) / 'model')
print(sorted(p.name for p in model_dir.iterdir()))
is_test = run.sim.truth['split'].to_numpy() == 'test'
loaded = FeHEnsemble.load(model_dir)
again = infer(run.sim.batch.select(np.flatnonzero(is_test)), loaded, reference_params(run.sim.truth)[is_test],
              device='cpu')
print('same predictions:', np.allclose(again['feh'], pred['feh'], equal_nan=True))

# %% [markdown]
# A model someone sends you is code you would run, so `load` checks every file against the card before reading it. One extra byte at the end of the XGBoost file:

# %%
# NBVAL_CHECK_OUTPUT
xgb_file = model_dir / 'xgb.json'
xgb_file.write_bytes(xgb_file.read_bytes() + b' ')
try:
    FeHEnsemble.load(model_dir)
except Exception as err:  # fehkit.models.persist.TamperedModelError
    print(type(err).__name__ + ':', str(err).replace(folder.name, '<tmp>'))
folder.cleanup()

# %% [markdown]
# ## Exercises
#
# Each exercise has a variable to fill in and a check cell that fails (an `AssertionError` saying what it expected) on a wrong answer. The answers are filled in already, so the notebook runs top to bottom: change them, predict before you run, and see the check fail or pass.
#
# **1. The weights by hand.** From the out-of-fold MSEs alone (`run.ensemble.oof_mse_`), compute the random forest's inverse-variance weight.

# %%
mse = run.ensemble.oof_mse_
print('out-of-fold MSE:', {k: round(v, 5) for k, v in mse.items()})
w_rf = (1 / mse['rf']) / sum(1 / v for v in mse.values())  # your answer

# %%
assert abs(w_rf - run.ensemble.weights_['rf']) < 1e-12, \
    f'w_rf = {w_rf:.4f}, but the ensemble gave the random forest {run.ensemble.weights_["rf"]:.4f}'
print(f'correct: w_rf = {w_rf:.4f}')

# %% [markdown]
# **2. A noisier member.** If the random forest's out-of-fold MSE were twice as large, what would its weight be? Predict it with the formula, then compare with `fusion_weights` (the library's rule) in the check.

# %%
w_rf_doubled = (1 / (2 * mse['rf'])) / (1 / (2 * mse['rf']) + sum(1 / v for k, v in mse.items() if k != 'rf'))  # your answer

# %%
expected = fusion_weights({**mse, 'rf': 2 * mse['rf']})['rf']
assert abs(w_rf_doubled - expected) < 1e-12, f'w_rf_doubled = {w_rf_doubled:.4f}; expected {expected:.4f}'
print(f'correct: {run.ensemble.weights_["rf"]:.3f} -> {w_rf_doubled:.3f} (not halved: the others share the rest)')

# %% [markdown]
# **3. One member alone.** Set the fusion explorer so that the ensemble is the neural net alone; its test MAE is then the neural net's own in the table of metrics above (`m["models"]["dnn"]["mae"]`). Use the explorer's buttons, or its `rule` in code.

# %%
explorer.rule.value = 'single:dnn'  # your answer: one of 'inverse_variance', 'equal', 'single:rf', 'single:xgb', 'single:dnn'

# %%
got, want = explorer.scores['test']['mae'], m['models']['dnn']['mae']
assert abs(got - want) < 1e-12, f'the explorer shows test MAE {got:.4f}; the neural net alone has {want:.4f}'
print(f'correct: the neural net alone, test MAE {got:.4f} (ensemble: {m["models"]["ensemble"]["mae"]:.4f})')

# %% [markdown]
# **4. Early stopping.** In the dashboard's last fit (the final fit on all training stars), how many epochs ran *after* the epoch whose weights were kept? (Hint: what does `patience` mean?)

# %%
epochs_after_best = 10  # your answer

# %%
final = run.ensemble.members_['dnn']
assert epochs_after_best == final.n_epochs_ - final.best_epoch_, \
    f'{epochs_after_best}: the final fit ran {final.n_epochs_} epochs and kept epoch {final.best_epoch_}'
print(f'correct: {final.n_epochs_} epochs, the weights of epoch {final.best_epoch_} kept; '
      f'patience = {final.patience}')
