"""The [Fe/H] results page and its figures, built from a TEST FIXTURE (random, plausible numbers; no model ran).

Given a predictions table and a metrics dict shaped like the evaluation's output, the figure builders draw what
they promise (error envelope, upper limits apart, absent models skipped) and the page is one standalone, escaped,
well-formed HTML file that says SYNTHETIC exactly when the benchmark is simulated and marks missed targets.
"""

from __future__ import annotations

import html.parser
import math

import numpy as np
import pandas as pd
import pytest
from bokeh.models import Span

from fehkit.flags import detected, has_flag
from fehkit.plots import results as result_figures
from fehkit.plots import style
from fehkit.report.results import BANNER, feh_report


# ---------------------------------------------------------------------------------------------------------------
# TEST FIXTURE: a fake evaluation of 240 fake test stars. The numbers are random and merely plausible.
# ---------------------------------------------------------------------------------------------------------------
def fixture_predictions(n: int = 240, seed: int = 7, synthetic: bool = True, cannon: bool = True) -> pd.DataFrame:
    """A fake predictions.csv: EMP giants/dwarfs, S/N 20-400, undetected (upper-limit) stars at low [Fe/H] x S/N."""
    rng = np.random.default_rng(seed)
    true_feh = rng.uniform(-4.8, -1.0, n)
    snr = np.exp(rng.uniform(np.log(20), np.log(400), n))
    teff = rng.uniform(4000, 5600, n)
    # a made-up detection significance: grows with S/N and line strength (10**[Fe/H]), falls with Teff
    signal = snr * 10 ** (true_feh + 3.0) * np.exp(-(teff - 4000) / 1500) / 4
    upper = signal < 3
    err = 0.05 + 3.0 / snr + 0.05 * np.clip(-2.5 - true_feh, 0, None)
    ens = true_feh + rng.normal(0, err)

    def member(scale: float, bias: float) -> np.ndarray:
        return true_feh + bias + rng.normal(0, scale * err)

    pred = pd.DataFrame({
        "star_id": [f"SYN-{i:06d}" for i in range(n)],
        "feh": np.where(upper, np.nan, ens),
        "feh_err": np.where(upper, np.nan, err),
        "feh_upper": np.where(upper, true_feh + rng.uniform(0.3, 0.9, n), np.nan),
        "feh_rf": member(1.4, 0.02), "feh_xgb": member(1.3, -0.01), "feh_dnn": member(1.2, 0.0),
        "feh_cog": member(1.8, 0.05), "feh_cog_median": member(2.3, 0.08), "feh_cannon": member(2.0, -0.04),
        "n_lines": np.where(upper, 0, rng.integers(3, 40, n)),
        "flag": np.where(upper, "upper_limit", "ok"),
        "cog_signal_sigma": signal,
        "true_feh": true_feh, "true_teff": teff, "true_logg": rng.uniform(0.8, 4.6, n),
        "true_vmic": rng.uniform(1.0, 2.5, n), "snr": snr,
        "synthetic": synthetic,
    })
    pred["teff_ref"] = pred.true_teff + rng.normal(0, 100, n)
    pred["logg_ref"] = pred.true_logg + rng.normal(0, 0.2, n)
    pred["vmic_ref"] = pred.true_vmic + rng.normal(0, 0.2, n)
    pred["feh_ref"] = pred.true_feh + rng.normal(0, 0.05, n)
    pred["feh_ext"] = pred.true_feh + 0.07 + rng.normal(0, 0.15, n)
    return pred if cannon else pred.drop(columns="feh_cannon")


def _stats(resid: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> dict:
    mae = float(np.mean(np.abs(resid)))
    r = float(np.corrcoef(pred, truth)[0, 1])
    return {"n": int(resid.size), "mae": mae, "mse": float(np.mean(resid**2)), "scatter": float(np.std(resid)),
            "bias": float(np.mean(resid)), "r": r, "mae_ci95": [0.9 * mae, 1.12 * mae],
            "bias_ci95": [float(np.mean(resid)) - 0.02, float(np.mean(resid)) + 0.02], "r_ci95": [r - 0.01, r]}


def fixture_metrics(pred: pd.DataFrame, synthetic: bool = True) -> dict:
    """A fake metrics.json for ``pred``: stats on detected S/N >= 50 stars, fake CIs, two targets missed."""
    ok = detected(pred.flag) & (pred.snr >= 50)
    columns = {"rf": "feh_rf", "xgb": "feh_xgb", "dnn": "feh_dnn", "ensemble": "feh", "cog": "feh_cog",
               "cannon": "feh_cannon"}
    models = {k: _stats((pred[c] - pred.true_feh)[ok].to_numpy(), pred[c][ok].to_numpy(), pred.true_feh[ok].to_numpy())
              for k, c in columns.items() if c in pred}

    def bins(column: str, edges: list[float]) -> list[dict]:
        out = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (pred[column] >= lo) & (pred[column] < hi)
            det = sel & detected(pred.flag)
            row = {"lo": lo, "hi": None if math.isinf(hi) else hi, "n": int(sel.sum()),
                   "n_upper_limits": int((sel & ~det).sum())}
            for key, col in (("mae", "feh"), ("mae_cog", "feh_cog"), ("mae_rf", "feh_rf"), ("mae_xgb", "feh_xgb"),
                             ("mae_dnn", "feh_dnn"), ("mae_cannon", "feh_cannon")):
                if col in pred:
                    row[key] = float((pred[col] - pred.true_feh)[det].abs().mean()) if det.any() else None
            row["bias"] = float((pred.feh - pred.true_feh)[det].mean()) if det.any() else None
            out.append(row)
        return out

    grid = []
    for feh_lo in (-5.0, -4.0, -3.0, -2.0):
        for snr_lo, snr_hi in ((20, 50), (50, 100), (100, 200), (200, 500)):
            n_det = int(((pred.true_feh >= feh_lo) & (pred.true_feh < feh_lo + 1) & (pred.snr >= snr_lo)
                         & (pred.snr < snr_hi) & detected(pred.flag)).sum())
            checked = n_det >= 20
            ratio = 0.55 if feh_lo > -4 else 0.9
            grid.append({"feh_lo": feh_lo, "feh_hi": feh_lo + 1, "snr_lo": snr_lo, "snr_hi": snr_hi,
                         "n": n_det + 3, "n_detected": n_det, "mae": 0.12 * ratio, "mae_cog": 0.12,
                         "ratio": ratio, "checked": checked, "meets": (ratio <= 0.7) if checked else None})
    grid[5]["checked"], grid[5]["meets"], grid[5]["ratio"] = True, False, 0.93  # one visibly failing cell
    ens = models["ensemble"]
    return {
        "synthetic": synthetic, "n_test": len(pred),
        "headline_subset": "detected joint Fe signal (>= 3 sigma), SNR >= 50", "n_headline": int(ok.sum()),
        "n_upper_limits": int(has_flag(pred.flag, "upper_limit").sum()),
        "param_errors": {"teff": 100.0, "logg": 0.2, "vmic": 0.2},
        "models": models,
        "cog_per_line_median": _stats((pred.feh_cog_median - pred.true_feh)[ok].to_numpy(),
                                      pred.feh_cog_median[ok].to_numpy(), pred.true_feh[ok].to_numpy()),
        "weights": {"rf": 0.24, "xgb": 0.33, "dnn": 0.43}, "oof_mse": {"rf": 0.031, "xgb": 0.023, "dnn": 0.018},
        "coverage_68": 0.66, "bias_ttest": {"t": 0.84, "p": 0.40, "n": int(ok.sum())},
        "by_snr": bins("snr", [20, 50, 100, 200, math.inf]),
        "by_feh": bins("true_feh", [-5.0, -4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0]),
        "by_teff": bins("true_teff", [4000, 4400, 4800, 5200, 5600]),
        "by_feh_snr": grid,
        "lowest_feh": [{"snr": 50, "snr_lo": 40, "snr_hi": 60, "n": 31, "lowest_detected_feh": -3.71,
                        "feh_50pct": -3.2},
                       {"snr": 100, "snr_lo": 80, "snr_hi": 120, "n": 28, "lowest_detected_feh": -4.05,
                        "feh_50pct": -3.55},
                       {"snr": 200, "snr_lo": 160, "snr_hi": 240, "n": 12, "lowest_detected_feh": None,
                        "feh_50pct": None}],
        "ablation": {"without": ["logg", "vmic"],
                     "ensemble": {**ens, "mae": ens["mae"] + 0.031,
                                  "mae_ci95": [ens["mae_ci95"][0] + 0.027, ens["mae_ci95"][1] + 0.036]},
                     "delta_mae": 0.031},
        "cross_survey": {"label": "fake external survey (test fixture)", "n": 180, "bias": 0.068, "scatter": 0.16,
                         "mae": 0.14, "t": 5.6, "p": 1e-7},
        "targets": [
            {"name": "MAE ensemble, headline", "value": ens["mae"], "target": "<= 0.15", "met": True, "note": ""},
            {"name": "ensemble beats cog in every checked cell", "value": 0.93, "target": "ratio <= 0.7",
             "met": False, "note": "[Fe/H] -5..-4 at S/N 100-200: ratio 0.93 <script>alert(1)</script>"},
            {"name": "coverage of feh_err", "value": 0.66, "target": "0.63-0.73", "met": True, "note": ""},
            {"name": "lowest [Fe/H] detected at S/N 100", "value": -4.05, "target": "<= -4.5", "met": False,
             "note": "weak lines vanish below -4 at S/N 100"},
        ],
    }


@pytest.fixture(scope="module")
def pred() -> pd.DataFrame:
    return fixture_predictions()


@pytest.fixture(scope="module")
def metrics(pred) -> dict:
    return fixture_metrics(pred)


class _Checker(html.parser.HTMLParser):
    """Checks that every opened element is closed in order (void elements excepted)."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] not in ("script", "style"):
            self.text.append(data)


def parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, checker.stack
    return checker


# ---------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------
def test_one_to_one_has_envelope_and_upper_limits_apart(pred):
    fig = result_figures.one_to_one_figure(pred)
    upper = has_flag(pred.flag, "upper_limit")
    dots = fig.select_one({"name": "detected"}).data_source.data
    limits = fig.select_one({"name": "upper_limits"}).data_source.data
    envelope = fig.select_one({"name": "envelope"}).data_source.data
    assert len(dots["x"]) == (~upper).sum() and len(limits["x"]) == upper.sum() > 0
    assert fig.select_one({"name": "upper_limits"}).glyph.marker == "inverted_triangle"
    np.testing.assert_allclose(limits["y"], pred.feh_upper[upper])
    # the whiskers span feh ± feh_err of each detected star
    np.testing.assert_allclose(np.asarray(envelope["y1"]) - np.asarray(envelope["y0"]), 2 * pred.feh_err[~upper])
    assert set(dots) >= {"star_id", "snr", "true_teff"}
    assert fig.title.text.startswith("SYNTHETIC")
    assert "(dex)" in fig.xaxis[0].axis_label and "(dex)" in fig.yaxis[0].axis_label


def test_one_to_one_of_a_member_has_no_envelope_and_real_data_no_synthetic(pred):
    fig = result_figures.one_to_one_figure(pred.assign(synthetic=False), "cog")
    assert fig.select_one({"name": "envelope"}) is None
    assert "SYNTHETIC" not in fig.title.text and "curve of growth" in fig.title.text


def test_histogram_overlays_detected_residuals_and_skips_absent_cannon(pred):
    no_cannon = pred.drop(columns="feh_cannon")
    fig = result_figures.residual_histogram_figure(no_cannon, models=["ensemble", "cog", "cannon"])
    names = {r.name for r in fig.renderers}
    assert {"hist_feh", "hist_feh_cog"} <= names and "hist_feh_cannon" not in names
    counts = fig.select_one({"name": "hist_feh"}).data_source.data["y"]
    assert counts[1::2].sum() == detected(pred.flag).sum()  # each bin's count is drawn twice (a step)
    assert any("feh_cannon" in t.text for t in fig.below if hasattr(t, "text"))


@pytest.mark.parametrize("x", ["snr", "true_feh", "true_teff"])
def test_residual_vs_has_zero_line_cog_and_log_snr(pred, x):
    fig = result_figures.residual_vs_figure(pred, x=x)
    assert fig.select_one({"name": "cog"}) is not None and fig.select_one({"name": "detected"}) is not None
    assert any(isinstance(s, Span) and s.location == 0 for s in fig.center)
    assert (type(fig.x_scale).__name__ == "LogScale") == (x == "snr")
    assert fig.xaxis[0].axis_label == style.X_LABELS[x]


def test_members_figure_shows_every_model_with_ci(metrics):
    fig = result_figures.members_figure(metrics)
    data = fig.select_one({"name": "mae"}).data_source.data
    assert data["key"] == ["rf", "xgb", "dnn", "ensemble", "cog", "cog_per_line_median", "cannon"]
    assert all(lo <= m <= hi for lo, m, hi in zip(data["lo"], data["mae"], data["hi"], strict=True))
    without = dict(metrics, models={k: v for k, v in metrics["models"].items() if k != "cannon"})
    assert "cannon" not in result_figures.members_figure(without).select_one({"name": "mae"}).data_source.data["key"]


@pytest.mark.parametrize("key", ["by_feh", "by_snr", "by_teff"])
def test_binned_figure_shows_upper_limit_counts(metrics, key):
    fig = result_figures.binned_mae_figure(metrics, key)
    bars = fig.select_one({"name": "n_upper_limits"}).data_source.data
    assert bars["n_upper"].tolist() == [b["n_upper_limits"] for b in metrics[key]]
    assert fig.select_one({"name": "mae_ensemble"}) and fig.select_one({"name": "mae_cog"})
    assert fig.title.text.startswith("SYNTHETIC")


# ---------------------------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_page_is_standalone_escaped_and_marks_missed_targets(tmp_path, pred, metrics):
    out = feh_report(metrics, pred, tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html" and [p.name for p in out.parent.iterdir()] == ["report.html"]
    page = out.read_text(encoding="utf-8")
    checker = parse(page)
    text = " ".join(checker.text)
    assert "cdn.bokeh.org" not in page  # BokehJS is inlined: the page opens offline
    assert "class='banner synthetic'" in page and BANNER in text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    missed = [row for row in page.split("<tr") if "class='missed'" in row]
    assert any("lowest [Fe/H] detected at S/N 100" in row and "MISSED" in row for row in missed)
    assert "2 of 4 targets met" in text
    for heading in ("By S/N", "By true [Fe/H]", "By true Teff", "grid check", "Detection limit", "Ablation",
                    "Cross-survey", "Bias t-test"):
        assert heading in text
    assert page.count("data-root-id") == 10  # every figure is embedded


def test_real_page_has_no_synthetic_banner_and_tolerates_absent_cannon(tmp_path, pred, metrics):
    real = fixture_predictions(n=60, synthetic=False, cannon=False)
    m = fixture_metrics(real, synthetic=False)
    assert "cannon" not in m["models"]
    del m["by_feh_snr"]
    # straight from evaluate(), not read back from JSON: numpy scalars, and np.False_ is not False
    m["targets"][3] |= {"met": np.False_, "value": np.float64(-4.05)}
    m["n_upper_limits"] = np.int64(m["n_upper_limits"])
    out = feh_report(m, real, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    parse(page)
    assert "SYNTHETIC" not in page and "class='banner" not in page
    assert "metrics.json has no by_feh_snr" in page and "The Cannon" not in page
    assert any("S/N 100" in row and "MISSED" in row for row in page.split("<tr") if "class='missed'" in row)


def test_failed_write_leaves_the_old_page(tmp_path, pred, metrics, monkeypatch):
    from pathlib import Path

    import fehkit.report.results as results_page

    def half_written(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[:100])
        raise OSError("disk full")

    target = tmp_path / "report.html"
    target.write_text("old page")
    monkeypatch.setattr(Path, "write_text", half_written)
    monkeypatch.setattr(results_page, "_figure_builders", lambda *args: [])  # the figures are tested above
    with pytest.raises(OSError, match="disk full"):
        feh_report(metrics, pred, target)
    assert target.read_text() == "old page" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
