"""Train and apply the [Fe/H] ensemble on a user's spectra: ``fehkit train`` and ``fehkit predict``.

Spectra and stellar parameters become features in one place (:func:`spectra_features`: continuum, EWs, the
classical joint likelihood); :func:`train_model` fits :class:`~fehkit.models.FeHEnsemble` on a benchmark folder
(``fehkit simulate``) or on a table of real stars with reference labels, and saves it; :func:`predict_spectra`
applies a saved model. :func:`validate_table` (``fehkit validate``: k-fold out-of-sample predictions of every star
of a labelled table), :func:`evaluate_table` (a trained model on a labelled table) and ``train_model(holdout=...)``
score against the table's reference labels ``feh_ref`` and the other surveys' [Fe/H] it carries. The synthetic
benchmark run of ``fehkit demo`` lives in :mod:`fehkit.benchmark`.
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
from fehkit.features import DEFAULT_PARAM_ERRORS, Features, build_features, check_param_values
from fehkit.io import read_apogee
from fehkit.models.ensemble import FeHEnsemble
from fehkit.spectra import SpectrumBatch, is_synthetic

#: Columns of ``fehkit predict``'s results table (docs/cli.md).
PREDICT_COLUMNS = ("star_id", "feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "feh_sys",
                   "n_lines", "flag", "flag_reason")


def spectra_features(
    batch: SpectrumBatch,
    params: pd.DataFrame | Mapping[str, np.ndarray],
    *,
    normalized: SpectrumBatch | None = None,
    log_ew: bool = False,
    backend: str = "numpy",
    device: str | None = None,
    float64: bool = False,
) -> Features:
    """Turn spectra into features: normalize, measure the EWs, add Teff, log g, vmic and the classical method.

    The one path from spectra to the ensemble's input, for training, prediction and the benchmark alike.

    Parameters
    ----------
    batch : SpectrumBatch
        The spectra (``meta["snr"]`` is carried into the features when present).
    params : DataFrame or mapping of arrays
        One row per spectrum: ``teff``, ``logg``, ``vmic`` (and optionally ``alpha_fe`` and the errors
        ``teff_err``, ``logg_err``, ``vmic_err``): what the observer knows, e.g. :func:`reference_params`.
    normalized : SpectrumBatch, optional
        ``batch`` already continuum-normalized (skips that step).
    log_ew : bool
        Add ``log_ew_*`` columns.
    backend, device : str
        Array library and device of every stage: ``"numpy"`` (with the compiled kernels where numba imports) on the
        CPU, or ``"torch"`` on ``device`` (default CUDA when available): the continuum fit, the EW fits
        (:func:`fehkit.ew.measure_ew`) and the classical method's likelihoods as tensor operations there.
    float64 : bool
        EW fits in float64 throughout (:func:`fehkit.ew.measure_ew`).
    """
    if isinstance(params, pd.DataFrame):
        params = params.reset_index(drop=True)
    on = None
    if backend == "torch":
        import torch

        on = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    norm = normalized if normalized is not None else normalize(batch, device=on).batch
    snr = batch.meta_columns(["snr"]).get("snr")
    snr = None if snr is None else np.asarray(snr, float)
    # the EW stage and the classical method clip the same stars to the same grid edge: each warning once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FehkitWarning)
        # the three columns the EW stage takes, as arrays (params[[...]] costs ~0.7 ms with pandas 3)
        ew_params = {k: np.asarray(params[k]) for k in ("teff", "logg", "vmic")}
        ew = measure_ew(norm, params=ew_params, backend=backend, device=device, mc_draws=0, float64=float64)
        feats = build_features(ew, params, log_ew=log_ew, snr=snr, device=on)
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
        check_param_values(params.assign(file=table["file"].to_numpy()), str(table_path))
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
        check_param_values(table[[c for c in ("star_id", "file", "teff", "logg", "vmic") if c in table]], str(path))
        params = table[[c for c in ("teff", "logg", "vmic", "alpha_fe", "teff_err", "logg_err", "vmic_err")
                        if c in table]].reset_index(drop=True)
        labels = pd.DataFrame({"feh_ref": table["feh_ref"], "feh_ref_err": table.get("feh_ref_err", np.nan),
                               "split": table.get("split", "train")})
        synthetic = is_synthetic(table)  # a stand-in table built from simulated spectra says so itself
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
                overwrite: bool = False, progress: bool = False, holdout: float = 0.0) -> FeHEnsemble:
    """``fehkit train``: fit the ensemble on a benchmark folder or a table of real stars and save it.

    ``search`` is a bounded grid per member (:func:`fehkit.models.grid_search`), scored by cross-validation on
    the training stars; the best candidates become the members' settings and the model card records the scores.
    ``holdout`` (0 to 1) keeps that fraction of the training stars out of training, stratified in [Fe/H]
    (:func:`holdout_mask`); the trained model is scored on them against ``feh_ref`` and the model card records
    the metrics and the held-out stars' predictions (``holdout``); ``ens.holdout_`` is the
    :class:`TableEvaluation`.
    """
    if not 0 <= holdout < 1:
        raise InputTableError(f"holdout={holdout!r}: expected a fraction of the stars, 0 <= holdout < 1")
    batch, params, labels, synthetic = read_training_data(data)
    split = labels["split"].astype(str).to_numpy()
    tr, va = split == "train", split == "val"
    y = labels["feh_ref"].to_numpy(float)
    ho = np.zeros(len(y), bool)
    if holdout:
        ho[tr] = holdout_mask(y[tr], holdout, seed)
        if not ho.any() or (tr & ~ho).sum() < 2:
            raise InputTableError(f"{data}: {int(tr.sum())} training stars cannot keep {holdout:g} of them out; "
                                  "expected at least one held-out star and two training stars")
        tr = tr & ~ho
    feats = spectra_features(batch, params)
    err = labels["feh_ref_err"].to_numpy(float)
    kwargs = _ensemble_settings(err[tr], seed, progress, ensemble)
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
    if ho.any():
        rows = np.flatnonzero(ho)
        pred = _labelled_predictions(predict_features(ens, feats.select(ho)), data, batch, params, labels,
                                     synthetic, rows=rows)
        ens.holdout_ = TableEvaluation(pred, table_metrics(pred, synthetic=synthetic), synthetic)
        card["holdout"] = _holdout_card(ens.holdout_, holdout, seed)
    ens.save(out, overwrite=overwrite, card={
        "synthetic": synthetic, "training_data": str(data), "n_train": int(tr.sum()),
        "training_set_sha256": training_hash(feats.select(tr).X, y[tr]), "label": "feh_ref", **card})
    return ens


def predict_spectra(ens: FeHEnsemble, batch: SpectrumBatch, params: pd.DataFrame, *,
                    member_predictor: Any = None, backend: str = "numpy", device: str | None = None,
                    float64: bool = False) -> pd.DataFrame:
    """``fehkit predict``: the results table (:data:`PREDICT_COLUMNS`) of spectra with known Teff, log g, vmic.

    ``params`` has one row per spectrum of ``batch``, in its order, with finite ``teff``, ``logg`` and ``vmic``
    that a star can have (:func:`fehkit.features.check_param_values`; :class:`~fehkit.errors.InputTableError`
    otherwise, before any work). ``flag`` and ``flag_reason`` say where the [Fe/H] is not to be trusted
    (:mod:`fehkit.flags`). ``member_predictor``, ``backend``, ``device`` and ``float64`` are how
    :func:`fehkit.infer.infer` runs the members and the other stages on its device (see
    :meth:`FeHEnsemble.predict` and :func:`spectra_features`).
    """
    if len(params) != batch.n_spectra:
        raise InputTableError(f"params: {len(params)} rows for {batch.n_spectra} spectra; expected one row per "
                              "spectrum, in the batch's order")
    for col in ("teff", "logg", "vmic"):
        values = pd.to_numeric(params[col], errors="coerce").to_numpy(float) if col in params else None
        if values is None or not np.isfinite(values).all():
            which = "no column" if values is None else f"{int((~np.isfinite(values)).sum())} missing value(s) in"
            raise InputTableError(f"params: {which} {col!r}; expected finite teff, logg and vmic for every spectrum")
    ids = batch.meta["star_id"].astype(str).to_numpy() if "star_id" in batch.meta else None
    check_param_values(params.reset_index(drop=True), "params", ids=ids)
    return predict_features(ens, spectra_features(batch, params, backend=backend, device=device, float64=float64),
                            member_predictor=member_predictor)


def predict_features(ens: FeHEnsemble, feats: Features, *, member_predictor: Any = None) -> pd.DataFrame:
    """Return the results table (:data:`PREDICT_COLUMNS`) of stars whose features are already measured.

    The ensemble's predictions with the star ids, the code-to-code systematic ``feh_sys`` and ``n_lines`` from
    the features' per-star table; what :func:`predict_spectra` returns after measuring the spectra.
    """
    return pd.DataFrame(prediction_columns(ens, feats, member_predictor=member_predictor), copy=False)


def prediction_columns(ens: FeHEnsemble, feats: Features, *, member_predictor: Any = None) -> dict[str, np.ndarray]:
    """:func:`predict_features`'s columns as arrays, by name, in its order (what a caller that wants no table uses)."""
    cols = ens._prediction_columns(feats, member_predictor=member_predictor)
    if cols is None:  # no stars: predict's empty columns
        cols = {c: v.to_numpy() for c, v in ens.predict(feats).items()}
    stars = feats.star_columns(("star_id", "feh_sys", "n_lines"))
    # copies: the results must not share memory with the features
    cols["star_id"] = np.array(stars["star_id"])
    cols["feh_sys"] = np.array(stars["feh_sys"]) if "feh_sys" in stars else np.full(len(feats.X), np.nan)
    cols["n_lines"] = np.array(stars["n_lines"])
    return {c: cols[c] for c in PREDICT_COLUMNS}


def training_hash(X: np.ndarray, y: Any) -> str:
    """SHA-256 of the training features and labels (float32 bytes): which data a model was fitted to."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(X, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.float32)).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# held-out evaluation on a labelled table: fehkit validate, fehkit evaluate --data TABLE, fehkit train --holdout
# ---------------------------------------------------------------------------------------------------------------
class TableEvaluation:
    """Out-of-sample predictions of a labelled table's stars and their metrics.

    Attributes
    ----------
    predictions : DataFrame
        One row per star, in the table's order: the columns of ``fehkit predict`` (:data:`PREDICT_COLUMNS`), then
        ``file``, the reference labels ``feh_ref`` and ``feh_ref_err``, the ``teff``, ``logg``, ``vmic`` used, ``snr``,
        ``fold`` (cross-validation only), the other surveys' [Fe/H] the table has
        (:data:`fehkit.evaluate.CROSS_SURVEY_COLUMNS`) and ``synthetic``.
    metrics : dict
        :func:`fehkit.evaluate.evaluate` against the reference labels (``truth``: "feh_ref (reference labels)"),
        plus ``cross_survey_real`` where the table has another survey's [Fe/H].
    synthetic : bool
        Whether the stars are simulated (the table's ``synthetic`` column or the files' ``SYNTHETI`` header).
    """

    def __init__(self, predictions: pd.DataFrame, metrics: dict, synthetic: bool) -> None:
        self.predictions, self.metrics, self.synthetic = predictions, metrics, synthetic

    def __repr__(self) -> str:
        e = self.metrics.get("models", {}).get("ensemble", {})
        what = "SYNTHETIC " if self.synthetic else ""
        if not e.get("n"):
            return f"TableEvaluation: {what}{len(self.predictions)} stars, no headline star"
        return (f"TableEvaluation: {what}{len(self.predictions)} stars, headline {e['n']}: MAE {e['mae']:.4f}, "
                f"bias {e['bias']:+.4f}, scatter {e['scatter']:.4f} dex against feh_ref")


def stratified_folds(y: Any, folds: int, seed: int = 0) -> np.ndarray:
    """Return the fold number (0..folds-1) of each star, stratified in [Fe/H].

    Every run of ``folds`` stars in label order spreads over all folds, so each fold spans the whole [Fe/H] range.

    Examples
    --------
    >>> f = stratified_folds(np.linspace(-4, -1, 10), 5)
    >>> sorted(np.bincount(f).tolist()), sorted(f[:5].tolist())
    ([2, 2, 2, 2, 2], [0, 1, 2, 3, 4])
    """
    y = np.asarray(y, float)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(y)), y))  # ties in random order
    out = np.empty(len(y), int)
    for start in range(0, len(y), folds):
        block = order[start:start + folds]
        out[block] = rng.permutation(folds)[:len(block)]
    return out


def holdout_mask(y: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Mark a held-out ``fraction`` of the stars, evenly spread in [Fe/H] (stratified) with a random phase.

    Examples
    --------
    >>> m = holdout_mask(np.linspace(-4, -1, 20), 0.2)
    >>> int(m.sum())
    4
    """
    y = np.asarray(y, float)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(y)), y))
    rank = np.empty(len(y), float)
    rank[order] = np.arange(len(y))
    phase = rng.random()
    return np.floor((rank + 1) * fraction + phase) > np.floor(rank * fraction + phase)


def validate_table(table: str | os.PathLike[str], folds: int = 5, *, seed: int = 0,
                   ensemble: Mapping[str, Any] | None = None, progress: bool = False) -> TableEvaluation:
    """``fehkit validate``: k-fold cross-validated [Fe/H] of every star of a labelled table, and its metrics.

    The stars are split into ``folds`` folds stratified in ``feh_ref`` (:func:`stratified_folds`); each fold is
    predicted by an ensemble trained on the other folds only, so every star gets an out-of-sample prediction.
    ``table`` is what ``fehkit train --data`` reads (a table in the cross-match layout,
    :data:`fehkit.data.crossmatch.TRAINING_COLUMNS`, or a benchmark folder); its ``split`` is ignored.
    ``ensemble`` overrides :class:`~fehkit.models.FeHEnsemble`'s settings (e.g. ``{"n_folds": 3}``).
    """
    if int(folds) != folds or folds < 2:
        raise InputTableError(f"folds={folds!r}: expected a whole number >= 2")
    batch, params, labels, synthetic = read_training_data(table, need_train=False)
    n = len(labels)
    if n < 2 * folds:
        raise InputTableError(f"{table}: {n} stars for {folds} folds; expected at least {2 * folds} stars (two per "
                              "fold), or fewer folds")
    feats = spectra_features(batch, params)
    y = labels["feh_ref"].to_numpy(float)
    err = labels["feh_ref_err"].to_numpy(float)
    fold = stratified_folds(y, folds, seed)
    parts = []
    for k in range(folds):
        tr = fold != k
        ens = _fit_labels(feats.select(tr), y[tr], err[tr], seed=seed, ensemble=ensemble, progress=progress)
        part = predict_features(ens, feats.select(~tr))
        part.index = np.flatnonzero(~tr)
        parts.append(part)
    pred = pd.concat(parts).sort_index().reset_index(drop=True)
    pred["fold"] = fold
    out = _labelled_predictions(pred, table, batch, params, labels, synthetic)
    metrics = table_metrics(out, synthetic=synthetic)
    metrics["validation"] = {"folds": int(folds), "seed": int(seed), "stratified_in": "feh_ref",
                             "note": "every star predicted by an ensemble trained on the other folds only"}
    return TableEvaluation(out, metrics, synthetic)


def evaluate_table(model: FeHEnsemble | str | os.PathLike[str], table: str | os.PathLike[str]) -> TableEvaluation:
    """``fehkit evaluate --data TABLE``: a trained model on the stars of a labelled table, against ``feh_ref``.

    ``model`` is a fitted :class:`~fehkit.models.FeHEnsemble` or a model folder; ``table`` as for
    :func:`validate_table` (every star is predicted, whatever its ``split``).
    """
    batch, params, labels, synthetic = read_training_data(table, need_train=False)
    ens = model if isinstance(model, FeHEnsemble) else FeHEnsemble.load(model)
    pred = predict_spectra(ens, batch, params)
    out = _labelled_predictions(pred, table, batch, params, labels, synthetic)
    metrics = table_metrics(out, synthetic=synthetic, ensemble=ens)
    card = getattr(ens, "card_", {}) or {}
    trained_here = bool(card.get("training_data")) and Path(card["training_data"]).resolve() == Path(table).resolve()
    metrics["model"] = {"path": None if isinstance(model, FeHEnsemble) else str(model),
                        "synthetic": card.get("synthetic"), "training_data": card.get("training_data"),
                        "n_train": card.get("n_train"), "trained_on_this_table": trained_here}
    if trained_here:
        warnings.warn(f"{table}: the model was trained on this table, so these are in-sample predictions; for "
                      "held-out numbers use fehkit validate or fehkit train --holdout", FehkitWarning, stacklevel=2)
    return TableEvaluation(out, metrics, synthetic)


def table_metrics(pred: pd.DataFrame, *, synthetic: bool, ensemble: FeHEnsemble | None = None) -> dict:
    """:func:`fehkit.evaluate.evaluate` against the reference labels ``feh_ref``, plus ``cross_survey_real``."""
    from fehkit.evaluate import cross_survey_columns, cross_survey_real, evaluate

    metrics = evaluate(pred, ensemble=ensemble, synthetic=synthetic, truth_column="feh_ref")
    columns = list(cross_survey_columns(pred.columns))
    if columns:
        metrics["cross_survey_real"] = cross_survey_real(pred, columns)
    return metrics


def _fit_labels(feats: Features, y: np.ndarray, err: np.ndarray, *, seed: int,
                ensemble: Mapping[str, Any] | None, progress: bool) -> FeHEnsemble:
    return FeHEnsemble(**_ensemble_settings(err, seed, progress, ensemble)).fit(feats, y)


def _ensemble_settings(err: np.ndarray, seed: int, progress: bool,
                       ensemble: Mapping[str, Any] | None) -> dict[str, Any]:
    """FeHEnsemble keywords: the labels' median error (0 when none is given), the seed, then the overrides."""
    label_error = float(np.nanmedian(err)) if np.isfinite(err).any() else 0.0
    return {"label_error": label_error, "seed": seed, "progress": progress, **(ensemble or {})}


def _labelled_predictions(pred: pd.DataFrame, table: str | os.PathLike[str], batch: SpectrumBatch,
                          params: pd.DataFrame, labels: pd.DataFrame, synthetic: bool,
                          rows: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions + the table's labels, parameters, S/N and other surveys' [Fe/H] (rows ``rows`` of the table)."""
    from fehkit.evaluate import cross_survey_columns

    path = Path(table)
    source = _read_table(path / "truth.csv" if path.is_dir() else path, "the labelled table")
    idx = np.arange(len(source)) if rows is None else np.asarray(rows)
    source = source.iloc[idx].reset_index(drop=True)
    out = pd.DataFrame(pred).reset_index(drop=True)
    out["file"] = source["file"].astype(str).to_numpy()
    out["feh_ref"] = labels["feh_ref"].to_numpy(float)[idx]
    out["feh_ref_err"] = labels["feh_ref_err"].to_numpy(float)[idx]
    for col in ("teff", "logg", "vmic"):
        out[col] = params[col].to_numpy(float)[idx]
    snr = pd.to_numeric(source["snr"], errors="coerce").to_numpy(float) if "snr" in source else \
        np.full(len(idx), np.nan)
    if "snr" in batch.meta:  # the spectra's own S/N where the table has none
        snr = np.where(np.isfinite(snr), snr, batch.meta["snr"].to_numpy(float)[idx])
    out["snr"] = snr
    for canonical, col in cross_survey_columns(source.columns).items():
        out[canonical] = pd.to_numeric(source[col], errors="coerce").to_numpy(float)
    out["synthetic"] = bool(synthetic)
    return out


def _holdout_card(res: TableEvaluation, fraction: float, seed: int) -> dict:
    """Return the model card's ``holdout`` entry: the held-out stars' metrics and predictions."""
    m = res.metrics
    e = m.get("models", {}).get("ensemble", {})
    keep = [c for c in ("star_id", "file", "feh_ref", "feh_ref_err", "feh", "feh_err", "feh_upper", "feh_cog",
                        "flag", "snr") if c in res.predictions]
    return {"fraction": float(fraction), "seed": int(seed), "stratified_in": "feh_ref",
            "n": int(len(res.predictions)), "n_headline": m.get("n_headline"), "headline_subset": m.get(
                "headline_subset"), "truth": m.get("truth"), "mae": e.get("mae"), "bias": e.get("bias"),
            "scatter": e.get("scatter"), "r": e.get("r"), "coverage_68": m.get("coverage_68"),
            "n_upper_limits": m.get("n_upper_limits"), "cross_survey_real": m.get("cross_survey_real"),
            "predictions": res.predictions[keep].to_dict("records")}
