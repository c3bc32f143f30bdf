"""The ensemble: random forest, XGBoost and an MLP fused by inverse out-of-fold variance, with calibrated errors.

Each member learns [Fe/H] from the features (:mod:`fehkit.features`). By default it learns the *residual* of the
classical joint-likelihood abundance (``target="residual"``): the curve of growth already maps EWs to [Fe/H] at
a given Teff, so the trees and the network only learn what it misses (blends, grid and continuum systematics), and
trees no longer have to build a 3.5 dex staircase out of leaves. Five-fold cross-validation on the training set
gives each member's out-of-fold (OOF) predictions; their mean squared error sigma_i^2 on stars with a detected
joint Fe signal gives the weights w_i = (1/sigma_i^2) / sum_j (1/sigma_j^2). The per-star error comes from the
same OOF residuals: feh_err^2 = a^2 (sigma_cog^2 + sigma_param^2) + b^2, with the classical method's statistical
and stellar-parameter errors and (a, b) fitted by maximum likelihood, so that it is calibrated on data the members
never trained on -- never on the test set. Stars whose joint Fe signal is below 3 sigma keep flag ``upper_limit``
and the classical 3-sigma upper limit (``feh_upper``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.model_selection import ParameterGrid, StratifiedKFold

from fehkit.errors import FehkitError
from fehkit.models.boosting import XGB_DEFAULTS, make_boosting
from fehkit.models.forest import RF_DEFAULTS, make_forest
from fehkit.models.mlp import DNN_DEFAULTS, MLPRegressor

#: Member names, in the order of the prediction columns ``feh_rf``, ``feh_xgb``, ``feh_dnn``.
MEMBERS = ("rf", "xgb", "dnn")

#: Columns the ensemble reads from the features by name (see :mod:`fehkit.features`).
BASE_FEATURE, ERR_FEATURE, PARAM_ERR_FEATURE = "feh_cog", "feh_cog_err", "feh_cog_err_param"
SIGNAL_FEATURE, UPPER_FEATURE, N_LINES_FEATURE = "cog_signal_sigma", "feh_cog_upper", "cog_n_lines"

#: Largest number of hyperparameter combinations :func:`grid_search` tries per member.
MAX_GRID_CANDIDATES = 16


class EnsembleError(FehkitError, ValueError):
    """The ensemble got features or labels it cannot use."""


class FeHEnsemble:
    """[Fe/H] from EW features by a random forest, XGBoost and a torch MLP fused by inverse OOF variance.

    Parameters
    ----------
    rf, xgb, dnn : mapping, optional
        Overrides of the members' defaults (:data:`~fehkit.models.forest.RF_DEFAULTS`,
        :data:`~fehkit.models.boosting.XGB_DEFAULTS`, :data:`~fehkit.models.mlp.DNN_DEFAULTS`).
    members : sequence of str
        Which members to use (any of ``"rf"``, ``"xgb"``, ``"dnn"``).
    n_folds : int
        Cross-validation folds for the OOF variances (default 5).
    target : {"residual", "feh"}
        Learn [Fe/H] minus the classical joint-likelihood [Fe/H] (default), or [Fe/H] itself.
    train_on : {"detected", "all"}
        Train the members on stars whose joint Fe signal is detected (default) or on all. An undetected star's
        spectrum holds only an upper limit; as a training target its [Fe/H] is noise that the MSE loss chases
        (the MLP most of all).
    label_error : float
        1-sigma error of the training labels (dex); subtracted in quadrature from the OOF residuals so that
        ``feh_err`` describes the error against the truth, not against noisy labels.
    detection_sigma : float
        Joint Fe significance below which a star is an upper limit.
    seed : int
        Seeds folds and members.
    progress : bool
        Show a progress bar (tqdm, notebook-aware).

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> from fehkit.training import reference_params, spectra_features
    >>> sim = make_benchmark(120, seed=3)
    >>> feats = spectra_features(sim.batch, reference_params(sim.truth))
    >>> ens = FeHEnsemble(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 5}, n_folds=3)
    >>> ens = ens.fit(feats, sim.truth["feh_ref"])
    >>> sorted(ens.weights_)
    ['dnn', 'rf', 'xgb']
    >>> list(ens.predict(feats).columns[:3])
    ['feh', 'feh_err', 'feh_upper']
    """

    def __init__(self, rf: Mapping[str, Any] | None = None, xgb: Mapping[str, Any] | None = None,
                 dnn: Mapping[str, Any] | None = None, members: Sequence[str] = MEMBERS, n_folds: int = 5,
                 target: str = "residual", train_on: str = "detected", label_error: float = 0.0,
                 detection_sigma: float = 3.0, seed: int = 0, progress: bool = False) -> None:
        self.rf = dict(rf or {})
        self.xgb = dict(xgb or {})
        self.dnn = dict(dnn or {})
        self.members = tuple(members)
        self.n_folds = n_folds
        self.target = target
        self.train_on = train_on
        self.label_error = label_error
        self.detection_sigma = detection_sigma
        self.seed = seed
        self.progress = progress

    # ---- configuration -------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Return the constructor arguments (JSON-able)."""
        return {"rf": self.rf, "xgb": self.xgb, "dnn": self.dnn, "members": list(self.members),
                "n_folds": self.n_folds, "target": self.target, "train_on": self.train_on,
                "label_error": self.label_error, "detection_sigma": self.detection_sigma, "seed": self.seed}

    def member_params(self, name: str) -> dict[str, Any]:
        """Return one member's hyperparameters: its defaults updated by this ensemble's overrides."""
        defaults = {"rf": RF_DEFAULTS, "xgb": XGB_DEFAULTS, "dnn": DNN_DEFAULTS}[name]
        return {**defaults, **getattr(self, name)}

    def _make(self, name: str, seed: int) -> Any:
        if name == "rf":
            return make_forest(seed, **self.rf)
        if name == "xgb":
            return make_boosting(seed, **self.xgb)
        return MLPRegressor(**{**DNN_DEFAULTS, **self.dnn, "seed": seed})

    # ---- fitting ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None, X_val: Any = None,
            y_val: Any = None) -> FeHEnsemble:
        """Cross-validate the members for their OOF variances and weights, calibrate errors, then refit on all.

        Parameters
        ----------
        X : Features or (n, n_features) array
            Training features (with ``feature_names`` when an array).
        y : (n,) array_like
            Training labels ([Fe/H], dex).
        X_val, y_val : optional
            A validation set for the MLP's early stopping in the final fit (otherwise a held-out part of X).
        """
        Xa, names = _matrix(X, feature_names)
        y = _labels(y, len(Xa), "y")
        self._check_config()
        self.feature_names_ = list(names)
        self._col = {n: i for i, n in enumerate(names)}
        for need in (BASE_FEATURE, ERR_FEATURE, PARAM_ERR_FEATURE, SIGNAL_FEATURE, UPPER_FEATURE):
            if need not in self._col:
                raise EnsembleError(f"features: no column {need!r}; expected the classical method's columns "
                                    "from fehkit.features.build_features")
        self.label_range_ = (float(np.min(y)), float(np.max(y)))
        detected = self._detected(Xa)
        rows = np.flatnonzero(detected) if self.train_on == "detected" else np.arange(len(y))
        if detected.sum() < self.n_folds * 2:
            raise EnsembleError(f"training set: {int(detected.sum())} stars with a detected joint Fe signal; "
                                f"expected at least {self.n_folds * 2} for {self.n_folds}-fold cross-validation")
        Xt, yt = Xa[rows], y[rows]
        t = yt - self._base(Xt)
        Xv = yv = None
        if X_val is not None:
            Xv, _ = _matrix(X_val, self.feature_names_)
            yv = _labels(y_val, len(Xv), "y_val")
            keep = self._detected(Xv) if self.train_on == "detected" else np.ones(len(Xv), bool)
            Xv, yv = Xv[keep], yv[keep]
            if len(Xv) < 5:
                Xv = yv = None  # too small to stop on: the MLP holds out part of the training set instead

        strata = np.digitize(yt, np.quantile(yt, np.linspace(0, 1, 6)[1:-1]))
        folds = list(StratifiedKFold(self.n_folds, shuffle=True, random_state=self.seed).split(Xt, strata))
        oof = {m: np.full(len(yt), np.nan) for m in self.members}
        steps = [(k, m) for k in range(len(folds)) for m in self.members] + [(-1, m) for m in self.members]
        bar = _progress(len(steps), self.progress, "fitting ensemble")
        self.members_ = {}
        for k, m in steps:
            if k >= 0:
                tr, te = folds[k]
                est = self._make(m, self.seed + k)
                est.fit(Xt[tr], t[tr])
                oof[m][te] = est.predict(Xt[te])
            else:
                est = self._make(m, self.seed)
                if m == "dnn" and Xv is not None:
                    est.fit(Xt, t, Xv, yv - self._base(Xv))
                else:
                    est.fit(Xt, t)
                self.members_[m] = est
            bar.update(1)
        bar.close()

        # weights and error calibration from the OOF predictions of stars with a detected signal
        base = self._base(Xt)
        det = detected[rows]
        self.oof_predictions_ = pd.DataFrame({"row": rows, **{f"feh_{m}": base + oof[m] for m in self.members}})
        label_var = self.label_error ** 2
        floor = 1e-6
        self.oof_mse_ = {m: float(max(np.mean((base + oof[m] - yt)[det] ** 2) - label_var, floor))
                         for m in self.members}
        inv = {m: 1.0 / v for m, v in self.oof_mse_.items()}
        self.weights_ = {m: float(v / sum(inv.values())) for m, v in inv.items()}
        fused = sum(self.weights_[m] * self.oof_predictions_[f"feh_{m}"].to_numpy() for m in self.members)
        self.oof_predictions_["feh"] = fused
        self.calibration_ = self._calibrate(fused - yt, self._err_terms(Xt), det, label_var)
        self.oof_predictions_["feh_err"] = self._feh_err(Xt)
        self.n_train_ = int(len(rows))
        return self

    def _calibrate(self, resid: np.ndarray, v: np.ndarray, detected: np.ndarray, label_var: float) -> dict:
        """Fit feh_err^2 = a^2 v + b^2 to the OOF residuals of detected stars.

        The shape (a, b) comes from maximum likelihood, then one factor makes the 1-sigma error hold 68.3% of them.
        """
        r, v = resid[detected], v[detected]
        ok = np.isfinite(r) & np.isfinite(v)
        r, v = r[ok], v[ok]

        def nll(p: np.ndarray) -> float:
            var = np.exp(2 * p[0]) * v + np.exp(2 * p[1]) + label_var
            return float(np.sum(r ** 2 / var + np.log(var)))

        res = minimize(nll, x0=np.array([0.0, np.log(0.03)]), method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-6})
        a, b = np.exp(res.x)
        sigma = np.sqrt(a ** 2 * v + b ** 2)
        # Residuals have heavier tails than a Gaussian, which inflates the maximum-likelihood scale: rescale so
        # that 68.3% of the OOF residuals fall inside the 1-sigma error (labels' own noise added back in).
        ks = np.linspace(0.3, 3.0, 271)
        cover = [np.mean(np.abs(r) <= np.sqrt((k * sigma) ** 2 + label_var)) for k in ks]
        k = float(ks[min(np.searchsorted(cover, 0.683), len(ks) - 1)])
        inside = np.abs(r) <= np.sqrt((k * sigma) ** 2 + label_var)
        return {"scale": float(k * a), "floor": float(k * b), "n": int(len(r)), "ml_scale": float(a),
                "ml_floor": float(b), "coverage_rescale": k, "oof_coverage_68": float(np.mean(inside))}

    # ---- prediction --------------------------------------------------------------------------------------------
    def predict(self, X: Any, *, feature_names: Sequence[str] | None = None) -> pd.DataFrame:
        """[Fe/H], its 1-sigma error, the upper limit where the joint signal is below 3 sigma, each member's value.

        Returns a DataFrame with ``feh``, ``feh_err``, ``feh_upper`` (3-sigma limit; NaN unless the flag is
        ``upper_limit``), ``feh_rf``, ``feh_xgb``, ``feh_dnn``, ``feh_cog`` and ``flag``: ``ok``, ``upper_limit``
        (joint Fe signal below 3 sigma) or ``no_lines`` (no usable line at all: no measurement and no limit), one
        row per star.
        """
        self._check_fitted()
        # a Features or DataFrame brings its own names (checked, order included); a plain array gets the model's
        Xa, names = _matrix(X, self.feature_names_ if feature_names is None else feature_names)
        if names != self.feature_names_:
            extra = sorted(set(names) - set(self.feature_names_))
            missing = sorted(set(self.feature_names_) - set(names))
            raise EnsembleError(f"features do not match the trained model: missing {missing[:5]}, unexpected "
                                f"{extra[:5]} (expected the {len(self.feature_names_)} features it was "
                                "trained on, in the same order)")
        base = self._base(Xa)
        out = pd.DataFrame(index=range(len(Xa)))
        preds = {m: base + self.members_[m].predict(Xa) for m in self.members}
        out["feh"] = sum(self.weights_[m] * preds[m] for m in self.members)
        out["feh_err"] = self._feh_err(Xa)
        upper = ~self._detected(Xa)
        # no usable line at all: nothing measured and nothing excluded (no limit either)
        none = np.nan_to_num(Xa[:, self._col[N_LINES_FEATURE]]) == 0 if N_LINES_FEATURE in self._col else \
            np.zeros(len(Xa), bool)
        out["feh_upper"] = np.where(upper & ~none, Xa[:, self._col[UPPER_FEATURE]], np.nan)
        for m in MEMBERS:
            out[f"feh_{m}"] = preds[m] if m in preds else np.nan
        out["feh_cog"] = Xa[:, self._col[BASE_FEATURE]].astype(float)
        out["flag"] = np.where(none, "no_lines", np.where(upper, "upper_limit", "ok"))
        return out

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _base(self, Xa: np.ndarray) -> np.ndarray:
        if self.target == "feh":
            return np.zeros(len(Xa))
        base = Xa[:, self._col[BASE_FEATURE]].astype(float)
        # the classical value is the starting point; beyond the training labels (non-detections fall to the bottom
        # of the likelihood grid) it is clipped to their range, and where it does not exist the labels' middle
        lo, hi = self.label_range_
        return np.where(np.isfinite(base), np.clip(base, lo, hi), 0.5 * (lo + hi))

    def _detected(self, Xa: np.ndarray) -> np.ndarray:
        return np.nan_to_num(Xa[:, self._col[SIGNAL_FEATURE]].astype(float)) >= self.detection_sigma

    def _err_terms(self, Xa: np.ndarray) -> np.ndarray:
        e = Xa[:, self._col[ERR_FEATURE]].astype(float)
        p = Xa[:, self._col[PARAM_ERR_FEATURE]].astype(float)
        return np.nan_to_num(e, nan=1.0) ** 2 + np.nan_to_num(p, nan=0.0) ** 2

    def _feh_err(self, Xa: np.ndarray) -> np.ndarray:
        c = self.calibration_
        return np.sqrt(c["scale"] ** 2 * self._err_terms(Xa) + c["floor"] ** 2)

    def _check_config(self) -> None:
        bad = [m for m in self.members if m not in MEMBERS]
        if bad or not self.members:
            raise EnsembleError(f"members {list(self.members)}: expected a non-empty subset of {list(MEMBERS)}")
        if self.train_on not in ("detected", "all"):
            raise EnsembleError(f"train_on {self.train_on!r}: expected 'detected' or 'all'")
        if self.target not in ("residual", "feh"):
            raise EnsembleError(f"target {self.target!r}: expected 'residual' or 'feh'")
        if int(self.n_folds) < 2:
            raise EnsembleError(f"n_folds = {self.n_folds}: expected at least 2")

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise EnsembleError("this FeHEnsemble is not fitted yet: call fit(X, y) or FeHEnsemble.load(dir)")
        self._col = {n: i for i, n in enumerate(self.feature_names_)}

    # ---- persistence (fehkit.models.persist) -------------------------------------------------------------------
    def save(self, directory: Any, *, card: Mapping[str, Any] | None = None, overwrite: bool = False) -> Any:
        """Write the model to a folder in safe formats (see :func:`fehkit.models.persist.save_ensemble`)."""
        from fehkit.models.persist import save_ensemble

        return save_ensemble(self, directory, card=card, overwrite=overwrite)

    @classmethod
    def load(cls, directory: Any, *, device: str = "cpu") -> FeHEnsemble:
        """Read a model written by :meth:`save`, checking every file against the model card."""
        from fehkit.models.persist import load_ensemble

        return load_ensemble(directory, device=device)


def grid_search(X: Any, y: Any, grids: Mapping[str, Mapping[str, Iterable[Any]]], *,
                feature_names: Sequence[str] | None = None, n_folds: int = 5, seed: int = 0,
                max_candidates: int = MAX_GRID_CANDIDATES, **ensemble_kwargs: Any) -> tuple[dict, pd.DataFrame]:
    """Run a bounded grid search: each member's candidates scored by the same k-fold CV MSE the ensemble uses.

    ``grids`` maps a member name to a parameter grid (``{"rf": {"max_depth": [8, 12, 16]}}``); a grid with more
    than ``max_candidates`` combinations is refused rather than run for hours. Returns the best overrides per
    member (pass them to :class:`FeHEnsemble`) and a table of every candidate's CV MSE. Run it on the training
    set only.
    """
    Xa, names = _matrix(X, feature_names)
    y = _labels(y, len(Xa), "y")
    best: dict[str, dict[str, Any]] = {}
    rows = []
    for member, grid in grids.items():
        cands = list(ParameterGrid({k: list(v) for k, v in grid.items()}))
        if len(cands) > max_candidates:
            raise EnsembleError(f"grid for {member!r}: {len(cands)} combinations; expected at most "
                                f"{max_candidates} (raise max_candidates to allow more)")
        scores = []
        for cand in cands:
            cand = {**ensemble_kwargs.get(member, {}), **cand}
            ens = FeHEnsemble(**{**ensemble_kwargs, member: cand}, members=(member,), n_folds=n_folds, seed=seed)
            ens.fit(Xa, y, feature_names=names)
            scores.append(ens.oof_mse_[member])
            rows.append({"member": member, **{k: v for k, v in cand.items()}, "cv_mse": scores[-1]})
        best[member] = cands[int(np.argmin(scores))]
    return best, pd.DataFrame(rows)


def _matrix(X: Any, feature_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if hasattr(X, "X") and hasattr(X, "names"):
        return np.asarray(X.X, np.float32), list(X.names)
    if isinstance(X, pd.DataFrame):
        return X.to_numpy(np.float32), [str(c) for c in X.columns]
    Xa = np.asarray(X, np.float32)
    if Xa.ndim != 2:
        raise EnsembleError(f"X has shape {Xa.shape}; expected (n_stars, n_features)")
    if feature_names is None:
        raise EnsembleError("X is a plain array: pass feature_names (or a fehkit.features.Features)")
    if len(feature_names) != Xa.shape[1]:
        raise EnsembleError(f"feature_names has {len(feature_names)} names; X has {Xa.shape[1]} columns")
    return Xa, list(feature_names)


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    y = np.asarray(y, float).ravel()
    if y.size != n:
        raise EnsembleError(f"{name} has {y.size} values; expected one per star ({n})")
    if not np.all(np.isfinite(y)):
        raise EnsembleError(f"{name}: {int((~np.isfinite(y)).sum())} missing or non-finite label(s); expected a "
                            "[Fe/H] for every training star")
    return y


def _progress(total: int, show: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, leave=False)
