"""The error model of FeHEnsemble and how metrics.json checks it: a floor that cannot collapse, a Student-t fit that
sees through the labels' own noise, coverage at 68% and 95% (overall and per bin), and the upper limits that hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fehkit.evaluate import TARGET, evaluate, upper_limits_hold
from fehkit.models.ensemble import ERR_FLOOR, FeHEnsemble


def _calibrated(resid: np.ndarray, v: np.ndarray, label_error: float) -> FeHEnsemble:
    ens = FeHEnsemble(label_error=label_error)
    ens.calibration_ = ens._calibrate(resid, v, np.ones(len(resid), bool), label_error ** 2)
    return ens


def test_the_floor_does_not_collapse_when_the_residuals_are_tiny():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.0, 1e-4, 400)  # classical errors of at most 0.01 dex
    ens = _calibrated(rng.normal(0, 1e-4, 400), v, 0.0)
    c = ens.calibration_
    assert c["floor"] >= ERR_FLOOR and c["floor_min"] == ERR_FLOOR
    err = np.sqrt(c["scale"] ** 2 * np.r_[v, 0.0] + c["floor"] ** 2)
    assert err.min() >= ERR_FLOOR


def test_heavy_tailed_errors_under_noisy_labels_are_covered_at_68_and_95_percent():
    """True errors Student-t (nu = 5) with per-star scales, labels with 0.05 dex of their own noise."""
    rng = np.random.default_rng(1)
    n = 4000
    v = rng.uniform(0.03, 0.12, n) ** 2
    scale = np.sqrt(v + 0.03 ** 2)
    true_err = scale * rng.standard_t(5, n)
    ens = _calibrated(true_err + rng.normal(0, 0.05, n), v, 0.05)
    c = ens.calibration_
    assert 3 <= c["tail_nu"] <= 12
    err = np.sqrt(c["scale"] ** 2 * v + c["floor"] ** 2)
    cov68, cov95 = np.mean(np.abs(true_err) <= err), np.mean(np.abs(true_err) <= 1.96 * err)
    # +-feh_err is the 68.3% interval; with t tails +-1.96 feh_err holds less than 95%, as the model says
    assert cov68 == pytest.approx(0.683, abs=0.02) and c["oof_coverage_68"] == pytest.approx(0.683, abs=1e-3)
    assert cov95 == pytest.approx(c["oof_coverage_95"], abs=0.015) and cov95 < 0.94
    # err95_factor: the 95% half-width of the fitted t in units of feh_err
    assert np.mean(np.abs(true_err) <= c["err95_factor"] * err) == pytest.approx(0.95, abs=0.015)


def test_gaussian_errors_get_a_gaussian_model():
    rng = np.random.default_rng(2)
    v = rng.uniform(0.03, 0.1, 3000) ** 2
    true_err = np.sqrt(v) * rng.normal(size=3000)
    c = _calibrated(true_err + rng.normal(0, 0.05, 3000), v, 0.05).calibration_
    assert c["tail_nu"] >= 20 and c["coverage_rescale"] == pytest.approx(1.0, abs=0.05)
    assert c["ml_scale"] == pytest.approx(1.0, abs=0.1)


def _table() -> pd.DataFrame:
    """Ten headline stars in two [Fe/H] bins, errors 0.1 dex, and three upper limits (two hold)."""
    truth = np.r_[np.full(5, -2.2), np.full(5, -1.7), -3.5, -3.8, -3.6]
    resid = np.r_[0.05, -0.05, 0.15, 0.25, -0.08, 0.02, -0.12, 0.19, 0.01, -0.3, 0.0, 0.0, 0.0]
    upper = np.r_[np.zeros(10, bool), np.ones(3, bool)]
    return pd.DataFrame({"feh": np.where(upper, np.nan, truth + resid), "feh_err": np.where(upper, np.nan, 0.1),
                         "feh_upper": np.where(upper, np.r_[np.full(10, np.nan), -3.4, -3.7, -3.7], np.nan),
                         "feh_cog": truth + resid, "flag": np.where(upper, "upper_limit", "ok"),
                         "true_feh": truth, "true_teff": 4800.0, "snr": 100.0})


def test_metrics_report_coverage_95_per_bin_and_upper_limits_that_hold():
    m = evaluate(_table(), n_boot=20)
    assert m["coverage_68"] == pytest.approx(5 / 10) and m["coverage_95"] == pytest.approx(8 / 10)
    assert 0 <= m["coverage_95"] <= 1
    by_feh = {b["lo"]: b for b in m["by_feh"]}
    assert by_feh[-2.5]["coverage_68"] == pytest.approx(3 / 5) and by_feh[-2.5]["coverage_95"] == pytest.approx(4 / 5)
    assert by_feh[-2.0]["coverage_68"] == pytest.approx(2 / 5) and by_feh[-2.0]["coverage_95"] == pytest.approx(4 / 5)
    assert by_feh[-4.0]["coverage_68"] is None  # upper limits only: no measurement to cover
    assert all({"coverage_68", "coverage_95"} <= set(b) for b in m["by_snr"])
    # -3.5 <= -3.4 and -3.8 <= -3.7 hold; -3.6 > -3.7 does not
    assert m["upper_limits_hold"] == {"n": 3, "n_hold": 2, "fraction": pytest.approx(2 / 3)}
    t = {r["name"]: r for r in m["targets"]}
    assert t["coverage_68"]["met"] is False and "binomial" in t["coverage_68"]["note"]
    assert t["coverage_95"]["met"] is False and t["coverage_95"]["target"] == "0.92-0.98"


def test_coverage_against_noisy_labels_adds_the_label_errors():
    """Scored against reference labels with errors, feh and the label must agree within both errors."""
    t = _table().rename(columns={"true_feh": "feh_ref"}).assign(teff=4800.0)
    alone = evaluate(t, n_boot=20, truth_column="feh_ref")  # no label errors given: feh_err alone
    assert alone["coverage_68"] == pytest.approx(5 / 10) and alone["coverage_errors"] == "feh_err"
    # 0.1 dex label errors: |resid| <= hypot(0.1, 0.1) = 0.141 holds for 6 of the 10 headline stars (0.12 joins)
    m = evaluate(t.assign(feh_ref_err=0.1), n_boot=20, truth_column="feh_ref")
    assert m["coverage_68"] == pytest.approx(6 / 10) and "quadrature" in m["coverage_errors"]
    assert evaluate(_table(), n_boot=20)["coverage_errors"] == "feh_err"  # the simulated truth has no error


def test_upper_limits_hold_reads_combined_flags_and_skips_missing_limits():
    t = pd.DataFrame({"flag": ["upper_limit;grid_edge", "upper_limit", "ok", "no_usable_lines"],
                      "feh_upper": [-3.0, np.nan, np.nan, np.nan], "true_feh": [-3.1, -4.0, -2.0, -4.0]})
    assert upper_limits_hold(t) == {"n": 1, "n_hold": 1, "fraction": 1.0}
    assert upper_limits_hold(t.iloc[2:])["fraction"] is None


def test_the_coverage_targets_are_the_binomial_bands():
    assert TARGET["coverage_68"].goal == (0.62, 0.74) and TARGET["coverage_95"].goal == (0.92, 0.98)
    assert TARGET["coverage_68"].met(0.70) and not TARGET["coverage_95"].met(0.91)
