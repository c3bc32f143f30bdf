"""Features for the [Fe/H] regressors: EWs, errors and flags, stellar parameters, the classical abundance.

Every line contributes its measured EW (also when weak or negative: a non-detection is a measurement near zero, not
a missing value), its error, its significance EW/error and its 3-sigma upper limit, plus a state code (0 detected,
1 below the detection threshold, 2 blend suspected). Lines with no usable measurement (masked, failed fits) are NaN,
never zero, and the regressors treat NaN as missing. The stars' Teff, log g and vmic come next, then the classical
method (:mod:`fehkit.physics.joint`): the joint-likelihood [Fe/H] of all lines, its error, its significance, its
3-sigma upper limit, the part of the error that comes from Teff, log g and vmic errors, and the per-line median.
The curve of growth already knows how EW grows with [Fe/H] at a given Teff; the regressors learn what it misses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fehkit.arrays import LazyTable, numbers, per_grid
from fehkit.display import html_summary, text_summary
from fehkit.errors import FehkitError, FehkitWarning, InputTableError
from fehkit.ew import FLAGS, EWTable
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.joint import _joint, _parameter_shifts, _per_line_median, _physics_systematic

#: Typical 1-sigma errors of survey Teff, log g and vmic, used when the parameter table has no error columns.
DEFAULT_PARAM_ERRORS: dict[str, float] = {"teff": 100.0, "logg": 0.2, "vmic": 0.2}

#: Teff, log g and vmic that no star has: (low, high, whether low itself is allowed); a table outside is refused.
PARAM_LIMITS: dict[str, tuple[float, float, bool]] = {"teff": (0.0, 10000.0, False), "logg": (-1.0, 6.0, True),
                                                      "vmic": (0.0, np.inf, False)}

#: Line states of the ``state_*`` features.
STATE_DETECTED, STATE_UPPER, STATE_BLEND = 0.0, 1.0, 2.0

#: Per-star columns (from the classical method) that become features, in this order.
STAR_FEATURES = ("feh_cog", "feh_cog_err", "feh_cog_upper", "cog_signal_sigma", "feh_cog_err_param", "dfeh_teff",
                 "dfeh_logg", "dfeh_vmic", "feh_cog_median", "cog_n_lines", "cog_median_n_lines")


class FeatureError(FehkitError, ValueError):
    """The EW table, parameters or feature matrix do not fit together."""


@dataclass
class Features:
    """The feature matrix and what went into it.

    Attributes
    ----------
    X : (n_stars, n_features) float32
        Feature values; NaN where a value does not exist (a masked line).
    names : list of str
        Feature names, one per column of ``X``.
    stars : pandas.DataFrame
        One row per star: ``star_id``, the parameters used, ``snr`` if known, and the classical method's results
        (:data:`fehkit.physics.joint.JOINT_COLUMNS`, ``feh_cog_err_param``, the per-line median), ``n_lines``,
        ``cog_clipped`` (``""`` or what the curve of growth clipped to its edge, e.g. ``"teff 3677 -> 3900"``) and
        ``cog_filled`` (the star's parameters and [Fe/H] lean on filled, extrapolated grid nodes). Given as a
        mapping of equal-length arrays, the table is built when first asked for (:meth:`star_columns` reads the
        arrays without it: for one spectrum, building the table costs ~0.5 ms, a good part of a request's time).
    info : dict
        How the features were made (``log_ew``, ``include_params``, the line wavelengths).
    ew : EWTable, optional
        The EW table the features came from.
    """

    X: np.ndarray
    names: list[str]
    stars: pd.DataFrame = LazyTable(("_stars", "_star_arrays"), lambda f: len(f.X),
                                    error=FeatureError)  # type: ignore[assignment]
    info: dict[str, Any] = field(default_factory=dict)
    ew: EWTable | None = None

    def star_columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the named columns of :attr:`stars` that exist, as arrays by name, without building the table.

        The arrays are the table's own (no copies): read them, do not change them.
        """
        return _STARS.columns(self, names)

    @property
    def mask(self) -> np.ndarray:
        """True where a feature value exists: (n_stars, n_features) bool."""
        return np.isfinite(self.X)

    def _facts(self) -> list[tuple[str, object]]:
        facts: list[tuple[str, object]] = [("stars", len(self.X)), ("features", len(self.names)),
                                           ("missing values", int((~self.mask).sum()))]
        if "cog_detected" in self.stars:
            detected = self.stars["cog_detected"].fillna(False).astype(bool)
            facts.append(("joint Fe signal >= 3 sigma", f"{int(detected.sum())} of {len(detected)}"))
        return facts

    def __repr__(self) -> str:
        return text_summary("Features", self._facts())

    def _repr_html_(self) -> str:
        return html_summary("Features: the ensemble's input", self._facts())

    def frame(self) -> pd.DataFrame:
        """Return the features as a DataFrame (columns = :attr:`names`)."""
        return pd.DataFrame(self.X, columns=self.names)

    def select(self, which: Any) -> Features:
        """Return the rows chosen by a boolean mask or integer indices."""
        idx = np.arange(len(self.X))[which]
        return Features(self.X[idx], list(self.names), _STARS.rows(self, idx), dict(self.info),
                        None if self.ew is None else self.ew.select(idx))

    def drop(self, names: Sequence[str]) -> Features:
        """Return the same features without the named columns."""
        keep = [i for i, n in enumerate(self.names) if n not in set(names)]
        stars = _STARS.source(self)
        stars = stars.copy() if isinstance(stars, pd.DataFrame) else dict(stars)
        return Features(self.X[:, keep], [self.names[i] for i in keep], stars, dict(self.info), self.ew)


#: The :attr:`Features.stars` field.
_STARS: LazyTable = Features.__dict__["stars"]


def build_features(
    ew: EWTable,
    params: pd.DataFrame | Mapping[str, Any],
    *,
    log_ew: bool = False,
    param_errors: Mapping[str, Any] | None = None,
    include_params: Sequence[str] = ("teff", "logg", "vmic"),
    snr: np.ndarray | None = None,
    cog: CurveOfGrowth | None = None,
    systematic: bool = True,
    device: str | None = None,
) -> Features:
    """Turn an EW table and stellar parameters into the regressors' feature matrix.

    Parameters
    ----------
    ew : EWTable
        Measured EWs (:func:`fehkit.ew.measure_ew`), n_stars x n_lines.
    params : DataFrame or mapping
        ``teff``, ``logg``, ``vmic`` (and optionally ``alpha_fe``, default +0.4, and ``teff_err``, ``logg_err``,
        ``vmic_err``), one row per star in the EW table's order.
    log_ew : bool
        Add ``log_ew_*`` = log10 EW of detected lines (log10 of the 3-sigma limit, with state 1, otherwise).
    param_errors : mapping, optional
        1-sigma errors of teff, logg, vmic when ``params`` has no ``*_err`` columns
        (default :data:`DEFAULT_PARAM_ERRORS`).
    include_params : sequence of str
        Which of teff, logg, vmic become features (an ablation drops some; the classical method still uses
        what ``params`` holds).
    snr : (n_stars,) array, optional
        The spectra's S/N; kept in :attr:`Features.stars` (not a feature).
    cog : CurveOfGrowth, optional
        The curve-of-growth grid (default: the packaged one).
    systematic : bool
        Also run the classical method with the second physics (the SME grid) and keep the code-to-code difference
        in :attr:`Features.stars` as ``feh_sys`` (dex; :func:`fehkit.physics.joint.physics_systematic`), with
        ``feh_sys_clipped`` naming what was clipped to the SME grid's domain. Not a feature.
    device : str, optional
        A torch device: run the classical method's likelihoods and inversions as tensor operations there (what
        :func:`fehkit.infer` does on a GPU; the same numbers to float rounding). Default: NumPy/numba on the CPU.

    Returns
    -------
    Features

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> from fehkit import normalize, measure_ew
    >>> sim = make_benchmark(3, seed=1)
    >>> p = sim.truth[["teff", "logg", "vmic"]]  # the true ones: a reference log g of 5.08 would be clipped to 5
    >>> f = build_features(measure_ew(normalize(sim.batch).batch, params=p), p)
    >>> f.X.shape[0], "feh_cog" in f.names
    (3, True)
    """
    p = _params(params, len(ew.star_id))  # the columns as arrays, each read once
    ids = np.asarray(ew.star_id).astype(str).astype(object)  # str objects, as a table column gives them back
    _check_limits(p, "stellar parameters", lambda i: f"star {ids[i]}")
    errors = {**DEFAULT_PARAM_ERRORS, **(param_errors or {})}
    perr = {k: p.get(f"{k}_err", np.full(len(ids), float(errors[k]))) for k in ("teff", "logg", "vmic")}
    cog = cog or CurveOfGrowth.load()
    waves = ew.lines["wave_vac"].to_numpy(float)
    lines = cog.line_index(waves)

    flag = np.asarray(ew.flag_code)
    value = np.asarray(ew.ew_mA, float)
    err = np.asarray(ew.ew_err_mA, float)
    measured = _flagged(flag, value, err, ("ok", "upper_limit", "blend_suspect"))
    clean = _flagged(flag, value, err, _JOINT_FLAGS)  # joint_usable(ew)

    given = {k: p[k] for k in ("teff", "logg", "vmic", "alpha_fe")}
    args = tuple(given.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FehkitWarning)
        # the columns as arrays: the per-star frame is built once, below
        joint = _joint(value, err, clean, *args, cog=cog, lines=lines, device=device)
        perr_feh, shifts = _parameter_shifts(value, err, clean, *args, errors=perr, cog=cog, lines=lines, base=joint,
                                             device=device)
        median = _per_line_median(value, err, clean, *args, cog=cog, lines=lines, device=device)
        sysd = _physics_systematic(value, err, clean, *args, reference=cog, lines=lines, base=joint,
                                   device=device) if systematic else None
        feh = np.asarray(joint["feh_cog"], float)
        has_feh = np.isfinite(feh)
        filled = cog.touches_filled(args[0], args[1], np.where(has_feh, feh, cog.feh[0]), args[2], args[3]) & has_feh
    if caught:
        warnings.warn(str(caught[0].message), FehkitWarning, stacklevel=2)

    # the per-star table, column by column, built once (assembling it frame by frame costs more than the search
    # itself for one star)
    per_star: dict[str, Any] = {"star_id": ids, **given}
    for k in ("teff", "logg", "vmic"):
        per_star[f"{k}_err"] = perr[k]
    if snr is not None:
        per_star["snr"] = np.asarray(snr, float)
    per_star.update(joint)
    per_star.update(median)
    per_star["feh_cog_err_param"] = perr_feh
    per_star["feh_cog_err_total"] = np.hypot(per_star["feh_cog_err"], perr_feh)
    per_star.update(shifts)
    per_star["n_lines"] = (flag == FLAGS.index("ok")).sum(axis=1)
    # where the classical method leaned on the grid: parameters clipped to its edge, filled (extrapolated) nodes
    per_star["cog_clipped"] = cog.clipped(*args)
    per_star["cog_filled"] = filled
    if sysd is not None:
        per_star.update({k: sysd[k] for k in ("feh_sys", "feh_sys_clipped")})
    state = np.where(flag == FLAGS.index("blend_suspect"), STATE_BLEND,
                     np.where(flag == FLAGS.index("ok"), STATE_DETECTED, STATE_UPPER))
    sigma = getattr(ew, "detection_sigma", 3.0)
    upper = np.maximum(value, 0.0) + sigma * err
    # each per-line feature for all lines at once, (n_stars, n_lines); a column per line below
    per_line = {"ew": np.where(measured, value, np.nan), "ew_err": np.where(measured, err, np.nan),
                "ew_sig": np.where(measured, value / np.where(measured, err, 1.0), np.nan),
                "ew_upper": np.where(measured, upper, np.nan), "state": np.where(measured, state, np.nan)}
    if log_ew:
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.where(state == STATE_UPPER, upper, value)
            per_line["log_ew"] = np.where(measured & (shown > 0), np.log10(shown), np.nan)
    # the columns line by line, each line's kinds together: ew_<wave>, ew_err_<wave>, ...
    kinds = tuple(k for k in ("ew", "ew_err", "ew_sig", "ew_upper", "state", "log_ew") if k in per_line)
    names = list(per_grid(_name_cache, (waves.tobytes(), kinds), waves,
                          lambda: tuple(f"{k}_{w:.2f}" for w in waves for k in kinds), keep=4))
    tail: dict[str, np.ndarray] = {}
    for k in include_params:
        if k not in ("teff", "logg", "vmic"):
            raise FeatureError(f"include_params: {k!r} is not a stellar parameter; expected teff, logg or vmic")
        tail[k] = np.asarray(per_star[k], float)
    for k in STAR_FEATURES:
        tail[k] = np.asarray(per_star[k], float)
    if len(set(names)) < len(names):
        raise FeatureError(f"EW table: two lines at one wavelength to 0.01 A ({waves.tolist()}); expected each "
                           "line once")
    n_line_cols = len(names)
    names += list(tail)
    X = np.empty((len(ids), len(names)), np.float32)
    X[:, :n_line_cols] = np.stack([per_line[k] for k in kinds], axis=2).reshape(len(ids), n_line_cols)
    for j, v in enumerate(tail.values(), start=n_line_cols):
        X[:, j] = v
    X[~np.isfinite(X)] = np.nan
    info = {"log_ew": log_ew, "include_params": list(include_params), "lines": waves.tolist()}
    return Features(X, names, per_star, info, ew)


#: The per-line feature names of the last few line lists (~150 formatted names: ~0.2 ms for one spectrum).
_name_cache: dict = {}


def joint_usable(ew: EWTable) -> np.ndarray:
    """Return the lines the classical joint likelihood uses: (n_stars, n_lines) bool.

    A measured EW (flag ok or upper_limit, finite, with a positive error); suspected blends are left out, because
    their EW carries a neighbour's absorption the curve of growth does not model.
    """
    return _flagged(np.asarray(ew.flag_code), np.asarray(ew.ew_mA, float), np.asarray(ew.ew_err_mA, float),
                    _JOINT_FLAGS)


#: The EW flags of the lines the joint likelihood uses.
_JOINT_FLAGS = ("ok", "upper_limit")


def _flagged(flag: np.ndarray, value: np.ndarray, err: np.ndarray, flags: Sequence[str]) -> np.ndarray:
    """Return the lines with one of ``flags``, a finite EW and a finite, positive error: (n_stars, n_lines) bool."""
    hit = np.zeros(flag.shape, bool)
    for name in flags:  # comparisons: np.isin's set-up costs more for one star
        hit |= flag == FLAGS.index(name)
    return hit & np.isfinite(value) & np.isfinite(err) & (err > 0)


def check_param_values(params: pd.DataFrame, where: str = "stellar parameters", *,
                       ids: Sequence[Any] | None = None) -> None:
    """Refuse Teff, log g and vmic that no star has (:data:`PARAM_LIMITS`) and two rows for one star.

    Teff <= 0 or > 10,000 K, log g outside -1..6 and vmic <= 0 raise :class:`~fehkit.errors.InputTableError`
    naming ``where``, the star (``ids``, else the table's ``star_id`` or ``file``, else the row), the column and the
    value; so does a star (``star_id``, else ``file``) with two rows, unless ``ids`` are given (a table of one row
    per spectrum, where two visits of one star are two rows). Missing values are left to the caller.

    Examples
    --------
    >>> try:
    ...     check_param_values(pd.DataFrame({"star_id": ["a"], "teff": [1e5], "logg": [-5.0], "vmic": [1.0]}))
    ... except InputTableError as err:
    ...     print(err)
    stellar parameters: star a has teff = 100000; expected 0 < teff <= 10000 K (no star has such a value)
    """
    p = params.reset_index(drop=True)
    key = next((k for k in ("star_id", "file") if k in p), None)
    names = [str(v) for v in (ids if ids is not None else p[key] if key else [f"row {i + 1}" for i in range(len(p))])]
    who = (lambda i: f"star {names[i]}") if (ids is not None or key) else (lambda i: names[i])
    _check_limits({col: numbers(p[col]) for col in PARAM_LIMITS if col in p}, where, who)
    if key and ids is None:
        dup = p[key].astype(str).duplicated(keep=False).to_numpy()
        if dup.any():
            first = str(p[key].astype(str)[dup].iloc[0])
            rows = [int(r) + 1 for r in np.flatnonzero(p[key].astype(str).to_numpy() == first)]
            raise InputTableError(f"{where}: {key} {first} has {len(rows)} rows (rows {', '.join(map(str, rows))}); "
                                  "expected one row per star")


def _check_limits(values: Mapping[str, np.ndarray], where: str, who: Callable[[int], str]) -> None:
    """:func:`check_param_values`' test of :data:`PARAM_LIMITS` on columns as arrays; ``who(i)`` names row i."""
    for col, (lo, hi, closed) in PARAM_LIMITS.items():
        if col not in values:
            continue
        v = values[col]
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(v) & ((v < lo) | (v > hi) | ((v == lo) & (not closed)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            unit = {"teff": " K", "vmic": " km/s"}.get(col, "")
            expect = f"{lo:g} {'<=' if closed else '<'} {col}" + (f" <= {hi:g}" if np.isfinite(hi) else "")
            more = f" ({int(bad.sum())} such values)" if bad.sum() > 1 else ""
            raise InputTableError(f"{where}: {who(i)} has {col} = {v[i]:g}{more}; expected {expect}{unit} (no star "
                                  "has such a value)")


def _params(params: pd.DataFrame | Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    """Return the stellar parameters as float arrays by name: teff, logg, vmic, alpha_fe (+0.4), the errors given.

    Each column is read once (a pandas column costs tens of us to reach, a good part of one star's features).
    """
    p = params if isinstance(params, pd.DataFrame) else {k: np.atleast_1d(v) for k, v in params.items()}
    missing = [k for k in ("teff", "logg", "vmic") if k not in p]
    if missing:
        raise FeatureError(f"stellar parameters: no column(s) {', '.join(missing)}; found {list(p)}; "
                           "expected teff, logg, vmic (and optionally alpha_fe, teff_err, logg_err, vmic_err)")
    rows = {len(p[k]) for k in p} if not isinstance(p, pd.DataFrame) else {len(p)}
    if rows != {n}:
        found = ", ".join(map(str, sorted(rows)))
        raise FeatureError(f"stellar parameters: {found} rows; expected one per spectrum of the EW table ({n})")
    out = {}
    for k in ("teff", "logg", "vmic"):
        out[k] = numbers(p[k])
        bad = ~np.isfinite(out[k])
        if bad.any():
            raise FeatureError(f"stellar parameters: column {k!r} has {int(bad.sum())} missing or non-numeric "
                               f"value(s) (first at row {int(np.flatnonzero(bad)[0])}); expected a number per star")
    out["alpha_fe"] = _floats(p["alpha_fe"]) if "alpha_fe" in p else np.full(n, 0.4)
    for k in ("teff_err", "logg_err", "vmic_err"):
        if k in p:
            out[k] = _floats(p[k])
    return out


def _floats(column: Any) -> np.ndarray:
    """Return a table column or an array as float64."""
    return column.to_numpy(dtype=float) if isinstance(column, pd.Series) else np.asarray(column, dtype=float)
