"""The training domain of an [Fe/H] model, and the quality flags of each prediction (:mod:`fehkit.flags`).

A model learnt from stars of some Teff, log g, vmic, [Fe/H] and S/N; outside them it extrapolates, and trees
extrapolate by repeating their edge. :func:`fit_domain` records, from the training stars,

* the range of each quantity: ``teff``, ``logg``, ``vmic`` (feature columns), ``feh`` (the labels) and ``snr``
  (when the features know the spectra's S/N), with a tolerance of about half a typical survey error
  (:data:`RANGE_TOLERANCE`: 50 K, 0.1 dex, 0.1 km/s, 0.1 dex; S/N 10% of the bound);
* a distance in feature space: the Mahalanobis distance of the standardized star-level features
  (:data:`DISTANCE_FEATURES`: Teff, log g, vmic, the classical [Fe/H] and log10 of its error), from scikit-learn's
  ``EmpiricalCovariance`` fitted on the stars the members learn from (a detected joint Fe signal), with a
  threshold at the 99th percentile of the training stars' own distances. Only numbers are kept (centre, scale,
  precision matrix, threshold): the model card stores them as JSON.

:func:`prediction_flags` turns that and the classical method's diagnostics (the features' ``stars`` table:
``cog_at_grid_edge``, ``cog_clipped``, ``cog_filled``) into each star's ``flag`` and ``flag_reason``:
``out_of_domain`` for a parameter outside its range (the distance check applies to detected stars only: an
upper limit's classical [Fe/H] sits at the bottom of the likelihood grid by construction), ``grid_edge``,
``grid_extrapolated``, ``upper_limit`` and ``no_usable_lines``. The classical [Fe/H] that starts each member's
residual is clipped to the training labels' range; for a detected star that clip is an ``out_of_domain`` reason,
for an upper limit part of the ``upper_limit`` reason: never silent.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fehkit.arrays import numbers, texts
from fehkit.errors import FehkitWarning
from fehkit.flags import FLAGS, SEP, join_columns

#: Quantities whose training range is recorded, and how far outside it a star may lie before it is flagged.
RANGE_TOLERANCE: dict[str, float] = {"teff": 50.0, "logg": 0.1, "vmic": 0.1, "feh": 0.1}
#: S/N tolerance, relative to the bound (a star at S/N 27 is inside a training range that starts at 30).
SNR_TOLERANCE = 0.1
#: Star-level features of the feature-space distance (those the features have), and which enter as log10.
DISTANCE_FEATURES = ("teff", "logg", "vmic", "feh_cog", "feh_cog_err")
LOG_FEATURES = ("feh_cog_err",)
#: Quantile of the training stars' distances above which a star is out of the domain.
DISTANCE_QUANTILE = 0.99
#: Smallest spread (standard deviation, dex) of training labels a model can learn [Fe/H] from.
MIN_LABEL_SPREAD = 0.05

_UNITS = {"teff": " K", "logg": "", "vmic": " km/s", "feh": "", "snr": ""}
_SHOWN = {"teff": "teff", "logg": "logg", "vmic": "vmic", "feh": "[Fe/H]", "snr": "S/N"}
_DIGITS = {"teff": 0, "logg": 2, "vmic": 2, "feh": 2, "snr": 0}


def fit_domain(Xa: np.ndarray, names: list[str], y: np.ndarray, snr: np.ndarray | None,
               learn: np.ndarray) -> dict[str, Any]:
    """Record the training domain: ranges of Teff, log g, vmic, [Fe/H] and S/N, and the feature-space distance.

    ``learn`` selects the stars the distance is fitted on (those the members learn from). Returns plain numbers
    (the model card's ``ensemble.domain``).
    """
    from sklearn.covariance import EmpiricalCovariance

    ranges: dict[str, list[float]] = {}
    for k in ("teff", "logg", "vmic"):
        if k in names:
            v = Xa[:, names.index(k)].astype(float)
            v = v[np.isfinite(v)]
            if v.size:
                ranges[k] = [float(v.min()), float(v.max())]
    ranges["feh"] = [float(np.min(y)), float(np.max(y))]
    if snr is not None:
        s = np.asarray(snr, float)
        s = s[np.isfinite(s)]
        if s.size:
            ranges["snr"] = [float(s.min()), float(s.max())]
    tolerance = {**{k: RANGE_TOLERANCE[k] for k in ranges if k in RANGE_TOLERANCE},
                 **({"snr_relative": SNR_TOLERANCE} if "snr" in ranges else {})}

    distance = None
    feats = [f for f in DISTANCE_FEATURES if f in names]
    if feats:
        Z = _distance_inputs(Xa[learn], names, feats)
        Z = Z[np.all(np.isfinite(Z), axis=1)]
        if len(Z) >= 2 * len(feats) + 2:
            center, scale = Z.mean(axis=0), Z.std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)
            cov = EmpiricalCovariance(assume_centered=True).fit((Z - center) / scale)
            d = _mahalanobis((Z - center) / scale, cov.precision_)
            distance = {"features": feats, "log10": [f for f in feats if f in LOG_FEATURES],
                        "center": center.tolist(), "scale": scale.tolist(),
                        "precision": cov.precision_.tolist(), "quantile": DISTANCE_QUANTILE,
                        "threshold": float(np.quantile(d, DISTANCE_QUANTILE)), "n": int(len(Z))}
    return {"ranges": ranges, "tolerance": tolerance, "distance": distance}


def check_domain(domain: Any) -> str | None:
    """Return what is wrong with a recorded domain (a model card's ``ensemble.domain``), or None."""
    if not isinstance(domain, dict) or not isinstance(domain.get("ranges"), dict):
        return "an object with ranges, tolerance and distance"
    for k, r in domain["ranges"].items():
        if k not in _UNITS or not (isinstance(r, list) and len(r) == 2 and all(_number(v) for v in r)
                                   and r[0] <= r[1]):
            return f"ranges.{k}: two finite numbers low <= high for a quantity out of {list(_UNITS)}"
    if "feh" not in domain["ranges"]:
        return "ranges with the training labels' [Fe/H] range 'feh'"
    tol = domain.get("tolerance")
    if not (isinstance(tol, dict) and all(_number(v) and v >= 0 for v in tol.values())):
        return "tolerance: an object of finite numbers >= 0"
    d = domain.get("distance")
    if d is None:
        return None
    if not isinstance(d, dict):
        return "distance: null or an object with features, center, scale, precision and threshold"
    feats = d.get("features")
    n = len(feats) if isinstance(feats, list) else 0
    if not (n and all(f in DISTANCE_FEATURES for f in feats) and isinstance(d.get("log10"), list)
            and set(d["log10"]) <= set(feats)):
        return f"distance.features: a non-empty list out of {list(DISTANCE_FEATURES)} (and log10 a subset)"
    if not (_vector(d.get("center"), n) and _vector(d.get("scale"), n) and all(v > 0 for v in d["scale"])):
        return f"distance.center and distance.scale: {n} finite numbers each (scale > 0)"
    p = d.get("precision")
    if not (isinstance(p, list) and len(p) == n and all(_vector(row, n) for row in p)):
        return f"distance.precision: a {n} x {n} matrix of finite numbers"
    if not (_number(d.get("threshold")) and d["threshold"] >= 0):
        return "distance.threshold: a finite number >= 0"
    return None


def feature_distance(domain: dict[str, Any], Xa: np.ndarray, names: list[str]) -> np.ndarray:
    """Mahalanobis distance of each star from the training stars (NaN where a feature is missing, or no distance)."""
    d = domain.get("distance")
    if not d:
        return np.full(len(Xa), np.nan)
    Z = _distance_inputs(Xa, names, d["features"])
    z = (Z - np.asarray(d["center"], float)) / np.asarray(d["scale"], float)
    out = _mahalanobis(np.nan_to_num(z), np.asarray(d["precision"], float))
    return np.where(np.all(np.isfinite(Z), axis=1), out, np.nan)


#: The columns of the features' per-star table that :func:`prediction_flags` reads.
STAR_INPUTS = ("teff", "logg", "vmic", "alpha_fe", "snr", "cog_at_grid_edge", "cog_clipped", "cog_filled")


def prediction_flags(domain: dict[str, Any], Xa: np.ndarray, names: list[str],
                     stars: pd.DataFrame | Mapping[str, np.ndarray] | None, *,
                     feh: np.ndarray, feh_cog: np.ndarray, signal: np.ndarray, detected: np.ndarray,
                     no_usable: np.ndarray, detection_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Each star's ``flag`` and ``flag_reason`` (:mod:`fehkit.flags`).

    ``stars`` is the features' per-star table (:class:`fehkit.features.Features`), or its :data:`STAR_INPUTS`
    columns as arrays by name; without it (a plain array), Teff, log g and vmic come from the feature columns and
    the grid checks use the packaged curve of growth.
    """
    n = len(Xa)
    # the reasons of the stars a flag applies to, by flag and star (most stars have none)
    reasons: dict[str, defaultdict[int, list[str]]] = {k: defaultdict(list) for k in FLAGS}
    for i in np.flatnonzero(no_usable):
        reasons["no_usable_lines"][i].append("no line usable for the joint likelihood (no measurement, no limit)")
    feh_lo, feh_hi = domain["ranges"]["feh"]
    for i in np.flatnonzero(~detected & ~no_usable):
        inside = not np.isfinite(feh_cog[i]) or feh_lo <= feh_cog[i] <= feh_hi
        clip = "" if inside else (f" (the classical [Fe/H] {_fmt(feh_cog[i], 2)} that feh starts from is clipped to "
                                  f"the training range {_range('feh', feh_lo, feh_hi)})")
        reasons["upper_limit"][i].append(f"joint Fe signal {_fmt(signal[i], 1)} sigma below {detection_sigma:g} "
                                         f"sigma: feh_upper is the 3-sigma upper limit{clip}")

    ranges, tol = domain.get("ranges", {}), domain.get("tolerance", {})
    values = _quantities(Xa, names, stars)
    for k in ("teff", "logg", "vmic", "snr"):
        if k not in ranges or k not in values:
            continue
        lo, hi = ranges[k]
        if k == "snr":
            low, high = lo * (1 - tol.get("snr_relative", 0.0)), hi * (1 + tol.get("snr_relative", 0.0))
        else:
            low, high = lo - tol.get(k, 0.0), hi + tol.get(k, 0.0)
        v = values[k]
        for i in np.flatnonzero(np.isfinite(v) & ((v < low) | (v > high))):
            reasons["out_of_domain"][i].append(f"{_SHOWN[k]} {_fmt(v[i], _DIGITS[k])}{_UNITS[k]} outside the "
                                               f"training range {_range(k, lo, hi)}")
    for i in np.flatnonzero(detected & np.isfinite(feh_cog) & ((feh_cog < feh_lo) | (feh_cog > feh_hi))):
        reasons["out_of_domain"][i].append(f"classical [Fe/H] {_fmt(feh_cog[i], 2)} clipped to the training range "
                                           f"{_range('feh', feh_lo, feh_hi)}")
    t = tol.get("feh", 0.0)
    for i in np.flatnonzero(detected & np.isfinite(feh) & ((feh < feh_lo - t) | (feh > feh_hi + t))):
        reasons["out_of_domain"][i].append(f"[Fe/H] {_fmt(feh[i], 2)} outside the training range "
                                           f"{_range('feh', feh_lo, feh_hi)}")
    dist = domain.get("distance")
    if dist:
        d = feature_distance(domain, Xa, names)
        for i in np.flatnonzero(detected & np.isfinite(d) & (d > dist["threshold"])):
            reasons["out_of_domain"][i].append(
                f"feature-space distance {_fmt(d[i], 1)} from the training stars above {_fmt(dist['threshold'], 1)} "
                f"(their {dist['quantile']:.0%} quantile)")

    at_edge, clipped, filled = _grid_columns(values, stars, feh_cog)
    for i in np.flatnonzero(at_edge):
        reasons["grid_edge"][i].append(f"the joint likelihood peaked at the grid edge [Fe/H] = {_fmt(feh_cog[i], 1)}")
    for i in np.flatnonzero(clipped != ""):
        reasons["grid_edge"][i].append(f"{clipped[i]} (clipped to the curve-of-growth grid)")
    for i in np.flatnonzero(filled):
        reasons["grid_extrapolated"][i].append("the curve of growth at the star's parameters leans on filled "
                                               "(extrapolated) grid nodes")

    flag = join_columns({k: np.isin(np.arange(n), list(v)) for k, v in reasons.items()}, n)
    reason = np.full(n, "", dtype=object)
    for i in sorted(set().union(*reasons.values())):
        reason[i] = f"{SEP} ".join(r for k in FLAGS for r in reasons[k].get(i, ()))
    return flag, reason


# ---- helpers -----------------------------------------------------------------------------------------------------
def _quantities(Xa: np.ndarray, names: list[str],
                stars: pd.DataFrame | Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Teff, log g, vmic, alpha and S/N of each star: from the stars table, else from the feature columns."""
    out: dict[str, np.ndarray] = {}
    for k in ("teff", "logg", "vmic", "alpha_fe", "snr"):
        if stars is not None and k in stars:
            out[k] = numbers(stars[k])
        elif k in names:
            out[k] = Xa[:, names.index(k)].astype(float)
    return out


def _grid_columns(values: dict[str, np.ndarray], stars: pd.DataFrame | Mapping[str, np.ndarray] | None,
                  feh_cog: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per star: the joint likelihood at the grid's top, what was clipped to the grid, whether filled nodes count."""
    n = len(feh_cog)
    if stars is not None and {"cog_at_grid_edge", "cog_clipped", "cog_filled"} <= set(stars):
        return _bools(stars["cog_at_grid_edge"]), texts(stars["cog_clipped"]), _bools(stars["cog_filled"])
    from fehkit.physics.cog import CurveOfGrowth
    from fehkit.physics.joint import FEH_GRID

    at_edge = np.isfinite(feh_cog) & (feh_cog >= FEH_GRID[-1] - 0.5 * (FEH_GRID[1] - FEH_GRID[0]) - 1e-6)
    if not {"teff", "logg", "vmic"} <= set(values):
        return at_edge, np.full(n, "", dtype=object), np.zeros(n, bool)
    cog = CurveOfGrowth.load()
    args = (values["teff"], values["logg"], values["vmic"], values.get("alpha_fe", np.full(n, 0.4)))
    ok = np.all(np.isfinite(np.column_stack(args)), axis=1) if n else np.zeros(0, bool)
    clipped = np.full(n, "", dtype=object)
    filled = np.zeros(n, bool)
    if ok.any():
        sub = [a[ok] for a in args]
        clipped[ok] = cog.clipped(*sub)
        fin = np.isfinite(feh_cog[ok])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FehkitWarning)  # the clip is reported as grid_edge
            touch = cog.touches_filled(sub[0], sub[1], np.where(fin, feh_cog[ok], cog.feh[0]), sub[2], sub[3])
        filled[ok] = touch & fin
    return at_edge, clipped, filled


def _bools(col: pd.Series | np.ndarray) -> np.ndarray:
    """Return a column of flags as bools, missing ones False."""
    if col.dtype.kind == "b":
        return np.asarray(col, bool)
    return pd.Series(col).fillna(False).to_numpy(bool)


def _distance_inputs(Xa: np.ndarray, names: list[str], feats: list[str]) -> np.ndarray:
    cols = []
    for f in feats:
        v = Xa[:, names.index(f)].astype(float) if f in names else np.full(len(Xa), np.nan)
        if f in LOG_FEATURES:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        cols.append(v)
    return np.column_stack(cols) if cols else np.empty((len(Xa), 0))


def _mahalanobis(z: np.ndarray, precision: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, precision, z), 0.0))


def _range(k: str, lo: float, hi: float) -> str:
    return f"{_fmt(lo, _DIGITS[k])}..{_fmt(hi, _DIGITS[k])}{_UNITS[k]}"


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))


def _vector(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_number(x) for x in v)
