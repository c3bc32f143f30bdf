"""Continuum normalization: divide each spectrum by a smooth polynomial fitted, per detector, to line-free pixels.

An equivalent width is measured against the continuum, so an error in the continuum is an error in every EW:
1% too low a continuum under a 20 mA line at FWHM 0.7 A shifts its EW by ~7 mA, more than its noise at S/N 100.
The continuum of an APOGEE apStar spectrum is the star's smooth spectral slope times the instrument response of
each of the three detectors, so fehkit fits one low-order Legendre polynomial per detector (``order=3``). The fit
must see only continuum: absorption lines pull a plain least-squares fit down. So the fit is iterated, and each
time pixels more than ``low`` sigma *below* it (absorption, at most a few noise sigma deep in an EMP star) or more
than ``high`` sigma *above* it (cosmic rays, sky residuals) are dropped; the clipping is asymmetric because lines
only absorb. Masked, NaN and zero-ivar pixels and the cores of the packaged Fe lines never enter the fit. Clipping
a Gaussian noise distribution at -low/+high sigma leaves its mean ``delta`` sigma high (0.05 sigma for 2/3), which
the fit removes; sigma is the pixel error from ``ivar`` times the robust scatter of the residuals, so a spectrum
whose ``ivar`` is off by a factor is clipped at the right depth all the same.

Everything is vectorized over the batch (in blocks of spectra): each iteration solves the (order + 1)-square normal
equations of every spectrum still iterating at once. The sums of those equations are built once with two matrix
products and then updated with only the pixels that the clipping moved in or out, so an iteration costs a few
passes over the residuals; spectra that have converged leave the work arrays. Where numba imports, compiled
kernels (:mod:`fehkit.continuum_kernels`) run the same fit one spectrum at a time in a few passes over its pixels,
several times faster, to the same clipping; the NumPy code is the reference and the fallback (``USE_NUMBA = False``
forces it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from numpy.polynomial import legendre
from scipy.special import ndtr

from fehkit.arrays import per_grid, star_ids
from fehkit.display import counts, html_summary, text_summary
from fehkit.errors import FehkitError
from fehkit.float32 import at_least, at_most
from fehkit.lines import packaged_line_waves
from fehkit.spectra import CHIPS, SpectrumBatch
from fehkit.threads import SharedSetting, compiled, map_parts, numba_wanted

#: Half width (A) of the Fe line cores kept out of the continuum fit: 2 FWHM of the LSF at R = 22,500.
LINE_CORE_HALF_WIDTH_A = 1.4

#: Spectra are fitted in blocks of this many (bounds the memory of the float64 work arrays).
_BLOCK = 256

#: The work arrays of a block drop the spectra that are done once fewer than this fraction still iterate.
_COMPACT = 0.9

#: Fit with the compiled kernels of :mod:`fehkit.continuum_kernels` when numba imports (False, or the environment
#: variable ``FEHKIT_NUMBA=0``: always NumPy).
USE_NUMBA = numba_wanted()


class ContinuumError(FehkitError, ValueError):
    """Arguments of :func:`normalize` that cannot work (a negative order, clipping limits <= 0)."""


class Normalized:
    """Result of :func:`normalize`; unpacks as ``batch, continuum, diagnostics``.

    Attributes
    ----------
    batch : SpectrumBatch
        Continuum-normalized spectra (``flux_unit`` ""): flux / continuum, ivar * continuum**2, and the mask
        extended to pixels without a continuum (chip gaps, detectors that could not be fitted).
    continuum : (n_spec, n_pix) float32
        The fitted continuum in the input's flux units; NaN off the detectors and on failed detectors.
    diagnostics : pandas.DataFrame
        One row per (spectrum, detector): ``star_id``, ``chip``, ``n_pixels`` (usable), ``n_used`` (in the
        final fit), ``n_iter``, ``converged``, ``noise_scale`` (robust scatter of the residuals in units of the
        ``ivar`` error: ~1 when ``ivar`` is right), ``flag`` ("ok" or "too_few_pixels") and the Legendre
        coefficients ``coef_0 .. coef_<order>`` on the detector's wavelength range mapped to [-1, 1]. Built when
        first asked for (the pipeline itself reads only ``batch``).
    """

    def __init__(self, batch: SpectrumBatch, continuum: np.ndarray,
                 diagnostics: pd.DataFrame | Callable[[], pd.DataFrame]) -> None:
        self.batch = batch
        self.continuum = continuum
        self._diagnostics = diagnostics

    @property
    def diagnostics(self) -> pd.DataFrame:
        """The per-detector table (see the class); built on first access."""
        if callable(self._diagnostics):
            self._diagnostics = self._diagnostics()
        return self._diagnostics

    def __getstate__(self) -> dict[str, Any]:  # pickled (e.g. by Dask) with the table, not the function making it
        return {**self.__dict__, "_diagnostics": self.diagnostics}

    def __iter__(self):  # noqa: ANN204 -- lets ``batch, continuum, diagnostics = normalize(...)`` work
        return iter((self.batch, self.continuum, self.diagnostics))

    def _facts(self) -> list[tuple[str, object]]:
        return [("spectra", self.batch.n_spectra), ("pixels", self.batch.n_pixels),
                ("detector fits", counts(self.diagnostics["flag"]) if "flag" in self.diagnostics else "none")]

    def __repr__(self) -> str:
        return text_summary("Normalized", self._facts())

    def _repr_html_(self) -> str:
        return html_summary("Normalized: continuum-normalized spectra", self._facts())


def normalize(
    batch: SpectrumBatch,
    order: int = 3,
    *,
    low: float = 2.0,
    high: float = 3.0,
    max_iter: int = 10,
    lines: pd.DataFrame | None = None,
    chips: Mapping[str, tuple[float, float]] = CHIPS,
    min_pixels: int = 100,
    device: str | None = None,
) -> Normalized:
    """Fit and divide out the continuum of every spectrum, one polynomial per detector.

    Parameters
    ----------
    batch : SpectrumBatch
        Spectra in flux units (or already normalized ones: they are fitted again, which is harmless).
    order : int
        Degree of the Legendre polynomial on each detector.
    low, high : float
        Clipping limits in noise sigma below and above the fit (asymmetric: lines only absorb).
    max_iter : int
        Most fit-and-clip iterations; the loop stops earlier once no spectrum's pixel selection changes.
    lines : DataFrame, optional
        Line list whose line cores (+-1.4 A) are kept out of the fit; default the packaged Fe I list. Pass an
        empty DataFrame to keep them in.
    chips : mapping of name -> (lo, hi)
        Wavelength range (A) of each detector; default the APOGEE detectors.
    min_pixels : int
        Fewest usable pixels a detector needs; with fewer its continuum is NaN and its pixels masked.
    device : str, optional
        A torch device (``"cuda"``, ``"cpu"``, ...): run the same fit as torch tensor operations there
        (:func:`_fit_chip_torch`; what :func:`fehkit.infer` does on a GPU). Default: NumPy (or the compiled kernels)
        on the CPU.

    Returns
    -------
    Normalized
        ``batch`` (normalized), ``continuum`` and per-detector ``diagnostics``.

    Examples
    --------
    >>> from fehkit.synth import simulate
    >>> sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.5], "vmic": [1.8], "snr": [200]}, seed=3)
    >>> norm_batch, continuum, diag = normalize(sim.batch)
    >>> good = ~norm_batch.mask
    >>> err = abs(continuum[good] / sim.continuum[good] - 1)
    >>> bool(float(np.median(err)) < 0.002), list(diag.flag)
    (True, ['ok', 'ok', 'ok'])
    """
    if order < 0 or int(order) != order:
        raise ContinuumError(f"order: expected a non-negative integer, found {order!r}")
    if not (low > 0 and high > 0):
        raise ContinuumError(f"low/high: expected clipping limits > 0 sigma, found low={low!r}, high={high!r}")
    line_waves = packaged_line_waves() if lines is None else np.asarray(lines["wave_vac"] if len(lines) else [], float)
    wave = batch.wave
    n = batch.n_spectra
    # mean of a unit normal kept between -low and +high: the clipped fit sits this many sigma too high
    bias = float((_normal_pdf(low) - _normal_pdf(high)) / (ndtr(high) - ndtr(-low)))

    # every detector's fit writes all of its pixels (NaN where it failed); NaN is written outside them below
    continuum = np.empty(batch.flux.shape, np.float32)
    fitted = np.zeros(batch.n_pixels, bool)
    kernels = _kernels() if USE_NUMBA and device is None else None
    if kernels is not None:  # the kernels take native float32 / bool arrays, C-ordered (no copy if they are)
        arrays = tuple(np.ascontiguousarray(a, t) for a, t in ((batch.flux, np.float32), (batch.ivar, np.float32),
                                                                 (batch.mask, bool)))
    fits = {}  # chip name -> per-spectrum results, (n,) or (n, order + 1)
    detectors = tuple((name, (float(lo), float(hi))) for name, (lo, hi) in chips.items())
    for name, (sel, line_free, basis) in _detectors(wave, detectors, order, line_waves).items():
        fitted[sel] = True
        if device is not None:
            fits[name] = _fit_chip_torch(batch.flux[:, sel], batch.ivar[:, sel], batch.mask[:, sel], line_free,
                                         basis, low, high, bias, max_iter, min_pixels, device)
            continuum[:, sel] = fits[name].pop("continuum")
            continue
        if kernels is not None and sel[-1] - sel[0] + 1 == sel.size:  # the detector's pixels in one run
            fits[name] = _fit_chip_compiled(kernels, arrays, sel, line_free, basis, low, high, bias, max_iter,
                                            min_pixels, continuum)
            continue
        parts = []
        for start in range(0, n, _BLOCK):
            blk = slice(start, min(start + _BLOCK, n))
            with _one_blas_thread():
                fit = _fit_chip(batch.flux[blk, sel], batch.ivar[blk, sel], batch.mask[blk, sel], line_free,
                                basis, low, high, bias, max_iter, min_pixels)
            continuum[blk, sel] = fit.pop("continuum")
            parts.append(fit)
        fits[name] = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
    edges = np.flatnonzero(np.diff(np.concatenate(([False], ~fitted, [False])).astype(np.int8)))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):  # the runs of pixels off the detectors
        continuum[:, start:stop] = np.nan

    def diagnostics() -> pd.DataFrame:  # built when first asked for, with the output's ids
        ids = star_ids(out.meta_columns(["star_id"]))
        return _diagnostics(np.arange(n).astype(str) if ids is None else ids, fits, order)
    if kernels is not None:
        flux, ivar, mask = (np.empty_like(a) for a in arrays)

        def divide(rows: slice) -> None:  # blocks of rows in threads (the kernel releases the GIL)
            kernels.divide(*(a[rows] for a in arrays), continuum[rows], flux[rows], ivar[rows], mask[rows])

        map_parts(divide, n, min_rows=16, max_rows=64)
    elif device is not None:
        flux, ivar, mask = _divide_torch(batch, continuum, device)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            no_continuum = ~(continuum > 0)
            flux = np.where(no_continuum, np.nan, batch.flux / continuum).astype(np.float32)
            ivar = np.where(no_continuum, 0.0, batch.ivar * continuum * continuum).astype(np.float32)
            mask = batch.mask | no_continuum
    # the compiled division masks what has no finite flux or positive ivar: the batch need not look again
    out = batch.with_arrays(flux, ivar, mask, flux_unit="", mask_complete=kernels is not None)
    return Normalized(out, continuum, diagnostics)


def _detectors(wave: np.ndarray, chips: tuple[tuple[str, tuple[float, float]], ...], order: int,
               line_waves: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per detector with pixels: its pixels ``sel``, which of them are free of line cores, and its Legendre basis.

    They depend only on the wavelength grid, so the last grid's are kept (:func:`fehkit.arrays.per_grid`): every
    apStar batch has the same grid, and working them out again (~0.5 ms) would be most of the cost of normalizing
    one spectrum.
    """
    def make() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        core = np.zeros(wave.size, bool)
        for lam in line_waves:  # pixels within the half width of a line (the grid is increasing: one run per line)
            a = np.searchsorted(wave, lam - 2 * LINE_CORE_HALF_WIDTH_A)
            b = np.searchsorted(wave, lam + 2 * LINE_CORE_HALF_WIDTH_A, side="right")
            core[a:b] |= np.abs(wave[a:b] - lam) <= LINE_CORE_HALF_WIDTH_A
        out = {}
        for name, (lo, hi) in chips:
            sel = np.flatnonzero((wave >= lo) & (wave <= hi))
            if sel.size:
                x = 2.0 * (wave[sel] - lo) / (hi - lo) - 1.0
                out[name] = (sel, ~core[sel], legendre.legvander(x, order))   # basis (n_sel, order+1)
        return out

    return per_grid(_detector_cache, (chips, order, line_waves.tobytes()), wave, make)


#: :func:`_detectors` of the last grid.
_detector_cache: dict = {}


def _kernels() -> Any:
    """Return :mod:`fehkit.continuum_kernels` (numba imported on first use), or None without numba."""
    return compiled("fehkit.continuum_kernels")


def _fit_chip_compiled(
    kernels: Any, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], sel: np.ndarray, line_free: np.ndarray,
    basis: np.ndarray, low: float, high: float, bias: float, max_iter: int, min_pixels: int, continuum: np.ndarray,
) -> dict[str, np.ndarray]:
    """:func:`_fit_chip` for all spectra of one detector (pixels ``sel``, consecutive) by the compiled kernel.

    ``arrays`` are the batch's flux, ivar and mask. Writes ``continuum[:, sel]``; returns the other results as
    :func:`_fit_chip` does.
    """
    n, k = arrays[0].shape[0], basis.shape[1]
    coef = np.zeros((n, k))
    stats = np.zeros((n, 6))  # n_pixels, n_used, n_iter, converged, scale, ok
    root = float(np.sqrt(_clipped_second_moment(-low, high)))
    flux, ivar, mask = arrays
    bases = np.ascontiguousarray(basis), np.ascontiguousarray(basis.T), np.ascontiguousarray(basis.T, np.float32)

    def fit(rows: slice) -> None:  # spectra are fitted one by one: parts of them in threads, the same numbers
        kernels.fit_detector(flux[rows], ivar[rows], mask[rows], int(sel[0]), line_free, *bases, float(low),
                             float(high), bias, root, int(max_iter), int(min_pixels), continuum[rows], coef[rows],
                             stats[rows])

    map_parts(fit, n)
    return {"coef": coef, "n_pixels": stats[:, 0].astype(int), "n_used": stats[:, 1].astype(int),
            "n_iter": stats[:, 2].astype(int), "converged": stats[:, 3] > 0, "scale": stats[:, 4],
            "ok": stats[:, 5] > 0}


def _limit_blas() -> Callable[[], object] | None:
    """Run BLAS on one thread; return what lifts the limit (None without threadpoolctl).

    The fit's matrix products are small (n x n_pix x 16, ~1 ms): a second thread gains nothing and, on a busy
    machine, makes every product wait for the scheduler (measured up to 100 times slower).
    """
    controller = _blas_controller()
    return None if controller is None else controller.limit(limits=1, user_api="blas").restore_original_limits


#: ``with _one_blas_thread():`` runs BLAS on one thread inside, as before after. Calls from several threads at once
#: share one limit, set by the first to enter and lifted by the last to leave (BLAS calls of other code in that
#: time run on one thread too).
_one_blas_thread = SharedSetting(_limit_blas)


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """Return the BLAS thread-pool controller, made once (None without threadpoolctl)."""
    try:  # threadpoolctl comes with scikit-learn
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def _diagnostics(ids: np.ndarray, fits: dict[str, dict[str, np.ndarray]], order: int) -> pd.DataFrame:
    """One row per (spectrum, detector), spectrum by spectrum and the detectors in order."""
    names = [name for name, fit in fits.items() if fit]
    if not names or ids.size == 0:
        return pd.DataFrame([])

    def col(key: str) -> np.ndarray:  # (n_spec * n_chips,): spectrum-major
        return np.stack([fits[name][key] for name in names], axis=1).ravel()

    table = {"star_id": np.repeat(ids, len(names)), "chip": np.tile(np.array(names, dtype=object), ids.size),
             "n_pixels": col("n_pixels").astype(int), "n_used": col("n_used").astype(int),
             "n_iter": col("n_iter").astype(int), "converged": col("converged").astype(bool),
             "noise_scale": col("scale").astype(float),
             "flag": np.where(col("ok"), "ok", "too_few_pixels").astype(object)}
    coef = np.stack([fits[name]["coef"] for name in names], axis=1).reshape(-1, order + 1)
    table.update({f"coef_{j}": coef[:, j].astype(float) for j in range(order + 1)})
    return pd.DataFrame(table)


def _fit_chip(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, line_free: np.ndarray, basis: np.ndarray,
    low: float, high: float, bias: float, max_iter: int, min_pixels: int,
) -> dict[str, np.ndarray]:
    """Fit one detector of a block of spectra: an iteratively clipped, weighted polynomial.

    flux, ivar, mask : (n, n_sel); line_free : (n_sel,); basis : (n_sel, k). Returns the continuum (n, n_sel)
    float32 (NaN where the fit failed), and per spectrum the coefficients in units of the flux, pixel counts,
    iterations, convergence, noise scale and success.

    Every iteration fits all spectra still iterating at once. A spectrum that has converged keeps its last fit;
    it leaves the work arrays at the next compaction (when a tenth of their rows are done), not at once, so that
    the arrays are copied a few times rather than in every iteration.
    """
    n, k = flux.shape[0], basis.shape[1]
    usable = ~mask & np.isfinite(flux) & (ivar > 0)
    y = np.where(usable, flux, 0.0).astype(np.float64)
    w = np.where(usable, ivar, 0.0).astype(np.float64)   # float64 while scaling; float32 for the iterations
    # work in units of each spectrum's median level, so the normal equations are well scaled
    level = np.array([_median(flux[i][usable[i]]) or 1.0 if usable[i].any() else 1.0 for i in range(n)])
    level = np.where(level > 0, level, np.abs(level) + 1.0)
    y /= level[:, None]
    w *= level[:, None] ** 2
    y, w = y.astype(np.float32), w.astype(np.float32)
    sqrt_w = np.sqrt(w)
    sigma = np.where(w > 0, 1.0 / np.where(w > 0, sqrt_w, 1.0), 0.0)   # 0 where unusable: never kept

    n_pixels = np.count_nonzero(usable, axis=1)
    ok = n_pixels >= max(min_pixels, 2 * k)
    allowed = usable & line_free[None, :] & ok[:, None]   # pixels a fit may use; clipping drops some
    # results per spectrum, written when it converges (or at the last iteration)
    scale = np.ones(n)
    converged = np.zeros(n, bool)
    n_iter = np.zeros(n, int)
    coef = np.zeros((n, k))
    model = np.zeros_like(y)
    keep = allowed.copy()
    basis_t = basis.T.astype(np.float32)
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(basis.shape[0], k * k)
    # the sums of the normal equations over the kept pixels, per spectrum: [A (k*k) | sum w y B (k) | sum w sigma B
    # (k)]; built once, then updated with the few pixels that change side in an iteration
    w64 = w.astype(np.float64) * keep
    sums = np.concatenate([w64 @ outer, (w64 * y) @ basis, (w64 * sigma) @ basis], axis=1)
    del w64
    # work arrays: the rows ``rows`` of the above; ``live`` is False for rows done but not yet compacted away
    rows = np.arange(n)
    wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale = y, w, sqrt_w, sigma, allowed, keep.copy(), scale.copy()
    live = np.ones(n, bool)
    flip = None
    for it in range(max_iter):
        if flip is not None:
            _update_sums(sums, flip, wkeep, ww, wy, wsigma, outer, basis)
        # the kept pixels of a noise-only continuum sit bias * scale * sigma above it on average
        wcoef = _solve(sums, k, bias * wscale * (it > 0))
        wmodel = wcoef.astype(np.float32) @ basis_t
        resid = (wy - wmodel) * wsqrt
        # the first fit saw unclipped pixels; later ones saw pixels clipped at -low/+high scale
        lim = (low, high) if it > 0 else (np.inf, np.inf)
        wscale = _clipped_scale(resid, wkeep, *lim)
        # resid > -low * scale and resid < high * scale, compared in float32 (to the same result, twice as fast)
        new_keep = (resid > at_most(-low * wscale)[:, None]) & (resid < at_least(high * wscale)[:, None])
        new_keep &= wallowed
        # converged once (almost) no pixel changes side: a few noise pixels can flip at the limits forever
        flip = new_keep != wkeep
        changed = np.count_nonzero(flip, axis=1) > 2e-3 * np.maximum(np.count_nonzero(wkeep, axis=1), 1)
        wkeep = new_keep
        done = live & (~changed | (it == max_iter - 1))
        if done.any():
            out = rows[done]
            coef[out], model[out], scale[out], keep[out] = wcoef[done], wmodel[done], wscale[done], wkeep[done]
            n_iter[out] = it + 1
            converged[out] = ~changed[done]
            live &= ~done
            if not live.any():
                break
            if np.count_nonzero(live) < _COMPACT * live.size:  # compact: drop the rows that are done
                rows, wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale, sums, flip = (
                    a[live] for a in (rows, wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale, sums, flip))
                live = np.ones(rows.size, bool)
    ok &= np.count_nonzero(keep, axis=1) >= max(min_pixels // 2, 2 * k)
    cont = np.where(ok[:, None], model * level[:, None], np.nan).astype(np.float32)
    return {"continuum": cont, "coef": coef * level[:, None], "n_pixels": n_pixels,
            "n_used": np.count_nonzero(keep, axis=1), "n_iter": n_iter, "converged": converged, "scale": scale,
            "ok": ok}



#: Rows of one torch median call (``torch.nanquantile`` takes at most 2**24 values at once).
_QUANTILE_VALUES = 1 << 24


def _fit_chip_torch(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, line_free: np.ndarray, basis: np.ndarray,
    low: float, high: float, bias: float, max_iter: int, min_pixels: int, device: str,
) -> dict[str, np.ndarray]:
    """:func:`_fit_chip` as torch tensor operations on ``device``, all spectra of the detector at once.

    The same fit step by step: the spectra scaled to their median level, float32 residuals, float64 normal
    equations, the same clipping limits and convergence test; converged spectra keep their fit and leave the work
    tensors. The normal equations are summed afresh each iteration (one matrix product: cheap on a GPU) rather than
    updated with the pixels that changed side, so the sums differ from NumPy's in the last bits, and a pixel lying
    on a clipping limit to within that rounding can be decided the other way (tested: the continua agree to
    ~1e-6 relative).
    """
    import torch

    dev = torch.device(device)
    n, k = flux.shape[0], basis.shape[1]
    f = torch.as_tensor(np.ascontiguousarray(flux), device=dev)
    iv = torch.as_tensor(np.ascontiguousarray(ivar), device=dev)
    usable = ~torch.as_tensor(np.ascontiguousarray(mask), device=dev) & torch.isfinite(f) & (iv > 0)
    f64 = torch.where(usable, f, 0.0).double()
    # each spectrum's median usable flux (the mean of the middle two for an even count), as NumPy's median
    level = torch.ones(n, dtype=torch.float64, device=dev)
    rows_per = max(1, _QUANTILE_VALUES // max(f.shape[1], 1))
    for a in range(0, n, rows_per):
        part = torch.where(usable[a:a + rows_per], f[a:a + rows_per].double(), torch.nan)
        med = torch.nanquantile(part, 0.5, dim=1, interpolation="midpoint")
        level[a:a + rows_per] = torch.where(torch.isfinite(med) & (med != 0), med, 1.0)
    level = torch.where(level > 0, level, level.abs() + 1.0)
    y = (f64 / level[:, None]).float()
    w = (torch.where(usable, iv, 0.0).double() * level[:, None] ** 2).float()
    sqrt_w = torch.sqrt(w)
    sigma = torch.where(w > 0, 1.0 / torch.where(w > 0, sqrt_w, 1.0), 0.0)

    n_pixels = usable.sum(dim=1)
    ok = n_pixels >= max(min_pixels, 2 * k)
    allowed = usable & torch.as_tensor(line_free, device=dev)[None, :] & ok[:, None]
    b64 = torch.as_tensor(basis, dtype=torch.float64, device=dev)               # (n_sel, k)
    outer = (b64[:, :, None] * b64[:, None, :]).reshape(b64.shape[0], k * k)
    b32_t = b64.T.float()
    root = float(np.sqrt(_clipped_second_moment(-low, high)))
    scale = torch.ones(n, dtype=torch.float64, device=dev)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    n_iter = torch.zeros(n, dtype=torch.int64, device=dev)
    coef = torch.zeros((n, k), dtype=torch.float64, device=dev)
    model = torch.zeros_like(y)
    keep = allowed.clone()
    rows = torch.arange(n, device=dev)
    wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale = y, w, sqrt_w, sigma, allowed, keep.clone(), scale.clone()
    live = torch.ones(n, dtype=torch.bool, device=dev)
    eye = torch.eye(k, dtype=torch.float64, device=dev)
    for it in range(max_iter):
        wk = ww.double() * wkeep
        a = (wk @ outer).reshape(-1, k, k)
        b = (wk * wy.double()) @ b64 - (bias * wscale * (it > 0))[:, None] * ((wk * wsigma.double()) @ b64)
        trace = torch.diagonal(a, dim1=1, dim2=2).sum(dim=1)
        a = a + eye * 1e-12 * torch.clamp(trace, min=1e-30)[:, None, None]
        wcoef = torch.linalg.solve(a, b[..., None])[..., 0]
        wmodel = wcoef.float() @ b32_t
        resid = (wy - wmodel) * wsqrt
        # the noise scale from the rms of the kept residuals, corrected for the clipping (as _clipped_scale)
        sq = resid * resid * wkeep
        rms = torch.sqrt(sq.sum(dim=1).double() / wkeep.sum(dim=1))
        wscale = torch.clamp(torch.nan_to_num(rms / (root if it > 0 else 1.0), nan=1.0, posinf=1.0, neginf=1.0),
                             0.3, 10.0)
        r64 = resid.double()
        new_keep = (r64 > (-low * wscale)[:, None]) & (r64 < (high * wscale)[:, None]) & wallowed
        flip = new_keep != wkeep
        changed = flip.sum(dim=1) > 2e-3 * torch.clamp(wkeep.sum(dim=1), min=1)
        wkeep = new_keep
        done = live & (~changed | (it == max_iter - 1))
        if bool(done.any()):
            out = rows[done]
            coef[out], model[out], scale[out], keep[out] = wcoef[done], wmodel[done], wscale[done], wkeep[done]
            n_iter[out] = it + 1
            converged[out] = ~changed[done]
            live &= ~done
            if not bool(live.any()):
                break
            if int(live.sum()) < _COMPACT * live.numel():  # compact: drop the rows that are done
                rows, wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale = (
                    t[live] for t in (rows, wy, ww, wsqrt, wsigma, wallowed, wkeep, wscale))
                live = torch.ones(rows.numel(), dtype=torch.bool, device=dev)
    ok &= keep.sum(dim=1) >= max(min_pixels // 2, 2 * k)
    cont = torch.where(ok[:, None], model.double() * level[:, None], torch.nan).float()
    return {"continuum": cont.cpu().numpy(), "coef": (coef * level[:, None]).cpu().numpy(),
            "n_pixels": n_pixels.cpu().numpy(), "n_used": keep.sum(dim=1).cpu().numpy(),
            "n_iter": n_iter.cpu().numpy(), "converged": converged.cpu().numpy(), "scale": scale.cpu().numpy(),
            "ok": ok.cpu().numpy()}


def _divide_torch(batch: SpectrumBatch, continuum: np.ndarray, device: str) -> tuple[np.ndarray, ...]:
    """Flux / continuum, ivar * continuum**2 and the extended mask, as the NumPy branch of :func:`normalize`."""
    import torch

    dev = torch.device(device)
    cont = torch.as_tensor(continuum, device=dev)
    flux = torch.as_tensor(np.ascontiguousarray(batch.flux, np.float32), device=dev)
    ivar = torch.as_tensor(np.ascontiguousarray(batch.ivar, np.float32), device=dev)
    none = ~(cont > 0)
    out_flux = torch.where(none, torch.nan, flux / cont)
    out_ivar = torch.where(none, 0.0, ivar * cont * cont)
    out_mask = torch.as_tensor(np.ascontiguousarray(batch.mask), device=dev) | none
    return out_flux.cpu().numpy(), out_ivar.cpu().numpy(), out_mask.cpu().numpy()

def _median(values: np.ndarray) -> float:
    """Return ``np.median(values)`` in float64 (to the bit), by partitioning ``values`` in place (float32 is faster)."""
    h = values.size // 2
    if values.size % 2:
        values.partition(h)
        return float(values[h])
    values.partition([h - 1, h])
    return (float(values[h - 1]) + float(values[h])) / 2


def _update_sums(sums: np.ndarray, flip: np.ndarray, keep: np.ndarray, w: np.ndarray, y: np.ndarray,
                 sigma: np.ndarray, outer: np.ndarray, basis: np.ndarray) -> None:
    """Add the pixels that entered the fit (``flip`` and now ``keep``) to ``sums``, take out those that left."""
    r, p = np.nonzero(flip)
    if not r.size:
        return
    wf = np.where(keep[r, p], 1.0, -1.0) * w[r, p]
    part = np.concatenate([wf[:, None] * outer[p], (wf * y[r, p])[:, None] * basis[p],
                           (wf * sigma[r, p])[:, None] * basis[p]], axis=1)
    first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])  # r is sorted: one block per spectrum
    sums[r[first]] += np.add.reduceat(part, first, axis=0)


def _solve(sums: np.ndarray, k: int, shift: np.ndarray) -> np.ndarray:
    """Solve every spectrum's weighted least-squares problem: (n, k) coefficients of a fit to y - shift * sigma.

    ``sums`` holds per spectrum the normal matrix ``A = sum_p w_p B_p B_p^T`` (flattened), ``sum_p w_p y_p B_p`` and
    ``sum_p w_p sigma_p B_p`` over its kept pixels.
    """
    a = sums[:, :k * k].reshape(-1, k, k).copy()
    b = sums[:, k * k:k * k + k] - shift[:, None] * sums[:, k * k + k:]
    a += np.eye(k) * 1e-12 * np.maximum(np.trace(a, axis1=1, axis2=2), 1e-30)[:, None, None]
    return np.linalg.solve(a, b[..., None])[..., 0]


def _clipped_scale(resid: np.ndarray, keep: np.ndarray, low: float, high: float) -> np.ndarray:
    """Noise scale from the rms of the kept residuals, corrected for the clipping (fast: no median).

    A unit normal kept between -low and +high has rms ``sqrt(var + mean**2)`` < 1; dividing by it gives the
    scale of the noise that was clipped. Clipped to 0.3-10 so that one bad iteration cannot run away.
    """
    second_moment = _clipped_second_moment(-low, high)
    n_kept = np.count_nonzero(keep, axis=1)
    squares = resid * resid
    squares *= keep  # the residuals are finite: the same as np.where(keep, squares, 0), 10 times faster
    with np.errstate(all="ignore"):
        rms = np.sqrt(squares.sum(axis=1) / n_kept)
    scale = rms / np.sqrt(second_moment)
    return np.clip(np.where(np.isfinite(scale), scale, 1.0), 0.3, 10.0)


def _clipped_second_moment(a: float, b: float) -> float:
    """Return the second moment (mean square) of a unit normal kept between ``a`` and ``b`` (1 for -inf, inf)."""
    z = ndtr(b) - ndtr(a)
    tails = (a * _normal_pdf(a) if np.isfinite(a) else 0.0) - (b * _normal_pdf(b) if np.isfinite(b) else 0.0)
    return 1.0 + tails / z


def _normal_pdf(x: float | np.ndarray) -> float | np.ndarray:
    """Return the standard normal density (all the continuum needs of scipy.stats, which is slow to import)."""
    return np.exp(-0.5 * np.square(x)) / np.sqrt(2.0 * np.pi)
