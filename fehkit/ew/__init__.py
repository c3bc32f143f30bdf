"""Equivalent widths of every Fe line of every spectrum at once: batched Voigt fits with honest errors and flags.

The equivalent width (EW) of a line is the area of its absorption, ``EW = int (1 - F / F_c) d lambda``; in the
weak-line regime of EMP stars it is proportional to the number of iron atoms, so it carries the abundance. Each line
is fitted, in a window of +-20 apStar pixels (~+-4.4 A), with a Voigt profile on a local continuum level::

    F(lambda) = c0 * (1 - EW * V(lambda - lambda_0 - d_lambda; sigma, gamma))

with V area-normalized (:mod:`fehkit.profiles`): the EW is a fit parameter, and its error comes straight from the
fit. All windows of all spectra form one array ``(n_spectra, n_lines, n_window)``, and one Levenberg-Marquardt loop
(elementwise Jacobians, a vectorized 5x5 Cholesky solve per fit, box bounds) solves them together, on numpy or on
torch (CPU or CUDA) with the same code. On the CPU, where numba imports, compiled kernels run the same fits one
window at a time in float64 (:mod:`~fehkit.ew.kernels`, ~4x faster); the numpy code stays the reference.

The measurement runs in three steps, because a free centre and width chase noise in a weak line: fitted to a line
at 1-3 sigma they find the largest noise dip within the RV tolerance and bias the EW *up*, exactly where EMP stars
live.

1. **Fixed shape**: every line with the expected centre (rest frame) and Gaussian width (LSF at R = 22,500 plus
   thermal and microturbulent broadening); free c0 and EW. This gives each line's significance.
2. **Free shape** for lines detected at >= ``free_shape_snr`` sigma: centre within ``rv_tolerance`` km/s, Gaussian
   width within 0.6-2.5x the expected one, the Lorentz width first tied to the damping of
   :mod:`fehkit.physics.broadening`. Pixels far off the fit are then dropped and the fit repeated: more than 5
   sigma above it (cosmic rays, emission, sky residuals), or more than 3 sigma below it outside the line core (a
   neighbouring line dragging the local continuum down). With ``damping="shared"`` (the default) the star then
   gets one Lorentz (wing) width: Gauss-Newton steps on the summed chi-square of its strong lines (each line's
   step of the width, its other parameters re-optimized, combined by their information), less the
   second-order bias of that joint fit (Box 1971: with a centre, width, level and EW of its own per line, the
   shared width comes out ~0.01 A low at S/N 100), each followed by a refit of the strong lines with it. A
   line-spread function wider or with broader wings than assumed, or stronger damping, is so absorbed by the
   star's shape instead of biasing the EWs low. A star whose weaker lines' windows show a blend background
   (crowding, below, > 0.05) keeps the damping estimate: its neighbours would fill the wings. (``damping="tied"``
   keeps the damping estimate for every star, ``"free"`` fits the width line by line.) The star's **shared line
   shape** -- its residual RV and the ratio of fitted to expected width (and its Lorentz width) -- is the
   weighted median (mean) over its detected, unblended lines.
3. **Final**: lines detected at >= ``free_shape_snr`` keep their own free-shape fit; all others are fitted with the
   star's shared shape and free c0 and EW, which is linear in the flux, so their EW is unbiased even at zero
   signal and its error is exact. The measured EW is reported whatever its significance (negative values
   included): the ensemble and the joint likelihood of the abundance stage need it unbiased.

Errors come from the fit's Jacobian (the inverse of the Gauss-Newton matrix at the solution, with the pixel errors
of ``ivar``) and, as the method does, from Monte Carlo resampling: the flux is perturbed with its own noise
``mc_draws`` times (100 by default) and every fit repeated, all draws in one batch; the two agree when ``ivar`` is
right (:meth:`EWTable.error_agreement`). Where a window holds more than noise and one line (an unresolved blend,
a telluric residual), its reduced chi-square exceeds 1 and the reported error is scaled up by its square root.
Blends the window cannot show (inside the profile) are counted from the star's **crowding**: the mean excess of
its windows' reduced chi-square over 1 (less one error of that mean) is the variance of its blend background in
units of the noise; that background is correlated over a line width, so it adds ``N_eff - 1`` times that
fraction of the fit variance, with ``N_eff = 2 sqrt(pi) sigma / pixel`` (~5) the effective pixels of a profile.
It is ~0 for EMP stars and grows with metallicity. With ``damping="shared"`` the error of the star's Lorentz
width reaches each strong line's EW error through the EW-width correlation of its fit.
The detection limit follows Cayrel (1988):
``sigma_EW ~ 1.5 sqrt(FWHM x pixel) / SNR``, ~6 mA at S/N 100, while the strongest H-band Fe I lines of a
[Fe/H] = -3 giant are ~20 mA.

Flags (one per line, by priority): ``masked`` (too few good pixels in the line core or the window),
``fit_failed`` (no convergence, centre or width at its bound, local continuum off by >50%, a saturated or
flat-bottomed core, significantly negative flux), ``upper_limit`` (EW below ``detection_sigma`` x its error),
``blend_suspect`` (a known neighbour inside the profile, a width or RV far off the star's shared shape, or
residuals beyond the noise) and ``ok``. ``ew_mA`` is NaN exactly when the flag is masked or fit_failed.

The package, read in the order of the pipeline:

* :mod:`~fehkit.ew.measure` -- :func:`measure_ew` and its settings (:class:`EWSettings`): windows, the three
  fitting steps, the shared line shape, outlier clipping, errors and flags;
* :mod:`~fehkit.ew.solver` -- the batched fits themselves: exact linear fits of a fixed shape, box-bounded
  Levenberg-Marquardt for free shapes, Monte Carlo refits, on numpy or torch;
* :mod:`~fehkit.ew.kernels` -- the same fits (and the window cuts, outlier clipping and RV scan of
  :mod:`~fehkit.ew.measure`) as numba kernels, the CPU fast path;
* :mod:`~fehkit.ew.table` -- :class:`EWTable`, the result, with the flags and their reasons.
"""

from fehkit.ew.measure import BLEND_TESTS, DEFAULT_PARAMS, EWSettings, measure_ew, static_blends, window_pixels
from fehkit.ew.table import EW_COLUMNS, FLAGS, REASONS, EWError, EWTable

__all__ = [
    "BLEND_TESTS",
    "DEFAULT_PARAMS",
    "EW_COLUMNS",
    "FLAGS",
    "REASONS",
    "EWError",
    "EWSettings",
    "EWTable",
    "measure_ew",
    "static_blends",
    "window_pixels",
]
