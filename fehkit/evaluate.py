"""How well [Fe/H] is recovered: the numbers of ``metrics.json``.

Every model (the ensemble, its three members, the classical joint likelihood, the per-line median and The Cannon)
is scored on the same stars against the truth: MAE, MSE, scatter, bias, Pearson r, each with a 1,000-resample
bootstrap 95% interval. The ``models`` block covers the *headline subset*: test stars whose joint Fe signal is
detected (>= 3 sigma) and whose S/N is >= 50; below that the spectrum holds an upper limit, not a measurement
(docs/information_limit.md), and upper limits are counted, not averaged. The bins by S/N, [Fe/H] and Teff
cover every detected star and count the upper limits in each. The per-star errors are checked by their coverage
(fraction of |pred - truth| <= feh_err, 0.683 if calibrated, and <= 1.96 feh_err, 0.95; overall and per bin), the
3-sigma upper limits by the fraction that hold (truth <= feh_upper), the bias by a one-sample t-test, and the method's
targets (:data:`TARGETS`, explained in docs/targets.md) are listed with where and why any is missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fehkit.flags import detected as flag_detected
from fehkit.flags import has_flag

#: Prediction column of each model name in ``metrics["models"]``.
MODEL_COLUMNS = {"rf": "feh_rf", "xgb": "feh_xgb", "dnn": "feh_dnn", "ensemble": "feh", "cog": "feh_cog",
                 "cannon": "feh_cannon"}

#: S/N bins, side by side with no overlap (a figure joins them in order): the "~50" bin is 40-65.
SNR_BINS: tuple[tuple[float, float | None], ...] = ((30, 40), (40, 65), (65, 100), (100, 150), (150, None))
FEH_BINS: tuple[tuple[float, float], ...] = tuple((lo, lo + 0.5) for lo in np.arange(-4.5, -1.0, 0.5))
TEFF_BINS: tuple[tuple[float | None, float | None], ...] = ((None, 4400), (4400, 5000), (5000, 5500), (5500, None))
#: The ([Fe/H], S/N) grid of the "ensemble within 10% of the classical method" check: the S/N bins of the
#: information-limit table (docs/information_limit.md).
GRID_SNR_BINS = ((30, 60), (60, 120), (120, None))
#: S/N windows for the lowest [Fe/H] reached "at S/N 50, 100 and 200".
LOWEST_FEH_SNR = {50: (40, 65), 100: (80, 125), 200: (160, None)}

HEADLINE = "test stars with a detected joint Fe signal (>= 3 sigma over all lines) and S/N >= 50"
#: Lowest S/N of the headline subset.
HEADLINE_MIN_SNR = 50.0


def headline_mask(flag: Any, snr: Any) -> np.ndarray:
    """Return the headline subset (:data:`HEADLINE`): a detected joint Fe signal (a measured [Fe/H]) and S/N >= 50.

    Examples
    --------
    >>> headline_mask(["ok", "upper_limit", "ok", "out_of_domain"], [80, 80, 30, 60]).tolist()
    [True, False, False, True]
    """
    return flag_detected(flag) & (np.asarray(snr, float) >= HEADLINE_MIN_SNR)


@dataclass(frozen=True)
class Target:
    """One goal of the method, as :func:`targets` checks it and ``metrics.json`` reports it.

    Where each number comes from (the method's stated performance, the information floor of the synthetic
    benchmark, the statistics of a 68% interval) is explained in docs/targets.md.

    Attributes
    ----------
    key : str
        Short identifier (the first column of the table in docs/targets.md).
    name : str
        The target's ``name`` in ``metrics.json``.
    comparison : {"<=", ">=", "between", "every bin <="}
        How the measured value is compared with ``goal``; "every bin <=" compares the ensemble/classical MAE ratio
        of every checked ([Fe/H], S/N) bin.
    goal : float, (float, float) or None
        The number (or interval) compared with; None where the goal is measured in the same run (the best
        member's MAE).
    description : str
        What is measured, in words.
    tolerance : float
        Slack of a "<=" comparison against a goal measured in the same run (floating-point ties).
    feh_above : float or None
        Only stars with a true [Fe/H] above this value enter (headline stars otherwise).
    min_detected : int or None
        Detected stars a ([Fe/H], S/N) bin needs before it is checked.
    note_if_missed : str
        The note written beside a missed target, when the reason is known in advance.
    """

    key: str
    name: str
    comparison: str
    goal: float | tuple[float, float] | None
    description: str
    tolerance: float = 0.0
    feh_above: float | None = None
    min_detected: int | None = None
    note_if_missed: str = ""

    def text(self, goal: float | None = None, label: str = "") -> str:
        """Return the goal as ``metrics.json`` writes it: "<= 0.08", "0.60-0.76", "<= 0.0600 (rf)", "all"."""
        if self.comparison == "between":
            lo, hi = self.goal
            return f"{lo:.2f}-{hi:.2f}"
        if self.comparison == "every bin <=":
            return "all"
        if goal is not None:
            return f"{self.comparison} {goal:.4f} ({label})"
        return f"{self.comparison} {self.goal:g}"

    def met(self, value: float | None, goal: float | None = None) -> bool | None:
        """Whether ``value`` meets the target (None when it is unknown); ``goal`` overrides :attr:`goal`."""
        if value is None:
            return None
        goal = self.goal if goal is None else goal
        if self.comparison == "between":
            lo, hi = goal
            return lo <= value <= hi
        if self.comparison == ">=":
            return value >= goal
        return value <= goal + self.tolerance  # "<=" and, per bin, "every bin <="


#: The method's targets, in the order ``metrics.json`` lists them (docs/targets.md: where each number comes from).
TARGETS: tuple[Target, ...] = (
    Target("headline_mae", "headline MAE (dex)", "<=", 0.08,
           "MAE of the ensemble on the headline subset"),
    Target("headline_bias", "headline |bias| (dex)", "<=", 0.01,
           "absolute mean residual of the ensemble on the headline subset"),
    Target("headline_r", "headline r", ">=", 0.98,
           "Pearson r of prediction and truth on the headline subset"),
    Target("mae_feh_above", "MAE at [Fe/H] > -2.5, S/N >= 50 (dex)", "<=", 0.06,
           "MAE of the ensemble on the headline stars above [Fe/H] -2.5, where the lines are strong",
           feh_above=-2.5,
           note_if_missed="a 100 K Teff error alone gives ~0.045-0.05 dex here (docs/information_limit.md)"),
    Target("ensemble_vs_members", "ensemble MAE <= best member's", "<=", None,
           "headline MAE of the ensemble against that of its best member (rf, xgb or dnn)", tolerance=1e-12),
    Target("coverage_68", "coverage_68", "between", (0.62, 0.74),
           "fraction of headline stars with |feh - truth| <= feh_err"),
    Target("coverage_95", "coverage_95", "between", (0.92, 0.98),
           "fraction of headline stars with |feh - truth| <= 1.96 feh_err"),
    Target("ensemble_vs_cog_test",
           "ensemble MAE within 10% of the joint-likelihood method in every ([Fe/H], S/N) bin with >= 20 "
           "detected stars (test set)", "every bin <=", 1.10,
           "MAE(ensemble) / MAE(classical joint likelihood) in each checked bin of by_feh_snr", min_detected=20),
    Target("ensemble_vs_cog_oof",
           "ensemble MAE within 10% of the joint-likelihood method in every ([Fe/H], S/N) bin with >= 20 "
           "detected stars (training set, out-of-fold)", "every bin <=", 1.10,
           "the same ratio on the out-of-fold predictions of the training stars (by_feh_snr_oof)",
           min_detected=20),
)
#: :data:`TARGETS` by key.
TARGET = {t.key: t for t in TARGETS}


def evaluate(
    pred: pd.DataFrame,
    *,
    ensemble: Any = None,
    synthetic: bool = True,
    ablation: Mapping[str, Any] | None = None,
    param_errors: Mapping[str, float] | None = None,
    detections: pd.DataFrame | None = None,
    oof: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_grid_stars: int = TARGET["ensemble_vs_cog_test"].min_detected,
    truth_column: str = "true_feh",
) -> dict:
    """Score test-set predictions against the truth.

    Parameters
    ----------
    pred : pandas.DataFrame
        One row per test star: ``feh``, ``feh_err``, ``flag`` (:mod:`fehkit.flags`), the model columns of
        :data:`MODEL_COLUMNS` (absent ones are skipped), ``feh_cog_median``, ``true_feh``, ``true_teff``,
        ``snr`` and optionally ``feh_ext`` (an external survey's labels).
    ensemble : FeHEnsemble, optional
        The fitted ensemble (its weights, OOF MSEs and error calibration are reported).
    synthetic : bool
        Whether the stars are simulated (written into the metrics).
    ablation : mapping, optional
        ``{"without": [...], "predictions": (n_test,) array}`` from a model trained without some inputs.
    param_errors : mapping, optional
        1-sigma errors of the reference Teff, log g, vmic the models used.
    detections : pandas.DataFrame, optional
        ``true_feh``, ``snr``, ``cog_signal_sigma`` of more stars (e.g. the whole benchmark: detection involves no
        training) for the lowest [Fe/H] reached; default the test stars.
    oof : pandas.DataFrame, optional
        The ensemble's out-of-fold predictions of the training stars (``feh``, ``feh_err``, ``feh_cog``,
        ``true_feh``, ``snr``, ``flag``): held-out predictions too, four times as many as the test set, so the
        ([Fe/H], S/N) comparison with the classical method is also made on them (``by_feh_snr_oof``).
    n_boot, seed : int
        Bootstrap resamples and their seed.
    min_grid_stars : int
        Detected stars a ([Fe/H], S/N) cell needs before the 10% comparison with the classical method is checked.
    truth_column : str
        The column scored against: ``true_feh`` (the simulated truth), or ``feh_ref`` (the reference labels of a
        labelled table, with ``teff`` standing in for ``true_teff``); written as ``truth`` in the metrics. Where
        the labels carry errors (``feh_ref_err``), coverage counts |feh - label| against feh_err and the label's
        error added in quadrature (``coverage_errors`` says which).

    Returns
    -------
    dict
        The ``metrics.json`` content: ``synthetic``, ``n_test``, ``headline_subset``, ``n_upper_limits``,
        ``models``, ``weights``, ``coverage_68``, ``coverage_95``, ``upper_limits_hold``, ``by_snr``, ``by_feh``
        (each bin with its ``coverage_68`` and ``coverage_95``), ``ablation``, ``cross_survey`` and more
        (``by_teff``, ``by_feh_snr``, ``lowest_feh``, ``bias_ttest``, ``targets``).
    """
    p = pred.reset_index(drop=True)
    label_errors = False
    if truth_column != "true_feh":  # reference labels of real (or stand-in) stars take the place of the truth
        teff = {"true_teff": p["teff"]} if "true_teff" not in p and "teff" in p else {}
        p = p.assign(true_feh=p[truth_column], **teff)
        # a label is off by its own error too: coverage asks whether feh and the label agree within both errors
        label_err = p[f"{truth_column}_err"].to_numpy(float) if f"{truth_column}_err" in p else np.full(len(p), np.nan)
        label_errors = bool(np.isfinite(label_err).any()) and "feh_err" in p
        if label_errors:
            p = p.assign(feh_err=np.hypot(p["feh_err"].to_numpy(float), np.nan_to_num(label_err, nan=0.0)))
    truth = p["true_feh"].to_numpy(float)
    detected = flag_detected(p["flag"])  # a measured [Fe/H]; out_of_domain or grid flags only warn about it
    snr = p["snr"].to_numpy(float)
    head = detected & (snr >= HEADLINE_MIN_SNR)
    rng = np.random.default_rng(seed)

    models = {}
    for name, col in MODEL_COLUMNS.items():
        if col in p and np.isfinite(p[col].to_numpy(float)[head]).any():
            models[name] = score(p[col].to_numpy(float)[head], truth[head], n_boot=n_boot, rng=rng)
    out: dict[str, Any] = {
        "synthetic": bool(synthetic),
        "truth": ("true_feh (the simulated truth)" if truth_column == "true_feh"
                  else f"{truth_column} (reference labels)"),
        "n_test": int(len(p)),
        "coverage_errors": ("feh_err and the label's own error, in quadrature" if label_errors else "feh_err"),
        "headline_subset": HEADLINE,
        "n_headline": int(head.sum()),
        "n_upper_limits": int((~detected).sum()),
        "models": models,
    }
    if "feh_cog_median" in p:
        out["cog_per_line_median"] = score(p["feh_cog_median"].to_numpy(float)[head], truth[head], n_boot=n_boot,
                                           rng=rng)
    if ensemble is not None:
        out["weights"] = dict(ensemble.weights_)
        out["oof_mse"] = dict(ensemble.oof_mse_)
        out["calibration"] = dict(ensemble.calibration_)
        params = ensemble.get_params(deep=False)
        out["ensemble_params"] = {k: dict(v or {}) if k in ("rf", "xgb", "dnn") else v
                                  for k, v in params.items() if k != "progress"}
    err = p["feh_err"].to_numpy(float)
    resid = p["feh"].to_numpy(float) - truth
    out["coverage_68"] = float(np.mean(np.abs(resid[head]) <= err[head])) if head.any() else None
    out["coverage_68_detected"] = float(np.mean(np.abs(resid[detected]) <= err[detected])) if detected.any() else None
    out["coverage_95"] = float(np.mean(np.abs(resid[head]) <= 1.96 * err[head])) if head.any() else None
    out["upper_limits_hold"] = upper_limits_hold(p)
    if head.sum() > 2:
        t = stats.ttest_1samp(resid[head], 0.0)
        out["bias_ttest"] = {"subset": "headline", "n": int(head.sum()), "mean": float(resid[head].mean()),
                             "t": float(t.statistic), "p": float(t.pvalue)}
    out["by_snr"] = _bins(p, "snr", SNR_BINS, detected)
    out["by_feh"] = _bins(p, "true_feh", FEH_BINS, detected)
    out["by_teff"] = _bins(p, "true_teff", TEFF_BINS, detected)
    out["by_feh_snr"] = _grid(p, detected, min_grid_stars)
    if oof is not None:
        o = oof.reset_index(drop=True)
        out["by_feh_snr_oof"] = _grid(o, flag_detected(o["flag"]), min_grid_stars)
    det_frame = detections if detections is not None else pd.DataFrame(
        {"true_feh": truth, "snr": snr, "cog_signal_sigma": p.get("cog_signal_sigma", pd.Series(np.where(
            detected, 99.0, 0.0)))})
    out["lowest_feh"] = lowest_feh(det_frame)
    if ablation is not None:
        abl = np.asarray(ablation["predictions"], float)
        s = score(abl[head], truth[head], n_boot=n_boot, rng=rng)
        out["ablation"] = {"without": list(ablation.get("without", [])), "subset": "headline", "ensemble": s,
                           "delta_mae": s["mae"] - models["ensemble"]["mae"] if "ensemble" in models else None,
                           **({"weights": ablation["weights"]} if "weights" in ablation else {})}
    if "feh_ext" in p and head.any():
        d = p["feh"].to_numpy(float)[head] - p["feh_ext"].to_numpy(float)[head]
        d = d[np.isfinite(d)]
        t = stats.ttest_1samp(d, 0.0) if d.size > 2 else None
        out["cross_survey"] = {"label": "feh_ext", "subset": "headline", "n": int(d.size),
                               "bias": float(d.mean()) if d.size else None,
                               "scatter": float(d.std(ddof=1)) if d.size > 1 else None,
                               "mae": float(np.abs(d).mean()) if d.size else None,
                               "t": float(t.statistic) if t is not None else None,
                               "p": float(t.pvalue) if t is not None else None,
                               "note": "prediction minus the external survey's [Fe/H] (feh_ext); on the synthetic "
                                       "benchmark feh_ext is truth + 0.015 +- 0.04 dex"}
    if param_errors is not None:
        out["param_errors"] = dict(param_errors)
    out["targets"] = targets(out, p, head)
    return out


#: Other surveys' [Fe/H] a labelled table may carry: the name fehkit gives each, the names it is found under
#: (case-insensitive) and what it is. ASPCAP's DR17 grid stops at [M/H] = -2.5: its values are empty below.
CROSS_SURVEY_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "aspcap_fe_h": (("aspcap_fe_h", "fe_h"), "ASPCAP [Fe/H] (APOGEE DR17 allStar FE_H)"),
    "aspcap_m_h": (("aspcap_m_h", "m_h"), "ASPCAP [M/H] (APOGEE DR17 allStar M_H)"),
    "galah_fe_h": (("galah_fe_h", "feh_galah", "fe_h_galah"), "GALAH [Fe/H]"),
}
#: Bins of the reference [Fe/H] for the cross-survey comparison (open at both ends).
CROSS_FEH_BINS: tuple[tuple[float | None, float | None], ...] = (
    (None, -3.0), (-3.0, -2.5), (-2.5, -2.0), (-2.0, -1.5), (-1.5, -1.0), (-1.0, None))


def cross_survey_columns(columns: Sequence[str]) -> dict[str, str]:
    """Find the other surveys' [Fe/H] among ``columns``: {fehkit's name: the column's name}.

    Examples
    --------
    >>> cross_survey_columns(["file", "feh_ref", "FE_H", "feh_galah"])
    {'aspcap_fe_h': 'FE_H', 'galah_fe_h': 'feh_galah'}
    """
    lower = {str(c).lower(): str(c) for c in columns}
    found = {}
    for name, (aliases, _) in CROSS_SURVEY_COLUMNS.items():
        for alias in aliases:
            if alias in lower:
                found[name] = lower[alias]
                break
    return found


def cross_survey_real(pred: pd.DataFrame, columns: Sequence[str], *, reference: str = "feh_ref") -> dict:
    """Compare fehkit's [Fe/H] with other surveys' values of the same stars: bias, scatter, by [Fe/H] bin.

    For each column of ``columns`` (e.g. ``aspcap_fe_h``, ``galah_fe_h``): over the stars with a measured
    ``feh`` (not an upper limit) and a value in that column, the mean (``bias``), standard deviation
    (``scatter``) and mean absolute value (``mae``) of ``feh - column``, the same for the reference labels
    (``bias_ref``, ``scatter_ref``: how far the reference itself is from that survey), ``n_missing`` (stars with
    no value there: ASPCAP is empty below [M/H] = -2.5) and ``by_feh`` (bins of the reference [Fe/H]).
    """
    measured = flag_detected(pred["flag"])  # a measured [Fe/H]: not an upper limit, not without lines
    feh = pred["feh"].to_numpy(float)
    ref = pred[reference].to_numpy(float)
    out = {}
    for col in columns:
        other = pred[col].to_numpy(float)
        has = np.isfinite(other)
        sel = measured & has & np.isfinite(feh)
        d, dr = feh[sel] - other[sel], ref[sel] - other[sel]
        bins = []
        for lo, hi in CROSS_FEH_BINS:
            b = sel & (ref >= (lo if lo is not None else -np.inf)) & (ref < (hi if hi is not None else np.inf))
            db = feh[b] - other[b]
            bins.append({"lo": lo, "hi": hi, "n": int(b.sum()), "bias": float(db.mean()) if db.size else None,
                         "scatter": float(db.std(ddof=1)) if db.size > 1 else None})
        out[col] = {"label": CROSS_SURVEY_COLUMNS.get(col, ((), col))[1], "n": int(sel.sum()),
                    "n_missing": int((~has).sum()), "n_upper_limits": int((has & ~measured).sum()),
                    "bias": float(d.mean()) if d.size else None,
                    "scatter": float(d.std(ddof=1)) if d.size > 1 else None,
                    "mae": float(np.abs(d).mean()) if d.size else None,
                    "bias_ref": float(dr.mean()) if dr.size else None,
                    "scatter_ref": float(dr.std(ddof=1)) if dr.size > 1 else None,
                    "by_feh": bins,
                    "note": f"feh - {col} over stars with a measured feh and a {col} value; bins of {reference}"}
    return out


def score(pred: np.ndarray, truth: np.ndarray, *, n_boot: int = 1000,
          rng: np.random.Generator | None = None) -> dict:
    """MAE, MSE, scatter, bias and r of ``pred - truth`` (finite pairs), with bootstrap 95% intervals.

    Examples
    --------
    >>> s = score(np.array([0.1, 0.0, -0.1, 0.2]), np.array([0.0, 0.0, 0.0, 0.1]), n_boot=100)
    >>> round(s["mae"], 3), round(s["bias"], 3)
    (0.075, 0.025)
    """
    rng = rng or np.random.default_rng(0)
    ok = np.isfinite(pred) & np.isfinite(truth)
    x, y = np.asarray(pred, float)[ok], np.asarray(truth, float)[ok]
    n = len(x)
    if n == 0:
        return {"n": 0, "mae": None, "mse": None, "scatter": None, "bias": None, "r": None, "mae_ci95": None,
                "bias_ci95": None, "r_ci95": None}
    d = x - y
    out = {"n": int(n), "mae": float(np.abs(d).mean()), "mse": float(np.mean(d ** 2)),
           "scatter": float(d.std(ddof=1)) if n > 1 else 0.0, "bias": float(d.mean()), "r": _pearson(x, y)}
    idx = rng.integers(0, n, size=(n_boot, n))
    db = d[idx]
    xb, yb = x[idx], y[idx]
    xc, yc = xb - xb.mean(1, keepdims=True), yb - yb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rb = (xc * yc).sum(1) / np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    out["mae_ci95"] = _ci(np.abs(db).mean(1))
    out["bias_ci95"] = _ci(db.mean(1))
    out["r_ci95"] = _ci(rb)
    return out


def lowest_feh(stars: pd.DataFrame, detection_sigma: float = 3.0) -> list[dict]:
    """Lowest true [Fe/H] still detected near S/N 50, 100 and 200, and where half the stars are detected.

    ``feh_50pct`` is where a logistic fit of detection against true [Fe/H] crosses one half;
    ``feh_50pct_per_line`` the same for "at least one line detected on its own" (what the per-line method needs),
    when ``stars`` has ``cog_median_n_lines``.
    """
    rows = []
    feh = stars["true_feh"].to_numpy(float)
    snr = stars["snr"].to_numpy(float)
    det = stars["cog_signal_sigma"].to_numpy(float) >= detection_sigma
    for nominal, (lo, hi) in LOWEST_FEH_SNR.items():
        sel = (snr >= lo) & (snr < (hi if hi is not None else np.inf))
        row = {"snr": nominal, "snr_lo": lo, "snr_hi": hi, "n": int(sel.sum()), "n_detected": int(det[sel].sum()),
               "lowest_detected_feh": float(feh[sel & det].min()) if (sel & det).any() else None,
               "feh_50pct": _half_point(feh[sel], det[sel])}
        if "cog_median_n_lines" in stars:
            # the per-line method needs one line detected on its own: how much lower the joint likelihood reaches
            one = stars["cog_median_n_lines"].to_numpy() > 0
            row["feh_50pct_per_line"] = _half_point(feh[sel], one[sel])
        rows.append(row)
    return rows


def upper_limits_hold(pred: pd.DataFrame) -> dict:
    """How many 3-sigma upper limits hold: stars flagged ``upper_limit`` whose truth is at or below ``feh_upper``.

    A one-sided 3-sigma limit should hold for ~99.9% of the stars if the likelihood behind it were exact.
    Returns ``n`` (stars flagged upper_limit with a finite ``feh_upper`` and truth), ``n_hold`` and ``fraction``
    (None when ``n`` is 0).

    Examples
    --------
    >>> t = pd.DataFrame({"flag": ["ok", "upper_limit", "upper_limit", "upper_limit;grid_edge"],
    ...                   "feh_upper": [np.nan, -3.0, -3.5, -3.2], "true_feh": [-2.0, -3.4, -3.2, -3.9]})
    >>> upper_limits_hold(t)
    {'n': 3, 'n_hold': 2, 'fraction': 0.6666666666666666}
    """
    if "feh_upper" not in pred or "flag" not in pred:
        return {"n": 0, "n_hold": 0, "fraction": None}
    limit = pred["feh_upper"].to_numpy(float)
    truth = pred["true_feh"].to_numpy(float)
    sel = has_flag(pred["flag"], "upper_limit") & np.isfinite(limit) & np.isfinite(truth)
    n, hold = int(sel.sum()), int((truth[sel] <= limit[sel]).sum())
    return {"n": n, "n_hold": hold, "fraction": hold / n if n else None}


def targets(metrics: Mapping[str, Any], pred: pd.DataFrame, head: np.ndarray) -> list[dict]:
    """List the method's targets (:data:`TARGETS`; docs/targets.md): met or missed, and where.

    Returns one dict per target that could be measured, in the order of :data:`TARGETS`: ``name``, ``value``,
    ``target`` (the goal as text), ``met`` (None when the value is undefined) and ``note``.
    """
    m = metrics["models"]
    out = []
    ens = m.get("ensemble", {})

    def add(key: str, value: Any, met: bool | None, note: str = "", target: str | None = None) -> None:
        t = TARGET[key]
        out.append({"name": t.name, "value": value, "target": target or t.text(), "met": met, "note": note})

    if ens.get("n"):
        t = TARGET["headline_mae"]
        add(t.key, ens["mae"], t.met(ens["mae"]))
        t = TARGET["headline_bias"]
        met = t.met(abs(ens["bias"]))
        add(t.key, abs(ens["bias"]), met, "" if met else f"bias 95% CI {ens['bias_ci95']}")
        t = TARGET["headline_r"]
        add(t.key, ens["r"], t.met(ens["r"]),
            "" if ens["r"] is not None else "fewer than 3 headline stars, or no spread: r is undefined")
        truth = pred["true_feh"].to_numpy(float)
        t = TARGET["mae_feh_above"]
        hi = head & (truth > t.feh_above)
        if hi.any():
            mae_hi = float(np.abs(pred["feh"].to_numpy(float)[hi] - truth[hi]).mean())
            met = t.met(mae_hi)
            add(t.key, mae_hi, met, "" if met else t.note_if_missed)
        members = {k: m[k]["mae"] for k in ("rf", "xgb", "dnn") if k in m and m[k].get("mae") is not None}
        if members:
            t = TARGET["ensemble_vs_members"]
            best = min(members, key=members.get)
            lo, hi = _paired_mae_ci(pred["feh"].to_numpy(float)[head], pred[MODEL_COLUMNS[best]].to_numpy(float)[head],
                                    truth[head])
            add(t.key, ens["mae"], t.met(ens["mae"], members[best]),
                f"MAE(ensemble) - MAE({best}) = {ens['mae'] - members[best]:+.4f} dex, paired bootstrap 95% CI "
                f"[{lo:+.4f}, {hi:+.4f}]", target=t.text(members[best], best))
    for key in ("coverage_68", "coverage_95"):
        cov = metrics.get(key)
        if cov is not None:
            met = TARGET[key].met(cov)
            n = metrics.get("n_headline") or 0
            level = 0.683 if key == "coverage_68" else 0.95
            sd = np.sqrt(level * (1 - level) / n) if n else None
            add(key, cov, met, "" if met or not sd else
                f"{n} headline stars: a calibrated {level:.3g} scatters by {sd:.3f} (binomial); this is "
                f"{(cov - level) / sd:+.1f} of that")
    for key, grid in (("ensemble_vs_cog_test", "by_feh_snr"), ("ensemble_vs_cog_oof", "by_feh_snr_oof")):
        cells = [c for c in metrics.get(grid, []) if c["checked"]]
        if cells:
            missed = [c for c in cells if not c["meets"]]
            note = "; ".join(f"[Fe/H] {c['feh_lo']}..{c['feh_hi']}, S/N {c['snr_lo']}-{c['snr_hi'] or ''}: "
                             f"{c['mae']:.3f} vs {c['mae_cog']:.3f} (n={c['n_detected']}, ratio {c['ratio']:.2f}, "
                             f"95% CI {c['ratio_ci95'][0]:.2f}-{c['ratio_ci95'][1]:.2f})" for c in missed)
            add(key, f"{len(cells) - len(missed)} of {len(cells)} bins", not missed, note)
    return out


# ---------------------------------------------------------------------------------------------------------------
def _bins(p: pd.DataFrame, col: str, edges: Sequence[tuple[float | None, float | None]],
          detected: np.ndarray) -> list[dict]:
    x = p[col].to_numpy(float)
    truth = p["true_feh"].to_numpy(float)
    rows = []
    for lo, hi in edges:
        sel = (x >= (lo if lo is not None else -np.inf)) & (x < (hi if hi is not None else np.inf))
        d = sel & detected
        row = {"lo": lo, "hi": hi, "n": int(sel.sum()), "n_detected": int(d.sum()),
               "n_upper_limits": int((sel & ~detected).sum())}
        row["mae"] = _mae(p["feh"], truth, d)
        row["bias"] = float(np.mean(p["feh"].to_numpy(float)[d] - truth[d])) if d.any() else None
        row["coverage_68"], row["coverage_95"] = _coverage(p, truth, d)
        for name, c in MODEL_COLUMNS.items():
            if name != "ensemble" and c in p:
                row[f"mae_{name}"] = _mae(p[c], truth, d)
        if "feh_cog_median" in p:
            row["mae_cog_median"] = _mae(p["feh_cog_median"], truth, d)
        rows.append(row)
    return rows


def _coverage(p: pd.DataFrame, truth: np.ndarray, sel: np.ndarray) -> tuple[float | None, float | None]:
    """Fractions of the selected stars with |feh - truth| within feh_err and within 1.96 feh_err."""
    if "feh_err" not in p:
        return None, None
    d = np.abs(p["feh"].to_numpy(float)[sel] - truth[sel])
    e = p["feh_err"].to_numpy(float)[sel]
    ok = np.isfinite(d) & np.isfinite(e)
    if not ok.any():
        return None, None
    return float(np.mean(d[ok] <= e[ok])), float(np.mean(d[ok] <= 1.96 * e[ok]))


def _grid(p: pd.DataFrame, detected: np.ndarray, min_stars: int) -> list[dict]:
    truth = p["true_feh"].to_numpy(float)
    snr = p["snr"].to_numpy(float)
    rows = []
    for flo, fhi in FEH_BINS:
        for slo, shi in GRID_SNR_BINS:
            sel = (truth >= flo) & (truth < fhi) & (snr >= slo) & (snr < (shi if shi is not None else np.inf))
            d = sel & detected
            mae, mae_cog = _mae(p["feh"], truth, d), _mae(p["feh_cog"], truth, d)
            checked = bool(d.sum() >= min_stars)
            ratio = mae / mae_cog if mae is not None and mae_cog else None
            rows.append({"feh_lo": float(flo), "feh_hi": float(fhi), "snr_lo": slo, "snr_hi": shi, "n": int(sel.sum()),
                         "n_detected": int(d.sum()), "mae": mae, "mae_cog": mae_cog, "ratio": ratio,
                         "ratio_ci95": _paired_ratio_ci(p["feh"].to_numpy(float)[d], p["feh_cog"].to_numpy(float)[d],
                                                        truth[d]) if checked else None,
                         "checked": checked,
                         "meets": TARGET["ensemble_vs_cog_test"].met(ratio) if checked and ratio is not None else None})
    return rows


def _paired_mae_ci(a: np.ndarray, b: np.ndarray, truth: np.ndarray, n_boot: int = 1000) -> tuple[float, float]:
    """95% interval of MAE(a) - MAE(b) over the same bootstrap resamples of the stars."""
    ea, eb = np.abs(a - truth), np.abs(b - truth)
    idx = np.random.default_rng(1).integers(0, len(ea), size=(n_boot, len(ea)))
    d = ea[idx].mean(1) - eb[idx].mean(1)
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def _paired_ratio_ci(a: np.ndarray, b: np.ndarray, truth: np.ndarray, n_boot: int = 1000) -> list[float] | None:
    """95% interval of MAE(a) / MAE(b) over the same bootstrap resamples of the stars (how noisy a cell is)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ea, eb = np.abs(a[ok] - truth[ok]), np.abs(b[ok] - truth[ok])
    idx = np.random.default_rng(2).integers(0, len(ea), size=(n_boot, len(ea)))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ea[idx].mean(1) / eb[idx].mean(1)
    return _ci(r)


def _mae(col: pd.Series, truth: np.ndarray, sel: np.ndarray) -> float | None:
    v = col.to_numpy(float)[sel] - truth[sel]
    v = v[np.isfinite(v)]
    return float(np.abs(v).mean()) if v.size else None


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ci(v: np.ndarray) -> list[float] | None:
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None


def _half_point(feh: np.ndarray, det: np.ndarray) -> float | None:
    """[Fe/H] where P(detected) = 1/2 from a logistic fit; None when it is outside the data or cannot be fitted."""
    if len(feh) < 10 or det.all() or not det.any():
        return None
    from scipy.optimize import minimize

    def nll(q: np.ndarray) -> float:
        z = np.clip(q[1] * (feh - q[0]), -30, 30)
        return float(np.sum(np.logaddexp(0, -z) * det + np.logaddexp(0, z) * ~det))

    res = minimize(nll, x0=np.array([float(np.median(feh)), 5.0]), method="Nelder-Mead")
    half = float(res.x[0])
    return half if res.success and feh.min() <= half <= feh.max() and res.x[1] > 0 else None
