"""Cross-match APOGEE spectra with reference [Fe/H] on the sky, into a training table for ``fehkit train --data``.

Each spectrum row (from :func:`~fehkit.data.query_apogee`, ideally after :func:`~fehkit.data.fetch_spectra` so it
carries a local ``path``) is paired with the nearest reference star (from :func:`~fehkit.data.load_reference` or
:func:`~fehkit.data.query_galah`) within a radius, using astropy's ``match_coordinates_sky``; reference stars that
no spectrum lies near are dropped. A star observed from both hemispheres keeps both spectra, each its own row.
"""

from __future__ import annotations

from typing import Any, Literal

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord, match_coordinates_sky, search_around_sky

from fehkit.data.errors import CrossmatchError
from fehkit.data.fetch import _as_frame

#: The columns ``fehkit train --data TABLE`` reads, in order; the training table starts with them.
TRAINING_COLUMNS = ("file", "feh_ref", "feh_ref_err", "teff", "logg", "vmic")
#: Provenance columns that follow, where the inputs have them.
PROVENANCE_COLUMNS = (
    "apogee_id", "telescope", "field", "url", "snr", "ra", "dec", "ref_id", "ref_ra", "ref_dec", "sep_arcsec",
    "n_ref_within", "teff_source", "logg_source", "vmic_source", "ref_catalog", "ref_citation", "ref_licence",
    "apogee_source",
)


def crossmatch(
    a: pd.DataFrame | Any,
    b: pd.DataFrame | Any,
    radius: u.Quantity | float = 1.5 * u.arcsec,
    *,
    params: Literal["reference", "apogee"] = "reference",
) -> pd.DataFrame:
    """Pair each spectrum of ``a`` with the nearest reference star of ``b`` within ``radius``.

    Parameters
    ----------
    a : DataFrame or astropy Table
        Spectra: ra, dec (degrees) and file (or path, preferred: the local file after ``fetch_spectra``); the
        other query_apogee columns (apogee_id, telescope, field, snr, teff, logg, vmic, ...) are carried along.
    b : DataFrame or astropy Table
        References: ra, dec, feh_ref, and where known feh_ref_err, teff, logg, vmic, ref_id, ref_catalog, ...
    radius : Quantity or float
        Match radius (float: arcseconds).
    params : {"reference", "apogee"}
        Whose Teff, log g and vmic to prefer; the other fills what the preferred one lacks. The reference's come
        from the same analysis as its [Fe/H]; ASPCAP's are missing for many of the most metal-poor stars.

    Returns
    -------
    DataFrame
        :data:`TRAINING_COLUMNS`, then :data:`PROVENANCE_COLUMNS` present in the inputs: ``sep_arcsec`` (the
        separation), ``n_ref_within`` (reference rows within the radius: >1 means a crowded field or duplicate
        measurements of one star), ``*_source`` (whose parameter each row uses). One row per matched spectrum.

    Examples
    --------
    >>> spectra = pd.DataFrame({"file": ["apStar-dr17-A.fits"], "ra": [10.0], "dec": [-5.0], "teff": [4700.0],
    ...                         "logg": [1.2], "vmic": [1.9]})
    >>> refs = pd.DataFrame({"ref_id": ["HE 1"], "ra": [10.0002], "dec": [-5.0], "feh_ref": [-3.1],
    ...                      "feh_ref_err": [0.1], "teff": [4650.0], "logg": [1.0], "vmic": [np.nan]})
    >>> t = crossmatch(spectra, refs, radius=2.0)
    >>> print(t[["file", "feh_ref", "teff", "vmic", "vmic_source"]].to_string(index=False))
                  file  feh_ref   teff  vmic vmic_source
    apStar-dr17-A.fits     -3.1 4650.0   1.9      apogee
    """
    if params not in ("reference", "apogee"):
        raise CrossmatchError(f"params={params!r}: expected 'reference' or 'apogee'")
    A, B = _as_frame(a), _as_frame(b)
    radius = radius if isinstance(radius, u.Quantity) else radius * u.arcsec
    if not radius.unit.is_equivalent(u.deg) or radius <= 0 * u.arcsec:
        raise CrossmatchError(f"radius {radius}: expected a positive angle")
    _require(A, ("ra", "dec"), "a (spectra)")
    if "path" not in A and "file" not in A:
        raise CrossmatchError(f"a (spectra): no file or path column; found {', '.join(map(str, A.columns))}")
    _require(B, ("ra", "dec", "feh_ref"), "b (references; from load_reference or query_galah)")

    a_ok = _finite_positions(A)
    b_ok = _finite_positions(B) & np.isfinite(pd.to_numeric(B["feh_ref"], errors="coerce").to_numpy(float))
    ia_all, ib_all = np.flatnonzero(a_ok), np.flatnonzero(b_ok)
    out_columns = list(TRAINING_COLUMNS) + [c for c in PROVENANCE_COLUMNS if c in _provided(A, B)]
    if len(ia_all) == 0 or len(ib_all) == 0:
        return pd.DataFrame(columns=out_columns)

    ca = SkyCoord(A["ra"].to_numpy(float)[ia_all] * u.deg, A["dec"].to_numpy(float)[ia_all] * u.deg)
    cb = SkyCoord(B["ra"].to_numpy(float)[ib_all] * u.deg, B["dec"].to_numpy(float)[ib_all] * u.deg)
    if len(cb) == 1:  # match_coordinates_sky needs at least two catalog points
        nearest, sep = np.zeros(len(ca), int), ca.separation(cb[0])
    else:
        nearest, sep, _ = match_coordinates_sky(ca, cb)
    within = sep <= radius
    pair_a, _, _, _ = search_around_sky(ca, cb, radius)
    counts = np.bincount(pair_a, minlength=len(ca))

    ia, ib = ia_all[within], ib_all[np.asarray(nearest)[within]]
    sa, sb = A.iloc[ia].reset_index(drop=True), B.iloc[ib].reset_index(drop=True)
    out = pd.DataFrame(index=range(len(ia)))
    if "path" in sa:
        files = sa["path"].where(sa["path"].notna(), sa["file"] if "file" in sa else None)
    else:
        files = sa["file"]
    out["file"] = files.to_numpy()
    out["feh_ref"] = pd.to_numeric(sb["feh_ref"], errors="coerce").to_numpy(float)
    out["feh_ref_err"] = _num(sb, "feh_ref_err")
    first, second = (sb, sa) if params == "reference" else (sa, sb)
    first_name, second_name = ("reference", "apogee") if params == "reference" else ("apogee", "reference")
    for p in ("teff", "logg", "vmic"):
        x, y = _num(first, p), _num(second, p)
        out[p] = np.where(np.isfinite(x), x, y)
        out[f"{p}_source"] = np.where(np.isfinite(x), first_name, np.where(np.isfinite(y), second_name, ""))
    for c in ("apogee_id", "telescope", "field", "url", "snr", "ra", "dec", "apogee_source"):
        if c in sa:
            out[c] = sa[c].to_numpy()
    for c in ("ref_id", "ref_catalog", "ref_citation", "ref_licence"):
        if c in sb:
            out[c] = sb[c].to_numpy()
    out["ref_ra"] = sb["ra"].to_numpy(float)
    out["ref_dec"] = sb["dec"].to_numpy(float)
    out["sep_arcsec"] = np.round(sep[within].to_value(u.arcsec), 4)
    out["n_ref_within"] = counts[within]
    return out[[c for c in out_columns if c in out]]


def _require(frame: pd.DataFrame, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in frame]
    if missing:
        raise CrossmatchError(f"{what}: no {', '.join(missing)} column; found "
                              f"{', '.join(map(str, frame.columns)) or 'no columns'}")


def _finite_positions(frame: pd.DataFrame) -> np.ndarray:
    ra = pd.to_numeric(frame["ra"], errors="coerce").to_numpy(float)
    dec = pd.to_numeric(frame["dec"], errors="coerce").to_numpy(float)
    return np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)


def _num(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(float)


def _provided(A: pd.DataFrame, B: pd.DataFrame) -> set[str]:
    always = {"ref_ra", "ref_dec", "sep_arcsec", "n_ref_within", "teff_source", "logg_source", "vmic_source"}
    return always | {c for c in ("apogee_id", "telescope", "field", "url", "snr", "ra", "dec", "apogee_source")
                     if c in A} | {c for c in ("ref_id", "ref_catalog", "ref_citation", "ref_licence") if c in B}
