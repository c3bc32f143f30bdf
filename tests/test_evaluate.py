"""Scoring [Fe/H] predictions (fehkit.evaluate) on hand-made numbers, and the demo's outputs end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fehkit.benchmark import run_benchmark, write_outputs
from fehkit.errors import FehkitWarning
from fehkit.evaluate import HEADLINE, evaluate, lowest_feh, score
from fehkit.files import jsonable
from fehkit.flags import detected, has_flag
from fehkit.models import FeHEnsemble

TINY = dict(rf={"n_estimators": 30}, xgb={"n_estimators": 30}, dnn={"max_epochs": 30, "hidden": (32, 16)},
            n_folds=3)
PREDICT_COLUMNS = ["feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "flag", "flag_reason"]
MODELS = ("rf", "xgb", "dnn", "ensemble", "cog")


# -- score ------------------------------------------------------------------------------------------------------------
def test_score_on_known_numbers():
    pred = np.array([0.1, 0.0, -0.1, 0.2, np.nan, 0.3])
    truth = np.array([0.0, 0.0, 0.0, 0.1, 0.0, np.nan])
    s = score(pred, truth, n_boot=200)
    d = np.array([0.1, 0.0, -0.1, 0.1])
    assert s["n"] == 4  # only the finite pairs count
    assert s["mae"] == pytest.approx(0.075)
    assert s["bias"] == pytest.approx(0.025)
    assert s["mse"] == pytest.approx(0.0075)
    assert s["scatter"] == pytest.approx(d.std(ddof=1))
    assert s["r"] == pytest.approx(np.corrcoef(pred[:4], truth[:4])[0, 1])
    for key, ci in (("mae", "mae_ci95"), ("bias", "bias_ci95"), ("r", "r_ci95")):
        assert ci in s and s[ci][0] <= s[key] <= s[ci][1], key


def test_score_interval_narrows_with_more_stars():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-4, -1, 2000)
    pred = truth + rng.normal(0.02, 0.1, truth.size)
    few, many = score(pred[:50], truth[:50]), score(pred, truth)
    width = lambda s: s["mae_ci95"][1] - s["mae_ci95"][0]  # noqa: E731
    assert width(many) < width(few) / 3
    assert many["mae_ci95"][0] <= 0.1 * np.sqrt(2 / np.pi) <= many["mae_ci95"][1]
    assert many["bias_ci95"][0] <= 0.02 <= many["bias_ci95"][1]


def test_score_of_nothing_is_none_and_r_needs_three_stars():
    empty = score(np.array([np.nan]), np.array([1.0]))
    assert empty["n"] == 0 and empty["mae"] is None and empty["mae_ci95"] is None
    two = score(np.array([1.0, 2.0]), np.array([1.1, 2.1]))
    assert two["n"] == 2 and two["r"] is None and two["mae"] == pytest.approx(0.1)


# -- evaluate on a hand-built prediction table ------------------------------------------------------------------------
#: Six headline stars (detected, S/N >= 50), two detected at low S/N, three upper limits wildly off their truth.
HEAD_TRUTH = np.array([-4.2, -3.7, -3.1, -2.6, -2.2, -1.6])
HEAD_RESID = np.array([0.1, -0.1, 0.05, -0.05, 0.2, 0.0])
HEAD_ERR = np.array([0.12, 0.05, 0.10, 0.10, 0.10, 0.10])  # |resid| <= err for 4 of 6


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    truth = np.r_[HEAD_TRUTH, [-2.4, -3.4], [-4.4, -4.1, -3.3]]
    feh = np.r_[HEAD_TRUTH + HEAD_RESID, [-2.3, -3.55], [-2.0, -2.0, -2.0]]
    flag = ["ok"] * 8 + ["upper_limit"] * 3
    snr = np.r_[[60, 80, 120, 200, 55, 300], [35, 45], [35, 55, 120]]
    t = pd.DataFrame({"feh": feh, "feh_err": np.r_[HEAD_ERR, [0.2, 0.2], [0.3, 0.3, 0.3]], "flag": flag,
                      "true_feh": truth, "true_teff": np.r_[np.full(8, 4800.0), [4300.0, 5200.0, 5600.0]],
                      "snr": snr.astype(float)})
    t["feh_upper"] = np.where(has_flag(t["flag"], "upper_limit"), -3.0, np.nan)
    t["feh_rf"] = t["feh"] + 0.01
    t["feh_xgb"] = t["feh"] - 0.02
    t["feh_dnn"] = t["feh"] + 0.03
    t["feh_cog"] = t["true_feh"] + 0.1
    t["feh_cog_median"] = t["true_feh"] - 0.2
    t["cog_signal_sigma"] = np.where(detected(t["flag"]), 10.0, 1.0)
    t["feh_ext"] = t["true_feh"] + 0.015
    return t


@pytest.fixture(scope="module")
def metrics(table) -> dict:
    return evaluate(table, n_boot=200)


def test_models_block_covers_only_the_headline_subset(metrics):
    assert metrics["headline_subset"] == HEADLINE
    assert metrics["n_test"] == 11 and metrics["n_headline"] == 6 and metrics["n_upper_limits"] == 3
    assert set(metrics["models"]) == set(MODELS)
    ens = metrics["models"]["ensemble"]
    assert ens["n"] == 6
    # the upper limits are 1.3-2.4 dex off and the low-S/N stars 0.1-0.15 dex: neither is in here
    assert ens["mae"] == pytest.approx(np.abs(HEAD_RESID).mean())
    assert ens["bias"] == pytest.approx(HEAD_RESID.mean())
    assert metrics["models"]["rf"]["bias"] == pytest.approx(HEAD_RESID.mean() + 0.01)
    assert metrics["models"]["cog"]["mae"] == pytest.approx(0.1)
    assert metrics["cog_per_line_median"]["mae"] == pytest.approx(0.2)


def test_coverage_is_the_fraction_inside_the_error_bars(metrics):
    assert metrics["coverage_68"] == pytest.approx(4 / 6)
    assert metrics["coverage_68_detected"] == pytest.approx(6 / 8)  # the two low-S/N stars are inside 0.2 dex
    assert metrics["coverage_95"] == pytest.approx(4 / 6)  # 0.1 > 1.96 x 0.05 and 0.2 > 1.96 x 0.1


def test_bias_t_test_is_on_the_headline_residuals(metrics):
    t = metrics["bias_ttest"]
    ref = stats.ttest_1samp(HEAD_RESID, 0.0)
    assert t["n"] == 6 and t["mean"] == pytest.approx(HEAD_RESID.mean())
    assert t["t"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)


def test_bins_count_upper_limits_but_average_only_detected_stars(metrics, table):
    by_snr = {(b["lo"], b["hi"]): b for b in metrics["by_snr"]}
    low = by_snr[(30, 40)]  # one detected star at S/N 35 (0.1 dex off) and one upper limit
    assert (low["n"], low["n_detected"], low["n_upper_limits"]) == (2, 1, 1)
    assert low["mae"] == pytest.approx(0.1) and low["bias"] == pytest.approx(0.1)
    mid = by_snr[(40, 65)]  # S/N 60, 55 (headline), 45 (detected) and 55 (upper limit)
    assert (mid["n"], mid["n_upper_limits"]) == (4, 1)
    assert mid["mae"] == pytest.approx(np.mean([0.1, 0.2, 0.15]))
    high = [by_snr[(100, 150)], by_snr[(150, None)]]  # the bins do not overlap: S/N >= 100 is these two
    assert sum(b["n"] for b in high) == 4 and sum(b["n_upper_limits"] for b in high) == 1
    edges = [(b["lo"], b["hi"]) for b in metrics["by_snr"]]
    assert all(hi == next_lo for (_, hi), (next_lo, _) in zip(edges, edges[1:], strict=False))
    for row in metrics["by_snr"] + metrics["by_feh"]:
        assert {"lo", "hi", "n", "n_upper_limits", "mae", "bias", "mae_cog"} <= set(row)
    assert sum(b["n"] for b in metrics["by_feh"]) == 11
    assert sum(b["n_upper_limits"] for b in metrics["by_feh"]) == 3
    by_feh = {b["lo"]: b for b in metrics["by_feh"]}
    assert by_feh[-4.5]["n_upper_limits"] == 2 and by_feh[-4.5]["mae"] == pytest.approx(0.1)
    assert by_feh[-4.5]["mae_cog"] == pytest.approx(0.1)


def test_targets_mark_a_missed_target(metrics):
    targets = {t["name"]: t for t in metrics["targets"]}
    mae = targets["headline MAE (dex)"]
    assert mae["value"] == pytest.approx(0.0833, abs=1e-4) and mae["met"] is False  # target <= 0.08
    assert targets["headline |bias| (dex)"]["met"] is False and "95% CI" in targets["headline |bias| (dex)"]["note"]
    assert targets["coverage_68"]["met"] is True
    assert all(set(t) == {"name", "value", "target", "met", "note"} for t in metrics["targets"])


def test_a_perfect_table_meets_its_targets(table):
    perfect = table.copy()
    for c in ("feh", "feh_rf", "feh_xgb", "feh_dnn"):
        perfect[c] = perfect["true_feh"]
    perfect["feh_err"] = 0.01
    targets = {t["name"]: t for t in evaluate(perfect, n_boot=50)["targets"]}
    assert targets["headline MAE (dex)"]["met"] and targets["headline r"]["met"]
    assert targets["coverage_68"]["met"] is False  # every error bar holds the truth: 100%, not 68%


def test_cross_survey_and_ablation_blocks(table):
    abl = {"without": ["logg", "vmic"], "predictions": table["feh"].to_numpy() + 0.05, "weights": {"rf": 1.0}}
    m = evaluate(table, n_boot=50, ablation=abl)
    assert m["ablation"]["without"] == ["logg", "vmic"]
    assert m["ablation"]["ensemble"]["n"] == 6
    delta = m["ablation"]["ensemble"]["mae"] - m["models"]["ensemble"]["mae"]
    assert m["ablation"]["delta_mae"] == pytest.approx(delta)
    cs = m["cross_survey"]
    assert cs["n"] == 6 and cs["bias"] == pytest.approx(HEAD_RESID.mean() - 0.015)


def test_a_test_set_with_two_headline_stars_is_scored():
    # too few stars for r: the targets must say "not known", not crash on None >= 0.98
    t = pd.DataFrame({"feh": [-2.0, -3.0, -2.5], "feh_err": 0.1, "flag": ["ok", "ok", "upper_limit"],
                      "true_feh": [-2.05, -2.9, -4.0], "true_teff": 4800.0, "snr": [80.0, 90.0, 40.0],
                      "feh_cog": [-2.0, -3.0, -6.5]})
    m = evaluate(t, n_boot=20)
    assert m["models"]["ensemble"]["n"] == 2 and m["models"]["ensemble"]["r"] is None
    r = [x for x in m["targets"] if x["name"] == "headline r"]
    assert not r or r[0]["met"] is None


def test_metrics_are_json_serializable(metrics):
    text = json.dumps(jsonable(metrics), allow_nan=False)
    back = json.loads(text)
    assert back["models"]["ensemble"]["n"] == 6 and back["synthetic"] is True


# -- lowest [Fe/H] reached --------------------------------------------------------------------------------------------
def test_lowest_feh_is_the_lowest_detected_star_in_each_snr_window():
    stars = pd.DataFrame({
        "true_feh": [-3.0, -3.5, -4.0, -2.0, -3.8, -4.3, -2.2, -4.6],
        "snr": [45.0, 60.0, 50.0, 64.0, 100.0, 90.0, 250.0, 70.0],
        "cog_signal_sigma": [8.0, 3.2, 2.9, 40.0, 4.0, 1.0, 2.0, 9.0],
    })
    rows = {r["snr"]: r for r in lowest_feh(stars)}
    assert rows[50]["lowest_detected_feh"] == -3.5 and (rows[50]["n"], rows[50]["n_detected"]) == (4, 3)
    assert rows[100]["lowest_detected_feh"] == -3.8  # -4.6 at S/N 70 is in no window
    assert rows[200]["lowest_detected_feh"] is None and rows[200]["n"] == 1
    assert all(r["feh_50pct"] is None for r in rows.values())  # too few stars to fit


def test_the_half_detection_point_follows_the_data():
    feh = np.round(np.arange(-4.5, -2.45, 0.1), 2)
    det = feh > -3.5
    det[feh == -3.6] = True  # some overlap, so the logistic fit has a finite slope
    det[feh == -3.3] = False
    stars = pd.DataFrame({"true_feh": feh, "snr": 100.0, "cog_signal_sigma": np.where(det, 5.0, 1.0)})
    half = {r["snr"]: r for r in lowest_feh(stars)}[100]["feh_50pct"]
    assert half is not None and -3.75 < half < -3.25


# -- end to end: the demo's outputs (docs/cli.md) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        run = run_benchmark(n_stars=250, seed=5, cannon=False, ablation=True, ensemble=TINY)
        out = write_outputs(run, tmp_path_factory.mktemp("demo") / "demo")
    return run, out


def test_demo_metrics_follow_the_contract(demo):
    run, out = demo
    m = json.loads((out / "metrics.json").read_text())
    assert m["synthetic"] is True and m["n_test"] == len(run.predictions) == 50
    assert m["headline_subset"] == HEADLINE and m["n_upper_limits"] == int((~detected(run.predictions["flag"])).sum())
    assert set(MODELS) <= set(m["models"])
    for name in MODELS:
        assert {"mae", "mse", "scatter", "bias", "r", "mae_ci95"} <= set(m["models"][name]), name
        assert m["models"][name]["n"] == m["n_headline"] > 0
    assert set(m["weights"]) == {"rf", "xgb", "dnn"} and sum(m["weights"].values()) == pytest.approx(1, abs=1e-5)
    assert 0 <= m["coverage_68"] <= 1
    for key in ("by_snr", "by_feh"):
        assert isinstance(m[key], list) and m[key]
        for row in m[key]:
            assert {"lo", "hi", "n", "n_upper_limits", "mae", "bias", "mae_cog"} <= set(row)
    assert m["ablation"]["without"] == ["logg", "vmic"] and m["ablation"]["ensemble"]["n"] == m["n_headline"]
    assert m["cross_survey"]["n"] == m["n_headline"]


def test_demo_predictions_carry_truth_and_reference_labels(demo):
    run, out = demo
    text = (out / "predictions.csv").read_text()
    assert text.startswith("#") and "SYNTHETIC" in text.splitlines()[0]
    pred = pd.read_csv(out / "predictions.csv", comment="#")
    need = PREDICT_COLUMNS + ["true_feh", "true_teff", "true_logg", "true_vmic", "snr", "teff_ref", "logg_ref",
                              "vmic_ref", "feh_ref"]
    assert set(need) <= set(pred.columns)
    upper = has_flag(pred["flag"], "upper_limit")
    assert len(pred) == 50 and not has_flag(pred["flag"], "no_usable_lines").any()
    assert np.isfinite(pred["feh_upper"][upper]).all()
    assert pred["feh_upper"][~upper].isna().all()


def test_demo_report_says_synthetic(demo):
    _, out = demo
    assert "SYNTHETIC" in (out / "report.html").read_text()


def test_demo_model_loads_back(demo):
    run, out = demo
    loaded = FeHEnsemble.load(out / "model")
    assert loaded.card_["synthetic"] is True and len(loaded.card_["training_set_sha256"]) == 64
    test = run.features.select(run.sim.truth["split"].to_numpy() == "test")
    again = loaded.predict(test)
    assert np.allclose(again["feh"], run.predictions["feh"], atol=1e-6, equal_nan=True)  # NaN: upper limits
