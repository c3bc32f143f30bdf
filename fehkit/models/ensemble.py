"""The ensemble: random forest, XGBoost and an MLP fused by inverse out-of-fold variance, with calibrated errors.

Each member learns [Fe/H] from the features (:mod:`fehkit.features`). By default it learns the *residual* of the
classical joint-likelihood abundance (``target="residual"``): the curve of growth already maps EWs to [Fe/H] at
a given Teff, so the trees and the network only learn what it misses (blends, grid and continuum systematics), and
trees no longer have to build a 3.5 dex staircase out of leaves. Five-fold cross-validation on the training set
gives each member's out-of-fold (OOF) predictions; their mean squared error sigma_i^2 on stars with a detected
joint Fe signal gives the weights w_i = (1/sigma_i^2) / sum_j (1/sigma_j^2). The per-star error comes from the
same OOF residuals: feh_err^2 = a^2 (sigma_cog^2 + sigma_param^2) + b^2, with the classical method's statistical
and stellar-parameter errors, (a, b) and the tails (Student-t) fitted by maximum likelihood through the labels' own
noise, b never below :data:`ERR_FLOOR`, and one factor so that +-feh_err holds 68.3% of the errors under the fitted
tails (a one-sigma-equivalent error; +-err95_factor feh_err holds 95%) -- calibrated on data the members never
trained on, never on the test set. Stars whose joint Fe signal is below 3 sigma keep flag ``upper_limit`` and the
classical 3-sigma upper limit (``feh_upper``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln
from scipy.stats import t as t_dist
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold

from fehkit.arrays import numbers
from fehkit.files import jsonable
from fehkit.models import persist
from fehkit.models.base import MEMBERS, EnsembleError, NotFittedError, check_fitted
from fehkit.models.boosting import XGB_DEFAULTS, make_boosting
from fehkit.models.domain import MIN_LABEL_SPREAD, STAR_INPUTS, fit_domain, prediction_flags
from fehkit.models.forest import RF_DEFAULTS, make_forest
from fehkit.models.mlp import DNN_DEFAULTS, EpochCallback, TorchMLPRegressor

__all__ = ["FUSION_RULES", "MEMBERS", "EnsembleError", "FeHEnsemble", "NotFittedError", "fuse", "fusion_importance",
           "fusion_scores", "fusion_weights", "grid_search", "normalize_weights", "oof_mse_score"]

#: Columns the ensemble reads from the features by name (see :mod:`fehkit.features`).
BASE_FEATURE, ERR_FEATURE, PARAM_ERR_FEATURE = "feh_cog", "feh_cog_err", "feh_cog_err_param"
SIGNAL_FEATURE, UPPER_FEATURE, N_LINES_FEATURE = "cog_signal_sigma", "feh_cog_upper", "cog_n_lines"

#: Smallest 1-sigma error feh_err can have (dex): the low end of what another radiative-transfer code on the same
#: atmospheres and lines changes in [Fe/H] (0.02-0.04 dex), which a benchmark made with MOOG itself cannot show.
ERR_FLOOR = 0.02
#: The fraction of a Gaussian inside +-1 sigma: what +-feh_err holds (erf(1/sqrt 2)).
COVERAGE_1SIGMA = 0.6826894921370859
#: Degrees of freedom the Student-t error model may take (200 is a Gaussian for this purpose).
NU_GRID = (2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 50.0, 100.0, 200.0)
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(32)

#: Largest number of hyperparameter combinations :func:`grid_search` tries per member.
MAX_GRID_CANDIDATES = 16

#: What :meth:`FeHEnsemble.predict` needs of a fitted (or loaded) ensemble.
_FITTED = ("members_", "weights_", "calibration_", "feature_names_in_", "label_range_", "domain_")


class FeHEnsemble(RegressorMixin, BaseEstimator):
    """[Fe/H] from EW features by a random forest, XGBoost and a torch MLP fused by inverse OOF variance.

    A scikit-learn estimator: ``get_params``, ``set_params`` (``set_params(rf={"n_estimators": 10})`` replaces
    the forest's overrides), ``sklearn.base.clone`` and ``GridSearchCV`` work; :meth:`predict` returns a table
    rather than an array, so :meth:`score` reads its ``feh`` column.

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

    Attributes
    ----------
    members_ : dict
        The fitted members by name, in the order of ``members``.
    weights_, oof_mse_ : dict
        Each member's weight and out-of-fold MSE (stars with a detected joint signal).
    calibration_ : dict
        The error model ``feh_err^2 = scale^2 (sigma_cog^2 + sigma_param^2) + floor^2`` and its diagnostics.
    feature_names_in_, n_features_in_
        The features it was trained on (their order is checked at :meth:`predict`).
    label_range_, n_train_, oof_predictions_
        The training labels' range, the number of training stars, the OOF predictions.
    domain_ : dict
        The training domain (:func:`fehkit.models.domain.fit_domain`): ranges of Teff, log g, vmic, [Fe/H] and
        S/N, and a feature-space distance with its threshold; :meth:`predict` flags stars outside it.

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> from fehkit.training import reference_params, spectra_features
    >>> sim = make_benchmark(120, seed=3)
    >>> feats = spectra_features(sim.batch, reference_params(sim.truth))
    >>> ens = FeHEnsemble(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 5}, n_folds=3)
    >>> ens
    FeHEnsemble(dnn={'max_epochs': 5}, n_folds=3, rf={'n_estimators': 20}, xgb={'n_estimators': 20})
    >>> ens = ens.fit(feats, sim.truth["feh_ref"])
    >>> sorted(ens.weights_)
    ['dnn', 'rf', 'xgb']
    >>> list(ens.predict(feats).columns[:3])
    ['feh', 'feh_err', 'feh_upper']
    >>> ens.summary()[:30]
    'FeHEnsemble fitted on 76 stars'
    """

    def __init__(self, rf: Mapping[str, Any] | None = None, xgb: Mapping[str, Any] | None = None,
                 dnn: Mapping[str, Any] | None = None, members: Sequence[str] = MEMBERS, n_folds: int = 5,
                 target: str = "residual", train_on: str = "detected", label_error: float = 0.0,
                 detection_sigma: float = 3.0, seed: int = 0, progress: bool = False) -> None:
        self.rf = rf
        self.xgb = xgb
        self.dnn = dnn
        self.members = members
        self.n_folds = n_folds
        self.target = target
        self.train_on = train_on
        self.label_error = label_error
        self.detection_sigma = detection_sigma
        self.seed = seed
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN features are masked lines
        return tags

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        text = super().__repr__(N_CHAR_MAX)
        return f"{text}  # {self.summary().removeprefix('FeHEnsemble ')}" if hasattr(self, "weights_") else text

    def summary(self) -> str:
        """One line: what the ensemble was fitted on, its weights and its error calibration."""
        if not hasattr(self, "weights_"):
            return "FeHEnsemble, not fitted"
        weights = ", ".join(f"{m} {w:.2f}" for m, w in self.weights_.items())
        c = self.calibration_
        return (f"FeHEnsemble fitted on {self.n_train_} stars, {self.n_features_in_} features; weights {weights}; "
                f"feh_err scale {c['scale']:.3g}, floor {c['floor']:.3g} dex")

    # ---- configuration -------------------------------------------------------------------------------------
    def member_params(self, name: str) -> dict[str, Any]:
        """Return one member's hyperparameters: its defaults updated by this ensemble's overrides."""
        defaults = {"rf": RF_DEFAULTS, "xgb": XGB_DEFAULTS, "dnn": DNN_DEFAULTS}[name]
        return {**defaults, **(getattr(self, name) or {})}

    def _make(self, name: str, seed: int) -> Any:
        overrides = getattr(self, name) or {}
        if name == "rf":
            return make_forest(seed, **overrides)
        if name == "xgb":
            return make_boosting(seed, **overrides)
        return TorchMLPRegressor(**{**DNN_DEFAULTS, **overrides, "seed": seed})

    # ---- fitting ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None, X_val: Any = None,
            y_val: Any = None, epoch_callback: EpochCallback | None = None) -> FeHEnsemble:
        """Cross-validate the members for their OOF variances and weights, calibrate errors, then refit on all.

        Parameters
        ----------
        X : Features, DataFrame or (n, n_features) array
            Training features (with ``feature_names`` when an array).
        y : (n,) array_like
            Training labels ([Fe/H], dex).
        X_val, y_val : optional
            A validation set for the MLP's early stopping in the final fit (otherwise a held-out part of X).
        epoch_callback : callable, optional
            Called after every epoch of every MLP fit (one per fold, then the final fit) with a
            :class:`~fehkit.models.mlp.EpochRecord` whose ``fit`` says which (``"fold 1 of 5"``, ``"final fit"``),
            e.g. :meth:`fehkit.widgets.TrainingDashboard.on_epoch`. It changes nothing in the training.
        """
        Xa, names = _matrix(X, feature_names)
        y = _labels(y, len(Xa), "y")
        spread = float(np.std(y))
        if spread < MIN_LABEL_SPREAD:
            raise EnsembleError(f"y: the training labels' spread (standard deviation) is {spread:.3g} dex over "
                                f"{len(y)} stars; expected at least {MIN_LABEL_SPREAD} dex: labels that do not vary "
                                "teach nothing about [Fe/H]")
        members = self._check_config()
        for need in (BASE_FEATURE, ERR_FEATURE, PARAM_ERR_FEATURE, SIGNAL_FEATURE, UPPER_FEATURE):
            if need not in names:
                raise EnsembleError(f"features: no column {need!r}; expected the classical method's columns "
                                    "from fehkit.features.build_features")
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.label_range_ = (float(np.min(y)), float(np.max(y)))
        detected = self._detected(Xa)
        rows = np.flatnonzero(detected) if self.train_on == "detected" else np.arange(len(y))
        if detected.sum() < self.n_folds * 2:
            raise EnsembleError(f"training set: {int(detected.sum())} stars with a detected joint Fe signal; "
                                f"expected at least {self.n_folds * 2} for {self.n_folds}-fold cross-validation")
        self.domain_ = fit_domain(Xa, names, y, _stars_column(X, "snr", len(Xa)), detected)
        Xt, yt = Xa[rows], y[rows]
        t = yt - self._base(Xt)
        Xv = yv = None
        if X_val is not None:
            Xv, _ = _matrix(X_val, names)
            yv = _labels(y_val, len(Xv), "y_val")
            keep = self._detected(Xv) if self.train_on == "detected" else np.ones(len(Xv), bool)
            Xv, yv = Xv[keep], yv[keep]
            if len(Xv) < 5:
                Xv = yv = None  # too small to stop on: the MLP holds out part of the training set instead

        strata = np.digitize(yt, np.quantile(yt, np.linspace(0, 1, 6)[1:-1]))
        folds = list(StratifiedKFold(self.n_folds, shuffle=True, random_state=self.seed).split(Xt, strata))
        oof = {m: np.full(len(yt), np.nan) for m in members}
        steps = [(k, m) for k in range(len(folds)) for m in members] + [(-1, m) for m in members]
        bar = _progress(len(steps), self.progress, "fitting ensemble")
        fitted = {}
        for k, m in steps:
            # only the MLP trains by epochs; the callback learns which of its fits an epoch belongs to
            report = {} if m != "dnn" or epoch_callback is None else {"epoch_callback": _labelled(
                epoch_callback, f"fold {k + 1} of {len(folds)}" if k >= 0 else "final fit")}
            if k >= 0:
                tr, te = folds[k]
                est = self._make(m, self.seed + k)
                est.fit(Xt[tr], t[tr], **report)
                oof[m][te] = est.predict(Xt[te])
            else:
                est = self._make(m, self.seed)
                if m == "dnn" and Xv is not None:
                    est.fit(Xt, t, X_val=Xv, y_val=yv - self._base(Xv), **report)
                else:
                    est.fit(Xt, t, **report)
                fitted[m] = est
            bar.update(1)
        bar.close()
        self.members_ = fitted

        # weights and error calibration from the OOF predictions of stars with a detected signal
        base = self._base(Xt)
        det = detected[rows]
        self.oof_predictions_ = pd.DataFrame({"row": rows, **{f"feh_{m}": base + oof[m] for m in members}})
        label_var = self.label_error ** 2
        floor = 1e-6
        self.oof_mse_ = {m: float(max(np.mean((base + oof[m] - yt)[det] ** 2) - label_var, floor))
                         for m in members}
        self.weights_ = fusion_weights(self.oof_mse_)
        fused = fuse({m: self.oof_predictions_[f"feh_{m}"].to_numpy() for m in members}, self.weights_)
        self.oof_predictions_["feh"] = fused
        self.calibration_ = self._calibrate(fused - yt, self._err_terms(Xt), det, label_var)
        self.oof_predictions_["feh_err"] = self._feh_err(Xt)
        self.n_train_ = int(len(rows))
        return self

    def _calibrate(self, resid: np.ndarray, v: np.ndarray, detected: np.ndarray, label_var: float) -> dict:
        """Fit feh_err = k sqrt(a^2 v + b^2) to the OOF residuals of detected stars (docs/feh_ensemble.md).

        The true errors are modelled as Student-t with scale sqrt(a^2 v + b^2) and nu degrees of freedom; an OOF
        residual is such an error plus the labels' own Gaussian noise, and (a, b, nu) maximize the likelihood of
        that sum (Gauss-Hermite quadrature over the label noise). b^2 = b_fit^2 + ERR_FLOOR^2, so the floor
        cannot collapse to zero. Then k makes +-feh_err hold 68.3% of the errors under the fitted t (feh_err is a
        one-sigma-equivalent error, like a 16th-84th percentile half-width); +-err95_factor feh_err holds 95%.
        """
        r, v = resid[detected], v[detected]
        ok = np.isfinite(r) & np.isfinite(v)
        r, v = r[ok], v[ok]
        noise = np.sqrt(2.0 * label_var) * _GH_NODES  # label noise at the quadrature nodes
        weights = _GH_WEIGHTS / np.sqrt(np.pi)

        def nll(p: np.ndarray, nu: float) -> float:
            p = np.clip(p, -20.0, 5.0)  # a and b between ~1e-9 and ~150
            s = np.sqrt(np.exp(2 * p[0]) * v + np.exp(2 * p[1]) + ERR_FLOOR ** 2)[:, None]
            z = (r[:, None] - noise[None, :]) / s
            dens = np.exp(_t_logpdf(z, nu) - np.log(s)) @ weights
            return float(-np.sum(np.log(np.maximum(dens, 1e-300))))

        # the likelihood is flat in nu at large nu: profile it on a grid rather than let a simplex drift
        best, x0 = None, np.array([0.0, np.log(0.02)])
        for nu in NU_GRID:
            res = minimize(nll, x0=x0, args=(nu,), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
            x0 = res.x
            if best is None or res.fun < best[0]:
                best = (res.fun, res.x, nu)
        _, p, nu = best
        p = np.clip(p, -20.0, 5.0)
        a, b = float(np.exp(p[0])), float(np.sqrt(np.exp(2 * p[1]) + ERR_FLOOR ** 2))
        # the t's own 68.3% half-width (>= 1: a unit-scale t has heavier tails than a unit Gaussian)
        k = float(t_dist.ppf(0.5 + COVERAGE_1SIGMA / 2, nu))
        c68, c95 = COVERAGE_1SIGMA, float(2 * t_dist.cdf(1.96 * k, nu) - 1)
        return {"scale": k * a, "floor": max(k * b, ERR_FLOOR), "n": int(len(r)), "ml_scale": a, "ml_floor": b,
                "tail_nu": nu, "coverage_rescale": k, "floor_min": ERR_FLOOR,
                "err95_factor": float(t_dist.ppf(0.975, nu) / k),
                "oof_coverage_68": c68, "oof_coverage_95": c95}

    # ---- prediction --------------------------------------------------------------------------------------------
    def predict(self, X: Any, *, feature_names: Sequence[str] | None = None,
                member_predictor: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None) -> pd.DataFrame:
        """[Fe/H], its 1-sigma error, the upper limit where the joint signal is below 3 sigma, each member's value.

        Returns a DataFrame with ``feh`` (NaN, empty, for ``upper_limit`` and ``no_usable_lines``: no measurement),
        ``feh_err``, ``feh_upper`` (3-sigma limit; NaN unless the flag has ``upper_limit``), ``feh_rf``, ``feh_xgb``,
        ``feh_dnn``, ``feh_cog``, ``flag`` and ``flag_reason``, one row per star.
        ``flag`` is ``ok`` or the names of :data:`fehkit.flags.FLAGS` that apply, joined by ``;``:
        ``upper_limit`` (joint Fe signal below 3 sigma), ``no_usable_lines`` (no line usable for the joint
        likelihood: no measurement and no limit), ``out_of_domain`` (outside the training domain ``domain_``),
        ``grid_edge`` (the classical method hit the curve-of-growth grid: parameters clipped to it, or the
        likelihood at its top), ``grid_extrapolated`` (the star leans on filled grid nodes); ``flag_reason`` says
        why, e.g. ``teff 3677 K outside the training range 4002..6386 K``. Given a
        :class:`~fehkit.features.Features`, the grid checks and S/N come from its ``stars`` table; given an array,
        from the feature columns and the packaged curve of growth.

        ``member_predictor`` (optional) maps the feature matrix to each member's raw output (what its
        ``predict`` returns): :func:`fehkit.infer.infer` passes the members run as torch tensors on a device;
        the fusion, errors and flags are the same code either way.
        """
        out = self._prediction_columns(X, feature_names=feature_names, member_predictor=member_predictor)
        if out is None:
            return pd.DataFrame({c: pd.Series(dtype=object if c.startswith("flag") else float)
                                 for c in PREDICT_COLUMNS})
        return pd.DataFrame(out, copy=False)

    def _prediction_columns(self, X: Any, *, feature_names: Sequence[str] | None = None,
                            member_predictor: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
                            ) -> dict[str, np.ndarray] | None:
        """Run :meth:`predict`; its columns as arrays, by name (None for no stars)."""
        check_fitted(self, _FITTED, "call fit(X, y) or FeHEnsemble.load(folder)")
        expected = list(self.feature_names_in_)
        # a Features or DataFrame brings its own names (checked, order included); a plain array gets the model's
        Xa, names = _matrix(X, expected if feature_names is None else feature_names)
        _check_predict_input(Xa, names, expected)
        if len(Xa) == 0:
            return None
        base = self._base(Xa)
        raw = member_predictor(Xa) if member_predictor is not None else \
            {m: est.predict(Xa) for m, est in self.members_.items()}
        preds = {m: base + np.asarray(raw[m], float) for m in self.members_}
        # the columns as arrays, the frame built once at the end (column by column costs more than a small batch)
        out: dict[str, np.ndarray] = {"feh": fuse(preds, self.weights_), "feh_err": self._feh_err(Xa)}
        upper = ~self._detected(Xa)
        # no usable line at all: nothing measured and nothing excluded (no limit either)
        none = np.nan_to_num(self._column(Xa, N_LINES_FEATURE)) == 0 if N_LINES_FEATURE in expected else \
            np.zeros(len(Xa), bool)
        out["feh_upper"] = np.where(upper & ~none, Xa[:, self._index(UPPER_FEATURE)], np.nan)
        for m in MEMBERS:
            out[f"feh_{m}"] = preds.get(m, np.full(len(Xa), np.nan))
        out["feh_cog"] = self._column(Xa, BASE_FEATURE)
        out["flag"], out["flag_reason"] = prediction_flags(
            self.domain_, Xa, names, _star_inputs(X, len(Xa)),
            feh=out["feh"], feh_cog=out["feh_cog"], signal=self._column(Xa, SIGNAL_FEATURE), detected=~upper & ~none,
            no_usable=none, detection_sigma=self.detection_sigma)
        out["feh"] = np.where(upper, np.nan, out["feh"])  # an upper limit (or no line) has no value: feh_upper
        return out

    def permutation_predictions(self, X: Any, *, feature_names: Sequence[str] | None = None,
                                seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Each member's [Fe/H] with one feature at a time shuffled across the stars: permutation importance's input.

        For every feature, its column is permuted among the rows of X (one random permutation per feature, from
        ``seed``) while the others stay, and each member predicts [Fe/H] as :meth:`predict` does (the classical
        starting value plus the member's residual, so shuffling ``feh_cog`` moves both). Returns
        ``{feature: {member: (n,) array}}``; fuse and score them with :func:`fusion_importance`. All shuffled
        copies go through each member in one call.
        """
        check_fitted(self, _FITTED, "call fit(X, y) or FeHEnsemble.load(folder)")
        expected = list(self.feature_names_in_)
        Xa, names = _matrix(X, expected if feature_names is None else feature_names)
        _check_predict_input(Xa, names, expected)
        n, k = Xa.shape
        rng = np.random.default_rng(seed)
        shuffled = np.repeat(Xa[None], k, axis=0)  # (k, n, k): copy j has column j permuted
        for j in range(k):
            shuffled[j, :, j] = Xa[rng.permutation(n), j]
        flat = shuffled.reshape(k * n, k)
        base = self._base(flat)
        out = {m: (base + np.asarray(est.predict(flat), float)).reshape(k, n) for m, est in self.members_.items()}
        return {name: {m: out[m][j] for m in out} for j, name in enumerate(names)}

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R^2 of the fused ``feh`` against ``y`` over the stars with a measured ``feh``: higher is better.

        Replaces :class:`~sklearn.base.RegressorMixin`'s, which expects :meth:`predict` to return an array; it is
        what ``GridSearchCV`` maximizes when given no ``scoring`` (:func:`grid_search` scores by OOF MSE instead).
        """
        y, feh = np.asarray(y, float).ravel(), self.predict(X)["feh"].to_numpy(float)
        ok = np.isfinite(feh)  # upper limits have no feh
        w = None if sample_weight is None else np.asarray(sample_weight, float).ravel()[ok]
        return float(r2_score(y[ok], feh[ok], sample_weight=w))

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _index(self, name: str) -> int:
        return list(self.feature_names_in_).index(name)

    def _column(self, Xa: np.ndarray, name: str) -> np.ndarray:
        return Xa[:, self._index(name)].astype(float)

    def _base(self, Xa: np.ndarray) -> np.ndarray:
        if self.target == "feh":
            return np.zeros(len(Xa))
        base = self._column(Xa, BASE_FEATURE)
        # the classical value is the starting point; beyond the training labels (non-detections fall to the bottom
        # of the likelihood grid) it is clipped to their range (predict flags that for a detected star:
        # out_of_domain), and where it does not exist the labels' middle
        lo, hi = self.label_range_
        return np.where(np.isfinite(base), np.clip(base, lo, hi), 0.5 * (lo + hi))

    def _detected(self, Xa: np.ndarray) -> np.ndarray:
        return np.nan_to_num(self._column(Xa, SIGNAL_FEATURE)) >= self.detection_sigma

    def _err_terms(self, Xa: np.ndarray) -> np.ndarray:
        e, p = self._column(Xa, ERR_FEATURE), self._column(Xa, PARAM_ERR_FEATURE)
        return np.nan_to_num(e, nan=1.0) ** 2 + np.nan_to_num(p, nan=0.0) ** 2

    def _feh_err(self, Xa: np.ndarray) -> np.ndarray:
        c = self.calibration_
        return np.sqrt(c["scale"] ** 2 * self._err_terms(Xa) + c["floor"] ** 2)

    def _check_config(self) -> tuple[str, ...]:
        """Check the settings fit needs; return the member names."""
        members = (self.members,) if isinstance(self.members, str) else tuple(self.members)
        bad = [m for m in members if m not in MEMBERS]
        if bad or not members or len(set(members)) != len(members):
            raise EnsembleError(f"members {self.members!r}: expected a non-empty subset of {list(MEMBERS)}, "
                                "each at most once")
        if self.train_on not in ("detected", "all"):
            raise EnsembleError(f"train_on {self.train_on!r}: expected 'detected' or 'all'")
        if self.target not in ("residual", "feh"):
            raise EnsembleError(f"target {self.target!r}: expected 'residual' or 'feh'")
        if int(self.n_folds) < 2:
            raise EnsembleError(f"n_folds = {self.n_folds}: expected at least 2")
        for name in MEMBERS:
            if not isinstance(getattr(self, name), Mapping | None):
                raise EnsembleError(f"{name} = {getattr(self, name)!r}: expected a mapping of {name} overrides "
                                    "(or None)")
        return members

    # ---- persistence (fehkit.models.persist) -------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, card: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write the model to a folder in safe formats, with a checked model card (:mod:`fehkit.models.persist`).

        ``card`` adds entries to the model card: ``synthetic`` (True for a model trained on simulated spectra),
        ``training_set_sha256``, ``metrics``, ...
        """
        check_fitted(self, _FITTED, "fit it before saving")
        ensemble_card = {
            "synthetic": None,
            "feature_names": [str(n) for n in self.feature_names_in_],
            "ensemble": {
                "params": {k: v for k, v in self.get_params(deep=False).items() if k != "progress"},
                "weights": self.weights_,
                "oof_mse": self.oof_mse_,
                "calibration": self.calibration_,
                "label_range": list(self.label_range_),
                "domain": self.domain_,
                "n_train": getattr(self, "n_train_", None),
                "member_params": {m: jsonable(self.member_params(m)) for m in self.members_},
            },
            **jsonable(dict(card or {})),
        }
        return persist.write_model_folder(directory, self.members_, ensemble_card, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str = "cpu") -> FeHEnsemble:
        """Read a model written by :meth:`save`; every file and the card's values are checked first."""
        members, card = persist.read_model_folder(directory, device=device)
        where = Path(directory) / persist.CARD
        e = card["ensemble"]
        try:
            ens = cls().set_params(**e["params"])
            if list(ens._check_config()) != list(members):
                raise EnsembleError(f"members {ens.members!r} differ from the folder's {list(members)}")
        except (EnsembleError, TypeError, ValueError) as exc:
            raise persist.IncompatibleModelError(where, f"ensemble.params: {exc}; expected FeHEnsemble's "
                                                        "settings") from None
        ens.feature_names_in_ = np.asarray(card["feature_names"], dtype=object)
        ens.n_features_in_ = len(card["feature_names"])
        ens.weights_ = {m: float(e["weights"][m]) for m in members}
        ens.oof_mse_ = {m: float(e["oof_mse"][m]) for m in members}
        ens.calibration_ = dict(e["calibration"])
        ens.label_range_ = (float(e["label_range"][0]), float(e["label_range"][1]))
        ens.domain_ = dict(e["domain"])
        ens.n_train_ = e.get("n_train")
        ens.card_ = card
        ens.members_ = members
        return ens


def oof_mse_score(estimator: FeHEnsemble, X: Any = None, y: Any = None) -> float:
    """Scorer for ``GridSearchCV``: minus the mean out-of-fold MSE (``oof_mse_``) of a fitted ensemble's members.

    ``oof_mse_`` comes from the ensemble's own k-fold cross-validation inside ``fit`` (folds stratified in [Fe/H];
    the MSE over stars with a detected joint signal, less the labels' variance): the number that sets a member's
    weight. ``X`` and ``y`` are ignored.
    """
    return -float(np.mean(list(estimator.oof_mse_.values())))


#: The fusion rules of :func:`fusion_weights`.
FUSION_RULES = ("inverse_variance", "equal", "single")


def fusion_weights(oof_mse: Mapping[str, float], rule: str = "inverse_variance",
                   member: str | None = None) -> dict[str, float]:
    """Return the members' weights under a fusion rule, in the order of ``oof_mse``; they sum to 1.

    ``"inverse_variance"`` is what :meth:`FeHEnsemble.fit` uses: w_i = (1/sigma_i^2) / sum_j (1/sigma_j^2) with
    sigma_i^2 a member's out-of-fold MSE (``oof_mse_``). For independent, unbiased members this is the
    combination with the smallest variance; a member twice as noisy gets half the weight. ``"equal"`` gives every
    member 1/n; ``"single"`` gives ``member`` all the weight.

    Examples
    --------
    >>> fusion_weights({"rf": 0.01, "xgb": 0.01, "dnn": 0.02})
    {'rf': 0.4, 'xgb': 0.4, 'dnn': 0.2}
    >>> fusion_weights({"rf": 0.01, "dnn": 0.02}, "single", member="dnn")
    {'rf': 0.0, 'dnn': 1.0}
    """
    mse = {str(m): float(v) for m, v in oof_mse.items()}
    if not mse:
        raise EnsembleError("oof_mse: no member; expected each member's out-of-fold MSE (FeHEnsemble.oof_mse_)")
    if rule == "inverse_variance":
        bad = {m: v for m, v in mse.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            raise EnsembleError(f"oof_mse: {bad} not a positive number; expected each member's out-of-fold MSE > 0")
        inv = {m: 1.0 / v for m, v in mse.items()}
        return {m: float(v / sum(inv.values())) for m, v in inv.items()}
    if rule == "equal":
        return {m: 1.0 / len(mse) for m in mse}
    if rule == "single":
        if member not in mse:
            raise EnsembleError(f"member {member!r}: expected one of the ensemble's members {list(mse)} for the "
                                "'single' rule")
        return {m: float(m == member) for m in mse}
    raise EnsembleError(f"rule {rule!r}: expected one of {list(FUSION_RULES)}")


def normalize_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale non-negative weights (e.g. from sliders) so that they sum to 1.

    Examples
    --------
    >>> normalize_weights({"rf": 1.0, "xgb": 1.0, "dnn": 2.0})
    {'rf': 0.25, 'xgb': 0.25, 'dnn': 0.5}
    """
    w = {str(m): float(v) for m, v in weights.items()}
    bad = {m: v for m, v in w.items() if not (np.isfinite(v) and v >= 0)}
    if bad:
        raise EnsembleError(f"weights: {bad}; expected finite weights >= 0")
    total = sum(w.values())
    if total <= 0:
        raise EnsembleError(f"weights: {w} sum to 0; expected at least one member with a weight above 0")
    return {m: v / total for m, v in w.items()}


def fuse(predictions: Mapping[str, Any], weights: Mapping[str, float]) -> np.ndarray:
    """Fuse the members' [Fe/H]: sum_i w_i feh_i, the ensemble's value (what :meth:`FeHEnsemble.predict` returns).

    ``predictions`` maps each member to its (n,) [Fe/H]; ``weights`` (summing to 1, e.g. :func:`fusion_weights`)
    gives the order of the sum. A member of weight 0 is left out, so its NaN cannot spoil the sum.

    Examples
    --------
    >>> fuse({"rf": np.array([-2.0, -3.0]), "dnn": np.array([-2.2, -3.4])}, {"rf": 0.5, "dnn": 0.5})
    array([-2.1, -3.2])
    """
    missing = [m for m, w in weights.items() if w != 0 and m not in predictions]
    if missing:
        raise EnsembleError(f"predictions: no member(s) {missing}; expected one (n,) array per weighted member "
                            f"(found {list(predictions)})")
    terms = [w * np.asarray(predictions[m], float) for m, w in weights.items() if w != 0]
    if not terms:
        raise EnsembleError(f"weights: {dict(weights)}: every weight is 0; expected at least one above 0")
    return np.asarray(sum(terms), float)


def fusion_scores(predictions: Mapping[str, Any], weights: Mapping[str, float], truth: Any, feh_err: Any = None,
                  subset: Any = None) -> dict[str, Any]:
    """MAE, bias and coverage_68 of the fused [Fe/H] under ``weights``, against ``truth``.

    ``coverage_68`` is the fraction of stars with |feh - truth| <= feh_err, as in ``metrics.json``: ``feh_err``
    (the ensemble's calibrated per-star error, which does not depend on the weights) was calibrated for the
    inverse-variance fusion, so another rule shows how far that calibration carries. ``subset`` (a boolean mask)
    picks the stars scored; stars without a finite prediction or truth are left out. Returns ``n``, ``mae``,
    ``bias`` (mean of feh - truth) and ``coverage_68`` (None where no star is left, or no ``feh_err`` given).

    Examples
    --------
    >>> preds = {"rf": np.array([-2.0, -3.5]), "dnn": np.array([-2.5, -3.0])}
    >>> fusion_scores(preds, {"rf": 0.5, "dnn": 0.5}, truth=[-2.0, -3.0], feh_err=[0.5, 0.125])
    {'n': 2, 'mae': 0.25, 'bias': -0.25, 'coverage_68': 0.5}
    """
    feh = fuse(predictions, weights)
    truth = np.asarray(truth, float)
    err = np.full(feh.shape, np.nan) if feh_err is None else np.asarray(feh_err, float)
    if truth.shape != feh.shape or err.shape != feh.shape:
        raise EnsembleError(f"truth {truth.shape} and feh_err {err.shape}: expected one value per star {feh.shape}")
    sel = np.isfinite(feh) & np.isfinite(truth)
    if subset is not None:
        sel &= np.asarray(subset, bool)
    d = feh[sel] - truth[sel]
    if not d.size:
        return {"n": 0, "mae": None, "bias": None, "coverage_68": None}
    return {"n": int(d.size), "mae": float(np.mean(np.abs(d))), "bias": float(np.mean(d)),
            "coverage_68": None if feh_err is None else float(np.mean(np.abs(d) <= err[sel]))}


def fusion_importance(permuted: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, Any],
                      weights: Mapping[str, float], truth: Any, subset: Any = None) -> pd.Series:
    """Permutation importance of each feature for the fused [Fe/H] under ``weights``: how much its MAE grows.

    ``permuted`` is :meth:`FeHEnsemble.permutation_predictions` (each feature shuffled in turn, each member's
    [Fe/H]) and ``predictions`` the members' [Fe/H] of the same stars unshuffled; both are fused with ``weights``
    and scored against ``truth`` on ``subset`` (:func:`fusion_scores`). A feature the fused model does not lean on
    scores about 0; one it needs, the MAE it adds when its values are scrambled. Returned largest first.
    """
    ref = fusion_scores(predictions, weights, truth, subset=subset)["mae"]
    if ref is None:
        raise EnsembleError("truth/subset: no star with a finite prediction and truth to score the importances on")
    gain = {f: fusion_scores(p, weights, truth, subset=subset)["mae"] - ref for f, p in permuted.items()}
    return pd.Series(gain, name="mae_increase", dtype=float).sort_values(ascending=False, kind="stable")


def _labelled(callback: EpochCallback, fit: str) -> EpochCallback:
    """Wrap an epoch callback so that each record says which fit it comes from."""
    return lambda record: callback(replace(record, fit=fit))


def grid_search(X: Any, y: Any, grids: Mapping[str, Mapping[str, Iterable[Any]]], *,
                feature_names: Sequence[str] | None = None, n_folds: int = 5, seed: int = 0,
                max_candidates: int = MAX_GRID_CANDIDATES, **ensemble_kwargs: Any) -> tuple[dict, pd.DataFrame]:
    """Run a bounded grid search: each member's candidates scored by the same k-fold CV MSE the ensemble uses.

    ``grids`` maps a member name to a parameter grid (``{"rf": {"max_depth": [8, 12, 16]}}``); a grid with more
    than ``max_candidates`` combinations is refused rather than run for hours. Each candidate is a single-member
    :class:`FeHEnsemble` (``ensemble_kwargs`` with the member's own overrides updated by the candidate) run
    through scikit-learn's ``GridSearchCV`` and scored by :func:`oof_mse_score`: its out-of-fold MSE from its own
    ``n_folds``-fold cross-validation on the stars with a detected joint signal. That cross-validation happens
    inside ``fit``, so ``GridSearchCV`` gets one split (fit and score on every star given) and does not refit.

    Returns the best overrides per member (pass them to :class:`FeHEnsemble`) and a table of every candidate:
    ``member``, its parameters, ``cv_mse``. Run it on the training set only.
    """
    Xa, names = _matrix(X, feature_names)
    y = _labels(y, len(Xa), "y")
    frame = pd.DataFrame(Xa, columns=names)
    every = np.arange(len(y))
    best: dict[str, dict[str, Any]] = {}
    rows = []
    for member, grid in grids.items():
        cands = list(ParameterGrid({k: list(v) for k, v in grid.items()}))
        if len(cands) > max_candidates:
            raise EnsembleError(f"grid for {member!r}: {len(cands)} combinations; expected at most "
                                f"{max_candidates} (raise max_candidates to allow more)")
        fixed = dict(ensemble_kwargs.get(member) or {})
        one = FeHEnsemble(**ensemble_kwargs, members=(member,), n_folds=n_folds, seed=seed)
        search = GridSearchCV(one, {member: [{**fixed, **c} for c in cands]}, scoring=oof_mse_score,
                              cv=[(every, every)], refit=False, error_score="raise")
        search.fit(frame, y)
        mse = -np.asarray(search.cv_results_["mean_test_score"], float)
        rows += [{"member": member, **p[member], "cv_mse": float(s)}
                 for p, s in zip(search.cv_results_["params"], mse, strict=True)]
        best[member] = cands[int(np.argmin(mse))]
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


def _star_columns(X: Any, names: Sequence[str], n: int) -> dict[str, np.ndarray] | None:
    """Return the named columns of a Features' per-star table of ``n`` stars that exist, or None (no such table)."""
    read = getattr(X, "star_columns", None)
    if not callable(read):
        return None
    cols = read(names)
    return cols if all(len(v) == n for v in cols.values()) else None


def _star_inputs(X: Any, n: int) -> dict[str, np.ndarray] | None:
    """Return what :func:`~fehkit.models.domain.prediction_flags` reads of a Features' per-star table, or None."""
    return _star_columns(X, STAR_INPUTS, n)


def _stars_column(X: Any, name: str, n: int) -> np.ndarray | None:
    """Return a column of a Features' per-star table of ``n`` stars (e.g. ``snr``) as float64, or None."""
    cols = _star_columns(X, (name,), n)
    return numbers(cols[name]) if cols and name in cols else None


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    y = np.asarray(y, float).ravel()
    if y.size != n:
        raise EnsembleError(f"{name} has {y.size} values; expected one per star ({n})")
    if not np.all(np.isfinite(y)):
        raise EnsembleError(f"{name}: {int((~np.isfinite(y)).sum())} missing or non-finite label(s); expected a "
                            "[Fe/H] for every training star")
    return y


def _t_logpdf(z: np.ndarray, nu: float) -> np.ndarray:
    """Log density of Student's t with nu degrees of freedom (unit scale)."""
    return (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
            - (nu + 1) / 2 * np.log1p(z ** 2 / nu))


def _progress(total: int, show: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, leave=False)


#: Columns of :meth:`FeHEnsemble.predict`, in order.
PREDICT_COLUMNS = ("feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "flag", "flag_reason")


def _check_predict_input(Xa: np.ndarray, names: list[str], expected: list[str]) -> None:
    """Refuse features the trained model cannot read: other names, another order, infinite values."""
    if names != expected:
        extra = sorted(set(names) - set(expected))
        missing = sorted(set(expected) - set(names))
        if not extra and not missing and len(names) == len(expected):
            k = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
            raise EnsembleError(f"features: the columns are in another order than the model was trained on: "
                                f"position {k} holds {names[k]!r}, expected {expected[k]!r}; reorder them as "
                                "model.feature_names_in_")
        raise EnsembleError(f"features do not match the trained model: missing {missing[:5]}, unexpected "
                            f"{extra[:5]} (expected the {len(expected)} features it was trained on)")
    infinite = np.isinf(Xa)
    if infinite.any():
        rows, cols = np.nonzero(infinite)
        raise EnsembleError(f"features: column {names[cols[0]]!r} holds an infinite value (row {rows[0]}; "
                            f"{int(infinite.sum())} in all); expected finite numbers, or NaN for a missing value")
