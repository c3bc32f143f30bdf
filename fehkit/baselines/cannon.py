"""The Cannon peer: a data-driven label estimator trained on the same spectra and labels as fehkit.

The Cannon (Ness et al. 2015) models the continuum-normalized flux of every pixel as a quadratic polynomial in the
stellar labels (here Teff, log g, [Fe/H]) plus an intrinsic scatter, fitted pixel by pixel to a training set of
spectra with known labels. At the test step it turns this around: with the polynomials fixed, each spectrum's labels
are found by a non-linear least-squares fit of the model spectrum to the observed one. It needs no physics beyond
the training labels, so it is as good as they are and cannot extrapolate beyond their range.

This module wraps the reference implementation, PyPI ``thecannon`` (``TheCannon``), without changing its method,
and guards against its traps: importing it sets matplotlib's ``text.usetex`` (restored at once), it edits its input
arrays in place (it only ever sees private copies), it prints as it works (silenced) and it reports label errors in
its internal scaled units (converted back to label units here).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import FehkitError, FehkitWarning, SpectrumShapeError
from fehkit.spectra import SpectrumBatch

#: The labels the peer learns by default: the reference-label columns of a fehkit benchmark, renamed.
DEFAULT_LABELS = ("teff", "logg", "feh")

#: Pixels trained per block: thecannon holds one copy of the (n_train, n_coeff) label matrix *per pixel* in
#: float64, ~700 MB for 1,050 spectra x 8,575 pixels in one go; blocks of 1,024 pixels keep it near 90 MB.
_PIXEL_BLOCK = 1024

#: Spectra predicted per block (bounds the float64 copies handed to thecannon).
_ROW_BLOCK = 512

#: Label value thecannon writes (in its scaled units) for a spectrum whose fit failed.
_FAILED = -9999.0


class CannonError(FehkitError, ValueError):
    """Training labels or arguments The Cannon peer cannot use (a missing column, a NaN label, too few spectra)."""


@dataclass
class CannonPeer:
    """A trained Cannon model and what :func:`predict_cannon` needs to apply it.

    Attributes
    ----------
    model : TheCannon.model.CannonModel
        The trained model: ``coeffs`` (n_used, n_coeff), ``scatters`` (n_used,), label ``pivots`` and ``scales``.
    label_names : tuple of str
        The labels it predicts, in order.
    wave : (n_pix,) float64
        The wavelength grid of the training spectra; spectra to predict must be on the same grid.
    pixels : (n_used,) int64
        Indices into ``wave`` of the pixels the model was trained on (see ``min_coverage`` of :func:`fit_cannon`).
    n_train : int
        Number of training spectra.
    """

    model: Any
    label_names: tuple[str, ...]
    wave: np.ndarray
    pixels: np.ndarray
    n_train: int

    def __repr__(self) -> str:
        return (f"<CannonPeer labels={list(self.label_names)}, {self.n_train} training spectra, "
                f"{self.pixels.size} of {self.wave.size} pixels>")


def fit_cannon(
    normalized: SpectrumBatch,
    labels: pd.DataFrame | Mapping[str, Any],
    label_names: Sequence[str] = DEFAULT_LABELS,
    order: int = 2,
    *,
    min_coverage: float = 0.5,
) -> CannonPeer:
    """Train The Cannon on continuum-normalized spectra with known labels.

    Masked pixels (``mask`` True, non-finite flux) enter with zero inverse variance and flux 1, so they carry no
    weight. The model is trained only on pixels with data in at least ``min_coverage`` of the training spectra:
    on the APOGEE grid that drops the ~840 pixels off the detectors and in the chip gaps, where no spectrum has
    data and a fit would only learn the fill value. Every pixel is fitted on its own (that is the method), so the
    pixels are trained in blocks of 1,024 to bound thecannon's memory; the result is the same as in one go.

    Parameters
    ----------
    normalized : SpectrumBatch
        Continuum-normalized training spectra (``flux_unit`` ""), e.g. the ``.batch`` of
        :func:`fehkit.continuum.normalize`; flux and ivar shaped (n_spec, n_pix).
    labels : pandas.DataFrame or mapping of name -> array
        One column per name in ``label_names``, one row per spectrum in batch order (the index is ignored).
        Every value must be finite.
    label_names : sequence of str
        The labels to learn, in the order :func:`predict_cannon` reports them.
    order : int
        Polynomial order of the model in the labels; thecannon implements only the quadratic model (2).
    min_coverage : float
        Smallest fraction (0-1] of the training spectra that must have data in a pixel for it to be trained on.

    Returns
    -------
    CannonPeer
        The trained model, ready for :func:`predict_cannon`.

    Raises
    ------
    CannonError
        A label column is missing, not numeric, not finite, of the wrong length or without spread; fewer
        spectra than model coefficients; ``order`` other than 2; spectra not normalized.
    ImportError
        If ``thecannon`` (or matplotlib) is not installed.

    Examples
    --------
    Train on the training split of a small synthetic benchmark and predict the rest (needs ``fehkit[peers]``):

    >>> from fehkit.continuum import normalize  # doctest: +SKIP
    >>> from fehkit.synth import make_benchmark  # doctest: +SKIP
    >>> sim = make_benchmark(80, seed=1)  # doctest: +SKIP
    >>> spectra = normalize(sim.batch).batch  # doctest: +SKIP
    >>> train = (sim.truth.split == "train").to_numpy()  # doctest: +SKIP
    >>> labels = sim.truth[["teff_ref", "logg_ref", "feh_ref"]].rename(columns=lambda c: c[:-4])  # doctest: +SKIP
    >>> peer = fit_cannon(spectra[train], labels[train])  # doctest: +SKIP
    >>> peer  # doctest: +SKIP
    <CannonPeer labels=['teff', 'logg', 'feh'], 56 training spectra, 7733 of 8575 pixels>
    >>> predict_cannon(peer, spectra[~train]).columns.tolist()  # doctest: +SKIP
    ['teff', 'logg', 'feh', 'teff_err', 'logg_err', 'feh_err', 'chi2']
    """
    batch = _check_batch(normalized)
    names = _check_label_names(label_names)
    if order != 2:
        raise CannonError(f"order: thecannon implements only the quadratic model, expected 2, found {order!r}")
    if not 0.0 < min_coverage <= 1.0:
        raise CannonError(f"min_coverage: expected a fraction in (0, 1], found {min_coverage!r}")
    label_vals = _label_matrix(labels, names, batch.n_spectra)
    n_coeff = 1 + len(names) + len(names) * (len(names) + 1) // 2
    if batch.n_spectra <= n_coeff:
        raise CannonError(f"normalized: a quadratic model in {len(names)} labels has {n_coeff} coefficients per "
                          f"pixel; expected more training spectra than that, found {batch.n_spectra}")
    usable = _usable(batch)
    empty = np.flatnonzero(~usable.any(axis=1))
    if empty.size:
        raise CannonError(f"normalized: spectra {empty[:5].tolist()} ({empty.size} in all) have no usable pixel; "
                          "drop them (and their labels) before training")
    pixels = np.flatnonzero(usable.mean(axis=0) >= min_coverage)
    if pixels.size == 0:
        raise CannonError(f"normalized: no pixel has data in at least {min_coverage:.0%} of the training spectra")

    dataset, model = _import_thecannon()
    flux, ivar = _cannon_inputs(batch.flux[:, pixels], batch.ivar[:, pixels], usable[:, pixels])
    wave = batch.wave[pixels]
    coeffs, scatters, chisqs = [], [], []
    pivots = scales = None
    for start in range(0, pixels.size, _PIXEL_BLOCK):
        cols = slice(start, start + _PIXEL_BLOCK)
        ds = _dataset(dataset, names, wave[cols], flux[:, cols], ivar[:, cols], label_vals)
        with _quiet():
            block = model.CannonModel(order, useErrors=False)
            block.train(ds)
        coeffs.append(block.coeffs)
        scatters.append(block.scatters)
        chisqs.append(block.chisqs)
        pivots, scales = block.pivots, block.scales  # depend on the labels only: the same for every block
    trained = model.CannonModel(order, useErrors=False)
    trained.coeffs = np.vstack(coeffs)
    trained.scatters = np.concatenate(scatters)
    trained.chisqs = np.vstack(chisqs)
    trained.pivots, trained.scales = pivots, scales
    return CannonPeer(trained, names, batch.wave.copy(), pixels, batch.n_spectra)


def predict_cannon(peer: CannonPeer, normalized: SpectrumBatch) -> pd.DataFrame:
    """Infer the labels of continuum-normalized spectra with a trained Cannon model.

    Each spectrum's labels are fitted by ``scipy.optimize.curve_fit`` inside thecannon, starting from its default
    guess, with the pixel errors of ``ivar`` and the model's intrinsic scatter added in quadrature; masked pixels
    get zero weight. Spectra with no usable pixel, and those whose fit fails, get NaN.

    Parameters
    ----------
    peer : CannonPeer
        A model from :func:`fit_cannon`.
    normalized : SpectrumBatch
        Continuum-normalized spectra on the training grid; flux and ivar shaped (n_spec, n_pix).

    Returns
    -------
    pandas.DataFrame
        One row per spectrum, index 0..n_spec-1 as the batch rows: one column per label (e.g. ``teff``, ``logg``,
        ``feh``), their formal 1-sigma errors ``<label>_err`` in label units (from the fit's covariance; they
        ignore errors in the training labels), and ``chi2``, the fit's chi-square over the pixels used
        (including the model scatter).

    Raises
    ------
    SpectrumShapeError
        If the spectra are not on the grid the model was trained on.
    CannonError
        If the spectra are not continuum-normalized.

    Examples
    --------
    See :func:`fit_cannon`. The result lines up with the batch:

    >>> result = predict_cannon(peer, spectra[~train])  # doctest: +SKIP
    >>> bool((result.feh - sim.truth.feh[~train].to_numpy()).abs().median() < 0.5)  # doctest: +SKIP
    True
    """
    batch = _check_batch(normalized)
    if batch.n_pixels != peer.wave.size or not np.allclose(batch.wave, peer.wave, rtol=1e-9, atol=0):
        raise SpectrumShapeError(
            f"normalized: spectra are on a grid of {batch.n_pixels} px, {batch.wave[0]:.2f}-{batch.wave[-1]:.2f} A; "
            f"expected the training grid of {peer.wave.size} px, {peer.wave[0]:.2f}-{peer.wave[-1]:.2f} A")
    dataset, _ = _import_thecannon()
    names = list(peer.label_names)
    n = batch.n_spectra
    values = np.full((n, len(names)), np.nan)
    errors = np.full((n, len(names)), np.nan)
    chi2 = np.full(n, np.nan)
    usable = _usable(batch)
    rows = np.flatnonzero(usable[:, peer.pixels].any(axis=1))
    wave = peer.wave[peer.pixels]
    scales = np.asarray(peer.model.scales, float)
    pivots = np.asarray(peer.model.pivots, float)
    for start in range(0, rows.size, _ROW_BLOCK):
        sel = rows[start:start + _ROW_BLOCK]
        ix = np.ix_(sel, peer.pixels)
        flux, ivar = _cannon_inputs(batch.flux[ix], batch.ivar[ix], usable[ix])
        ds = _dataset(dataset, peer.label_names, wave, flux[:0], ivar[:0], np.zeros((0, len(names))), flux, ivar)
        with _quiet(), warnings.catch_warnings(), np.errstate(invalid="ignore"):
            # a spectrum whose label covariance cannot be estimated gets infinite errors; say it with the values
            warnings.simplefilter("ignore", _optimize_warning())
            errs, chisq = peer.model.infer_labels(ds)
        values[sel] = ds.test_label_vals
        # thecannon reports the errors of its scaled labels, (label - pivot) / scale
        errors[sel] = np.asarray(errs, float) * scales
        chi2[sel] = chisq
    failed = np.all(np.isclose((values - pivots) / scales, _FAILED), axis=1)
    if failed.any():
        values[failed] = errors[failed] = chi2[failed] = np.nan
        warnings.warn(f"The Cannon: the label fit failed for {int(failed.sum())} of {n} spectra "
                      f"(rows {np.flatnonzero(failed)[:5].tolist()}); their labels are NaN", FehkitWarning,
                      stacklevel=2)
    out = pd.DataFrame(values, columns=names)
    for k, name in enumerate(names):
        out[f"{name}_err"] = errors[:, k]
    out["chi2"] = chi2
    return out


# ---------------------------------------------------------------------------------------------------------------
# private helpers
# ---------------------------------------------------------------------------------------------------------------
def _import_thecannon() -> tuple[Any, Any]:
    """Import thecannon's ``dataset`` and ``model`` modules without letting them change matplotlib's settings."""
    try:
        import matplotlib

        # TheCannon.dataset and TheCannon.model call rc('text', usetex=True) at import, which breaks every later
        # figure on a machine without LaTeX; rc_context puts the user's rcParams back (backend excepted)
        with matplotlib.rc_context():
            from TheCannon import dataset, model
    except ImportError as exc:
        raise ImportError('The Cannon peer needs the optional packages thecannon and matplotlib: '
                          'pip install "fehkit[peers]"') from exc
    return dataset, model


def _dataset(
    dataset: Any, names: Sequence[str], wave: np.ndarray, tr_flux: np.ndarray, tr_ivar: np.ndarray,
    tr_label: np.ndarray, test_flux: np.ndarray | None = None, test_ivar: np.ndarray | None = None,
) -> Any:
    """Build a thecannon ``Dataset`` from private copies of the arrays (it edits them in place), quietly."""
    if test_flux is None or test_ivar is None:
        test_flux, test_ivar = tr_flux[:0], tr_ivar[:0]
    with _quiet(), warnings.catch_warnings():
        # Dataset computes a median S/N per spectrum, which warns for a spectrum without data in a pixel block; the
        # S/N is not used to train or to infer labels
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = dataset.Dataset(wave.copy(), np.arange(len(tr_flux)), tr_flux.copy(), tr_ivar.copy(), tr_label.copy(),
                             np.arange(len(test_flux)), test_flux.copy(), test_ivar.copy())
        ds.set_label_names(list(names))
    return ds


def _optimize_warning() -> type[Warning]:
    from scipy.optimize import OptimizeWarning

    return OptimizeWarning


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow thecannon's progress prints (it uses print, not logging); exceptions pass through."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _check_batch(normalized: Any) -> SpectrumBatch:
    batch = getattr(normalized, "batch", normalized)  # a whole Normalized result is fine too
    if not isinstance(batch, SpectrumBatch):
        raise CannonError(f"normalized: expected a SpectrumBatch, found {type(normalized).__name__}")
    if batch.flux_unit != "":
        raise CannonError(f"normalized: expected continuum-normalized spectra (flux_unit ''), found flux in "
                          f"{batch.flux_unit!r}; pass fehkit.continuum.normalize(batch).batch")
    if batch.n_spectra == 0:
        raise CannonError("normalized: expected at least one spectrum, found none")
    return batch


def _check_label_names(label_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(label_names, str):
        label_names = (label_names,)
    names = tuple(label_names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CannonError(f"label_names: expected distinct label names (str), found {names!r}")
    return names


def _label_matrix(labels: pd.DataFrame | Mapping[str, Any], names: tuple[str, ...], n_spec: int) -> np.ndarray:
    """Return the training labels as a finite (n_spec, n_labels) float64 array, or say what is wrong with them."""
    if not isinstance(labels, (pd.DataFrame, Mapping)):
        raise CannonError(f"labels: expected a DataFrame or a mapping of label name -> values, "
                          f"found {type(labels).__name__}")
    missing = [n for n in names if n not in labels]
    if missing:
        found = list(labels.columns if isinstance(labels, pd.DataFrame) else labels.keys())
        raise CannonError(f"labels: missing column(s) {missing}; expected {list(names)}, found {found}")
    out = np.empty((n_spec, len(names)))
    for k, name in enumerate(names):
        raw = np.asarray(labels[name])
        if raw.ndim != 1 or raw.shape[0] != n_spec:
            raise CannonError(f"labels[{name!r}]: expected {n_spec} values (one per spectrum), found shape "
                              f"{raw.shape}")
        values = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CannonError(f"labels[{name!r}]: row {i} is {raw[i]!r}; expected a finite number "
                              f"({int(bad.sum())} bad value(s)); drop those spectra before training")
        lo, hi = np.percentile(values, [2.5, 97.5])
        if not hi > lo:
            # thecannon divides each label by a quarter of its central 95% range
            raise CannonError(f"labels[{name!r}]: expected a spread of values, found all (2.5-97.5%) at {lo:g}")
        out[:, k] = values
    return out


def _usable(batch: SpectrumBatch) -> np.ndarray:
    """(n_spec, n_pix) bool: pixels not masked, with finite flux and a finite, positive ivar."""
    # the batch masks NaN flux and ivar <= 0 when it is built, but its arrays may have been edited since
    with np.errstate(invalid="ignore"):
        return ~batch.mask & np.isfinite(batch.flux) & np.isfinite(batch.ivar) & (batch.ivar > 0)


def _cannon_inputs(flux: np.ndarray, ivar: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fresh float64 flux and ivar, (n_spec, n_used): unusable pixels get flux 1 (the continuum) and ivar 0."""
    return np.where(usable, flux, 1.0).astype(np.float64), np.where(usable, ivar, 0.0).astype(np.float64)
