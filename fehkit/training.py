"""Train and apply the [Fe/H] ensemble on a user's spectra: ``fehkit train`` and ``fehkit predict``.

Spectra and stellar parameters become features in one place (:func:`spectra_features`: continuum, EWs, the
classical joint likelihood); :func:`train_model` fits :class:`~fehkit.models.FeHEnsemble` on a benchmark folder
(``fehkit simulate``) or on a table of real stars with reference labels, and saves it; :func:`predict_spectra`
applies a saved model. The synthetic benchmark run of ``fehkit demo`` lives in :mod:`fehkit.benchmark`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit.continuum import normalize
from fehkit.errors import FehkitWarning, InputTableError
from fehkit.ew import measure_ew
from fehkit.features import DEFAULT_PARAM_ERRORS, Features, build_features
from fehkit.io import read_apogee
from fehkit.models.ensemble import FeHEnsemble
from fehkit.spectra import SpectrumBatch, is_synthetic

#: Columns of ``fehkit predict``'s results table (docs/cli.md).
PREDICT_COLUMNS = ("star_id", "feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "n_lines",
                   "flag")


def spectra_features(
    batch: SpectrumBatch,
    params: pd.DataFrame,
    *,
    normalized: SpectrumBatch | None = None,
    log_ew: bool = False,
    backend: str = "numpy",
    device: str | None = None,
) -> Features:
    """Turn spectra into features: normalize, measure the EWs, add Teff, log g, vmic and the classical method.

    The one path from spectra to the ensemble's input, for training, prediction and the benchmark alike.

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra (``meta["snr"]`` is carried into the features when present).
    params : DataFrame
        One row per spectrum: ``teff``, ``logg``, ``vmic`` (and optionally ``alpha_fe`` and the errors
        ``teff_err``, ``logg_err``, ``vmic_err``): what the observer knows, e.g. :func:`reference_params`.
    normalized : SpectrumBatch, optional
        ``batch`` already continuum-normalized (skips that step).
    log_ew : bool
        Add ``log_ew_*`` columns.
    backend, device : str
        Array library and device of the EW fits (:func:`fehkit.ew.measure_ew`).
    """
    params = params.reset_index(drop=True)
    norm = normalized if normalized is not None else normalize(batch).batch
    snr = batch.meta["snr"].to_numpy(float) if "snr" in batch.meta else None
    # the EW stage and the classical method clip the same stars to the same grid edge: each warning once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FehkitWarning)
        ew = measure_ew(norm, params=params[["teff", "logg", "vmic"]], backend=backend, device=device, mc_draws=0)
        feats = build_features(ew, params, log_ew=log_ew, snr=snr)
    seen: set[tuple[type, str]] = set()
    for w in caught:
        if (w.category, str(w.message)) not in seen:
            seen.add((w.category, str(w.message)))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return feats


def reference_params(truth: pd.DataFrame) -> pd.DataFrame:
    """teff, logg, vmic, alpha_fe and their errors from a benchmark's reference-label columns."""
    out = pd.DataFrame({k: truth[f"{k}_ref"].to_numpy(float) for k in ("teff", "logg", "vmic")})
    out["alpha_fe"] = 0.4  # the halo's alpha enhancement: an observer would not know each star's value
    for k in ("teff", "logg", "vmic"):
        col = f"{k}_ref_err"
        out[f"{k}_err"] = truth[col].to_numpy(float) if col in truth else DEFAULT_PARAM_ERRORS[k]
    return out


def read_training_data(path: str | os.PathLike[str], *,
                       need_train: bool = True) -> tuple[SpectrumBatch, pd.DataFrame, pd.DataFrame, bool]:
    """Spectra, stellar parameters and labels for ``fehkit train --data``.

    ``path`` is a benchmark folder (``truth.csv`` + apStar files, as ``fehkit simulate`` writes) or a table
    (CSV/Parquet) of real stars with columns ``file, feh_ref, feh_ref_err, teff, logg, vmic`` (files relative to
    the table's folder). Returns ``(batch, params, labels, synthetic)``; ``labels`` has ``feh_ref``,
    ``feh_ref_err`` and ``split`` (train/val/test; a table's stars are all "train"). Every problem of the table
    (unreadable, a missing column, a value that is not a number, an unknown split, no training star when
    ``need_train``) is an :class:`~fehkit.errors.InputTableError` raised before any spectrum is read.
    """
    path = Path(path)
    if path.is_dir():
        table_path = path / "truth.csv"
        if not table_path.is_file():
            raise InputTableError(f"{path}: no truth.csv; expected a benchmark folder written by fehkit simulate")
        table = _read_table(table_path, "the benchmark's truth table")
        root = path
        for col in ("file", "teff_ref", "logg_ref", "vmic_ref", "feh_ref"):
            if col not in table:
                raise InputTableError(f"{table_path}: no column {col!r}; expected the columns of fehkit simulate's "
                                      "truth.csv (file, reference labels teff_ref, logg_ref, vmic_ref, feh_ref)")
        for col in ("teff_ref", "logg_ref", "vmic_ref", "feh_ref"):
            table[col] = _numeric(table, col, table_path)
        params = reference_params(table)
        labels = pd.DataFrame({"feh_ref": table["feh_ref"], "feh_ref_err": table.get("feh_ref_err", 0.05),
                               "split": table.get("split", "train")})
        synthetic = bool(table.get("synthetic", pd.Series([True])).astype(bool).all())
    elif path.is_file():
        table = _read_table(path, "the training table")
        missing = [c for c in ("file", "feh_ref", "teff", "logg", "vmic") if c not in table]
        if missing:
            raise InputTableError(f"{path}: no column(s) {missing}; expected file, feh_ref, feh_ref_err, teff, logg, "
                                  "vmic (one row per star)")
        for col in ("feh_ref", "teff", "logg", "vmic"):
            table[col] = _numeric(table, col, path)
        for col in ("feh_ref_err", "alpha_fe", "teff_err", "logg_err", "vmic_err"):
            if col in table:
                table[col] = _numeric(table, col, path, missing_ok=True)
        root = path.parent
        params = table[[c for c in ("teff", "logg", "vmic", "alpha_fe", "teff_err", "logg_err", "vmic_err")
                        if c in table]].reset_index(drop=True)
        labels = pd.DataFrame({"feh_ref": table["feh_ref"], "feh_ref_err": table.get("feh_ref_err", np.nan),
                               "split": table.get("split", "train")})
        synthetic = False
    else:
        raise InputTableError(f"{path}: not found; expected a benchmark folder or a CSV/Parquet table")
    if len(table) == 0:
        raise InputTableError(f"{path}: no stars (the table has no rows); expected one row per star")
    split = labels["split"].astype(str)
    unknown = sorted(set(split) - {"train", "val", "test"})
    if unknown:
        raise InputTableError(f"{path}: split values {unknown[:5]}; expected train, val or test")
    if need_train and not (split == "train").any():
        raise InputTableError(f"{path}: no star with split 'train'; expected training stars")
    files = [root / f for f in table["file"].astype(str)]
    batch = read_apogee(files)
    synthetic = synthetic or is_synthetic(batch)
    return batch, params.reset_index(drop=True), labels.reset_index(drop=True), synthetic


def _read_table(path: Path, what: str) -> pd.DataFrame:
    try:
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, comment="#")
    except (OSError, ValueError, ImportError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InputTableError(f"{path}: cannot read {what} ({reason}); expected a CSV (or Parquet) table") from None


def _numeric(table: pd.DataFrame, col: str, path: Path, *, missing_ok: bool = False) -> pd.Series:
    """Column ``col`` as floats; an error naming the first row whose value is not a finite number."""
    values = pd.to_numeric(table[col], errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy()) & ~(missing_ok & table[col].isna().to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        who = f"file {table['file'].iloc[i]}" if "file" in table else f"row {i + 1}"
        raise InputTableError(f"{path}: column {col!r} has {int(bad.sum())} missing or non-numeric value(s) (first: "
                              f"{table[col].iloc[i]!r} for {who}); expected a finite number for every star")
    return values


def train_model(data: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
                ensemble: Mapping[str, Any] | None = None, search: Mapping[str, Any] | None = None,
                overwrite: bool = False, progress: bool = False) -> FeHEnsemble:
    """``fehkit train``: fit the ensemble on a benchmark folder or a table of real stars and save it.

    ``search`` is a bounded grid per member (:func:`fehkit.models.grid_search`), scored by cross-validation on
    the training stars; the best candidates become the members' settings and the model card records the scores.
    """
    batch, params, labels, synthetic = read_training_data(data)
    feats = spectra_features(batch, params)
    split = labels["split"].astype(str).to_numpy()
    tr, va = split == "train", split == "val"
    y = labels["feh_ref"].to_numpy(float)
    err = labels["feh_ref_err"].to_numpy(float)
    label_error = float(np.nanmedian(err[tr])) if np.isfinite(err[tr]).any() else 0.0
    kwargs = {"label_error": label_error, "seed": seed, "progress": progress, **(ensemble or {})}
    card: dict[str, Any] = {}
    if search:
        from fehkit.models.ensemble import grid_search

        fixed = {k: v for k, v in kwargs.items() if k not in ("members", "progress")}
        best, scores = grid_search(feats.select(tr), y[tr], search, **fixed)
        for member, params in best.items():
            kwargs[member] = {**kwargs.get(member, {}), **params}
        card["grid_search"] = {"grid": search, "best": best, "scores": scores.to_dict("records")}
    ens = FeHEnsemble(**kwargs).fit(feats.select(tr), y[tr], X_val=feats.select(va) if va.any() else None,
                                    y_val=y[va] if va.any() else None)
    ens.save(out, overwrite=overwrite, card={
        "synthetic": synthetic, "training_data": str(data), "n_train": int(tr.sum()),
        "training_set_sha256": training_hash(feats.select(tr).X, y[tr]), "label": "feh_ref", **card})
    return ens


def predict_spectra(ens: FeHEnsemble, batch: SpectrumBatch, params: pd.DataFrame) -> pd.DataFrame:
    """``fehkit predict``: the results table (:data:`PREDICT_COLUMNS`) of spectra with known Teff, log g, vmic.

    ``params`` has one row per spectrum of ``batch``, in its order, with finite ``teff``, ``logg`` and ``vmic``
    (:class:`~fehkit.errors.InputTableError` otherwise, before any work).
    """
    if len(params) != batch.n_spectra:
        raise InputTableError(f"params: {len(params)} rows for {batch.n_spectra} spectra; expected one row per "
                              "spectrum, in the batch's order")
    for col in ("teff", "logg", "vmic"):
        values = pd.to_numeric(params[col], errors="coerce").to_numpy(float) if col in params else None
        if values is None or not np.isfinite(values).all():
            which = "no column" if values is None else f"{int((~np.isfinite(values)).sum())} missing value(s) in"
            raise InputTableError(f"params: {which} {col!r}; expected finite teff, logg and vmic for every spectrum")
    feats = spectra_features(batch, params)
    pred = ens.predict(feats)
    pred.insert(0, "star_id", feats.stars["star_id"].to_numpy())
    pred["n_lines"] = feats.stars["n_lines"].to_numpy()
    return pred[list(PREDICT_COLUMNS)]


def training_hash(X: np.ndarray, y: Any) -> str:
    """SHA-256 of the training features and labels (float32 bytes): which data a model was fitted to."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(X, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.float32)).tobytes())
    return h.hexdigest()
