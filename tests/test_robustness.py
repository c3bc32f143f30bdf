"""Robustness scenarios: test spectra whose physics the analysis does not know (all SYNTHETIC).

Given a small trained ensemble, when it measures the same simulated stars made with one assumption broken at a time,
then each scenario is scored on its own, a known log gf offset shows up as a bias of about its size, and the
unperturbed forward model is unchanged by the new knobs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fehkit.errors import PhysicsGridError
from fehkit.models import FeHEnsemble
from fehkit.physics import CurveOfGrowth
from fehkit.robustness import SCENARIOS, RobustnessError, make_scenario, run_robustness
from fehkit.synth import Perturbation, make_benchmark, simulate
from fehkit.training import reference_params, spectra_features

TINY = dict(rf={"n_estimators": 30}, xgb={"n_estimators": 30}, dnn={"max_epochs": 20, "hidden": (32, 16)}, n_folds=3)
STAR = {"teff": [4800, 5100], "logg": [1.5, 2.2], "feh": [-2.0, -2.6], "vmic": [1.8, 1.6], "snr": [150, 150]}


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = make_benchmark(240, seed=4)
        feats = spectra_features(sim.batch, reference_params(sim.truth))
        return FeHEnsemble(**TINY).fit(feats, sim.truth["feh_ref"])


@pytest.fixture(scope="module")
def scores(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_robustness(model, n=120, seed=9, scenarios=["standard", "gf_errors", "continuum_shape",
                                                               "sme_physics"])


def test_no_perturbation_changes_nothing():
    plain = simulate(STAR, seed=3)
    same = simulate(STAR, seed=3, perturb=Perturbation())
    np.testing.assert_array_equal(plain.batch.flux, same.batch.flux)
    np.testing.assert_array_equal(plain.ew, same.ew)


def test_each_perturbation_changes_the_spectra_it_should():
    plain = simulate(STAR, seed=3)
    gf = simulate(STAR, seed=3, perturb=Perturbation(loggf_offset=0.1))
    assert np.all(gf.ew > plain.ew)  # a larger gf is a stronger line
    ripple = simulate(STAR, seed=3, perturb=Perturbation(continuum_ripple=(0.02, 0.02)))
    ratio = ripple.continuum / plain.continuum
    assert 0.975 < np.nanmin(ratio) < 0.985 and 1.015 < np.nanmax(ratio) < 1.025
    wide = simulate(STAR, seed=3, perturb=Perturbation(damping_scale=(3.0, 3.0), lsf_wing_hwhm=0.05), noise=False,
                    continuum=False, background=False, tellurics=False, masks=False)
    narrow = simulate(STAR, seed=3, noise=False, continuum=False, background=False, tellurics=False, masks=False)
    np.testing.assert_allclose(wide.ew, narrow.ew)  # same EWs, other profiles
    assert np.nanmin(wide.batch.flux) > np.nanmin(narrow.batch.flux)  # broader wings, shallower cores


def test_every_scenario_is_scored_on_the_same_headline_stars(scores):
    assert list(scores) == ["standard", "gf_errors", "continuum_shape", "sme_physics"]
    base = scores["standard"]
    for name in ("standard", "gf_errors", "continuum_shape"):
        r = scores[name]
        assert r["description"] == SCENARIOS[name]
        assert r["n"] >= 30 and abs(r["n"] - base["n"]) <= 10
        assert 0.0 < r["mae"] < 0.3 and 0.0 < r["mae_cog"] < 0.3 and 0.0 <= r["coverage_68"] <= 1.0
        assert set(r["members"]) == {"rf", "xgb", "dnn"}


def test_a_log_gf_offset_shows_up_as_a_bias(scores):
    # every line's log gf is off by +0.03 dex on average: the classical method reads about +0.03 dex more iron
    shift = scores["gf_errors"]["bias_cog"] - scores["standard"]["bias_cog"]
    assert 0.01 < shift < 0.06


def test_sme_physics_runs_when_its_grid_is_packaged(scores):
    try:
        CurveOfGrowth.load("sme")
    except PhysicsGridError:
        assert "skipped" in scores["sme_physics"]
    else:
        assert scores["sme_physics"]["n"] >= 30 and scores["sme_physics"]["mae"] is not None


def test_unknown_scenarios_and_tiny_sets_are_refused(model):
    with pytest.raises(RobustnessError, match="scenario 'hot_jupiter'"):
        make_scenario("hot_jupiter", 10, 0)
    with pytest.raises(RobustnessError, match="at least 10"):
        run_robustness(model, n=3)
