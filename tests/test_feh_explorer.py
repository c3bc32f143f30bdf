"""The [Fe/H] explorer and its two figures: one star's joint likelihood and its lines.

Given a tiny benchmark run (200 SYNTHETIC stars, tiny ensemble), when the explorer is built and its star changed the
way the notebook does it, then both figures are redrawn in place with that star's library results, an upper-limit
star shows its limit, and everything synthetic says so.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from jupyter_bokeh import BokehModel

from fehkit.benchmark import run_benchmark
from fehkit.errors import FehkitWarning
from fehkit.ew import measure_ew
from fehkit.flags import has_flag, is_ok
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.joint import FEH_GRID, likelihood_profile
from fehkit.plots.likelihood import likelihood_figure, line_ew_figure, update_likelihood_figure
from fehkit.training import reference_params
from fehkit.widgets import FeHExplorer

TINY = dict(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 10}, n_folds=3)


@pytest.fixture(scope="session")
def run():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        return run_benchmark(200, seed=11, cannon=False, ablation=False, ensemble=TINY)


@pytest.fixture(scope="session")
def rows(run):
    """Rows of run.predictions: an upper-limit star and the detected star of highest S/N."""
    p = run.predictions
    upper = np.flatnonzero(has_flag(p["flag"], "upper_limit"))
    detected = np.flatnonzero(is_ok(p["flag"]))
    assert upper.size and detected.size
    return int(upper[0]), int(detected[np.argmax(p["snr"].to_numpy()[detected])])


def _data(fig, name: str) -> dict:
    return fig.select_one({"name": name}).data_source.data


def _library_profile(run, i: int) -> dict:
    """The star's likelihood computed straight from the library, from a fresh EW table of its spectrum."""
    star_id = run.predictions["star_id"].iloc[i]
    j = int(np.flatnonzero(run.features.stars["star_id"].to_numpy() == star_id)[0])
    params = reference_params(run.sim.truth).iloc[[j]].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        table = measure_ew(run.normalized.select([j]), params=params[["teff", "logg", "vmic"]], mc_draws=0)
        usable = np.isin(table.flag, ["ok", "upper_limit"])
        cog = CurveOfGrowth.load()
        return likelihood_profile(table.ew_mA, table.ew_err_mA, usable, params["teff"], params["logg"],
                                  params["vmic"], params["alpha_fe"], lines=cog.line_index(
                                      table.lines["wave_vac"].to_numpy()))


# -- figure builders --------------------------------------------------------------------------------------------
def test_likelihood_figure_draws_the_curve_levels_marks_and_limit():
    grid = FEH_GRID
    curve = np.minimum(((grid + 4.0) / 0.4) ** 2, 40.0)
    fig = likelihood_figure(grid, curve, {"truth": -4.3, "cog": -4.0, "ensemble": -3.9, "rf": np.nan},
                            upper=-3.2, m2lnl_none=2.5)
    for name in ("m2lnl", "marks", "upper_limit", "no_iron", "delta_1", "delta_9"):
        assert fig.select_one({"name": name}) is not None, name
    assert fig.title.text.startswith("SYNTHETIC: ")
    np.testing.assert_allclose(_data(fig, "m2lnl")["m2lnl"], curve)
    marks = _data(fig, "marks")
    assert marks["key"] == ["truth", "cog", "ensemble"]  # NaN (no random forest) is left out
    assert marks["label"][0] == "true [Fe/H] (SYNTHETIC truth): -4.30"
    assert _data(fig, "upper_limit")["x0"] == [-3.2] and _data(fig, "upper_limit")["x1"] == [-0.5]
    assert _data(fig, "no_iron")["y"] == [2.5]
    assert fig.x_range.start <= -4.3 and fig.x_range.end >= -3.2
    BokehModel(fig)  # serializes


def test_likelihood_figure_of_a_real_star_makes_no_synthetic_claim():
    fig = likelihood_figure(FEH_GRID, (FEH_GRID + 2.0) ** 2 * 100, {"truth": -2.0}, synthetic=False)
    assert "SYNTHETIC" not in fig.title.text + " ".join(_data(fig, "marks")["label"])
    assert _data(fig, "upper_limit")["x0"] == [] and _data(fig, "no_iron")["y"] == []


def test_update_likelihood_figure_follows_the_new_star():
    fig = likelihood_figure(FEH_GRID, ((FEH_GRID + 4.0) / 0.5) ** 2, {"ensemble": -4.0}, upper=-3.0)
    before = (fig.x_range.start, fig.x_range.end)
    update_likelihood_figure(fig, FEH_GRID, ((FEH_GRID + 1.5) / 0.05) ** 2, {"ensemble": -1.5}, title="another")
    assert _data(fig, "upper_limit")["x0"] == []
    assert (fig.x_range.start, fig.x_range.end) != before and fig.x_range.start < -1.5 < fig.x_range.end
    assert fig.title.text == "SYNTHETIC: another"


def test_likelihood_figure_checks_its_inputs():
    with pytest.raises(ValueError, match="m2lnl: expected one value per point of feh_grid"):
        likelihood_figure(FEH_GRID, np.zeros((2, FEH_GRID.size)), {})


def test_line_ew_figure_greys_unusable_lines_and_counts_missing_ones():
    wave = [15207.53, 15298.74, 15395.72, 15494.62]
    fig = line_ew_figure(wave, [12.0, 3.0, np.nan, -1.0], [2.0, 2.5, np.nan, 2.0], [11.0, 4.0, 2.0, 1.0],
                         [True, False, False, True], flag=["ok", "blend_suspect", "masked", "upper_limit"],
                         feh_best=-2.5)
    for name in ("measured", "measured_err", "unusable", "unusable_err", "model", "note"):
        assert fig.select_one({"name": name}) is not None, name
    assert list(fig.x_range.factors) == ["15207.53", "15298.74", "15395.72", "15494.62"]
    measured = _data(fig, "measured")
    assert measured["line"] == ["15207.53", "15494.62"] and measured["flag"] == ["ok", "upper_limit"]
    np.testing.assert_allclose(measured["lo"], [10.0, -3.0])
    assert _data(fig, "unusable")["line"] == ["15298.74"]
    assert len(_data(fig, "model")["line"]) == 4  # the model exists for every line
    assert fig.select_one({"name": "note"}).text.startswith("2 lines in the likelihood, 1 left out (grey), 1 without")
    assert fig.title.text.endswith("[Fe/H] = -2.50") and fig.title.text.startswith("SYNTHETIC")
    with pytest.raises(ValueError, match="ew_err: expected one value per line"):
        line_ew_figure(wave, [1.0] * 4, [1.0] * 3, [1.0] * 4, [True] * 4)
    BokehModel(fig)


# -- the widget -------------------------------------------------------------------------------------------------
def test_explorer_builds_on_a_run(run):
    explorer = FeHExplorer(run)
    p = run.predictions
    assert len(explorer.select.options) == len(p)
    labels = [label for label, _ in explorer.select.options]
    truth = [p["true_feh"].iloc[i] for _, i in explorer.select.options]
    assert truth == sorted(truth)  # ordered by true [Fe/H]
    first = p.iloc[explorer.index]
    assert labels[0].startswith(f"{first['star_id']} · S/N {first['snr']:.0f} · true [Fe/H] {first['true_feh']:+.2f}")
    assert explorer.likelihood_plot in explorer.children[1].children and explorer.ew_plot in explorer.children
    assert "SYNTHETIC star" in explorer.details.value and "SYNTHETIC truth" in explorer.details.value
    assert explorer.likelihood_plot._model.title.text.startswith("SYNTHETIC: joint likelihood of")


def test_changing_the_star_redraws_both_figures_in_place(run, rows):
    _, detected = rows
    explorer = FeHExplorer(run)
    lik, lines = explorer.likelihood_plot._model, explorer.ew_plot._model
    before = np.array(_data(lik, "m2lnl")["m2lnl"])
    explorer.select.value = detected
    assert explorer.likelihood_plot._model is lik and explorer.ew_plot._model is lines  # zoom-free redraw
    p = run.predictions.iloc[detected]
    shown = np.asarray(_data(lik, "m2lnl")["m2lnl"])
    assert not np.allclose(before, shown)
    # the curve is the library's likelihood of this star, from its own EWs
    expected = _library_profile(run, detected)
    np.testing.assert_allclose(shown, expected["m2lnl"][0], rtol=1e-5, atol=1e-3)
    best = int(np.argmin(shown))
    assert abs(FEH_GRID[best] - p["feh_cog"]) <= 0.006
    marks = dict(zip(_data(lik, "marks")["key"], _data(lik, "marks")["x"], strict=True))
    assert marks["truth"] == pytest.approx(p["true_feh"]) and marks["ensemble"] == pytest.approx(p["feh"])
    assert {"cog", "rf", "xgb", "dnn"} <= set(marks)
    assert _data(lik, "upper_limit")["x0"] == []
    assert str(p["star_id"]) in lik.title.text and str(p["star_id"]) in lines.title.text
    np.testing.assert_allclose(_data(lines, "model")["model"], expected["model_ew"][0, best], rtol=1e-5)
    assert f"{p['feh']:+.2f} ± {p['feh_err']:.2f}" in explorer.details.value
    assert "detected (≥ 3σ)" in explorer.details.value


def test_an_upper_limit_star_shows_its_limit(run, rows):
    upper, _ = rows
    p = run.predictions.iloc[upper]
    explorer = FeHExplorer(run, star=str(p["star_id"]))
    assert explorer.index == upper and "upper limit" in explorer.select.label
    lik = explorer.likelihood_plot._model
    assert _data(lik, "upper_limit")["x0"] == [pytest.approx(p["feh_upper"])]
    assert _data(lik, "upper_limit")["limit_label"][0].startswith(f"excluded at 3σ: [Fe/H] > {p['feh_upper']:.2f}")
    assert lik.x_range.end >= p["feh_upper"]
    assert _data(lik, "no_iron")["y"][0] < 9  # no detection: "no iron" is within 3 sigma of the best fit
    assert f"&lt; {p['feh_upper']:+.2f}" in explorer.details.value
    assert "ensemble (not a measurement)" in explorer.details.value


def test_the_explorer_reads_the_ews_from_the_features_when_the_run_has_no_ew_table(run, rows):
    _, detected = rows
    assert run.ew is not None
    without = copy.copy(run)
    without.features = dataclasses.replace(run.features, ew=None)
    assert without.ew is None
    a, b = FeHExplorer(run), FeHExplorer(without)
    for explorer in (a, b):
        explorer.select.value = detected
    # the features hold every line's EW, error and state: the same likelihood, the same lines
    np.testing.assert_allclose(_data(b.likelihood_plot._model, "m2lnl")["m2lnl"],
                               _data(a.likelihood_plot._model, "m2lnl")["m2lnl"], rtol=1e-6, atol=1e-6)
    for name in ("measured", "unusable"):
        assert _data(b.ew_plot._model, name)["line"] == _data(a.ew_plot._model, name)["line"]
    assert set(_data(a.ew_plot._model, "measured")["flag"]) <= {"ok", "upper_limit"}
    assert a.ew_plot._model.select_one({"name": "note"}).text == b.ew_plot._model.select_one({"name": "note"}).text


def test_the_explorer_checks_its_run(run):
    broken = copy.copy(run)
    broken.predictions = run.predictions.drop(columns=["feh_err"])
    with pytest.raises(ValueError, match=r"run.predictions: no column\(s\) \['feh_err'\]"):
        FeHExplorer(broken)
    with pytest.raises(ValueError, match="star: 'nobody' is not a test star"):
        FeHExplorer(run, star="nobody")
    stranger = copy.copy(run)
    stranger.predictions = pd.concat([run.predictions.iloc[:1].assign(star_id="SYN-OTHER"), run.predictions])
    with pytest.raises(ValueError, match="run.features: no row for the test star"):
        FeHExplorer(stranger)
