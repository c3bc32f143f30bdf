"""The [Fe/H] regressors (fehkit.models): the MLP, the inverse-variance ensemble, grid search and safe persistence.

All on a 200-star SYNTHETIC benchmark with tiny member configurations: these tests check the machinery (weights,
flags, errors, files), not the method's accuracy, which needs the full-size members.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from fehkit.errors import FehkitWarning
from fehkit.features import Features
from fehkit.models import FeHEnsemble, MLPRegressor, grid_search
from fehkit.models import ensemble as ensemble_module
from fehkit.models.ensemble import EnsembleError
from fehkit.models.persist import (
    CARD,
    FILES,
    IncompatibleModelError,
    ModelFileError,
    TamperedModelError,
    read_card,
)
from fehkit.synth import make_benchmark
from fehkit.training import reference_params, spectra_features, training_hash

TINY = dict(rf={"n_estimators": 30}, xgb={"n_estimators": 30}, dnn={"max_epochs": 30, "hidden": (32, 16)},
            n_folds=3)
#: The columns of FeHEnsemble.predict (DESIGN.md, ``fehkit predict``).
PREDICT_COLUMNS = ["feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "flag"]


@pytest.fixture(scope="module")
def bench() -> dict:
    """200 synthetic stars: features of all, the training split (140) and the held-out rest (60)."""
    sim = make_benchmark(200, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        feats = spectra_features(sim.batch, reference_params(sim.truth))
    truth = sim.truth.reset_index(drop=True)
    train = truth["split"].to_numpy() == "train"
    return {"feats": feats, "truth": truth, "train": train, "X": feats.select(train),
            "y": truth.loc[train, "feh_ref"].to_numpy(float), "X_test": feats.select(~train),
            "truth_test": truth[~train].reset_index(drop=True)}


@pytest.fixture(scope="module")
def fitted(bench) -> FeHEnsemble:
    return FeHEnsemble(**TINY, seed=0).fit(bench["X"], bench["y"])


@pytest.fixture(scope="module")
def held_out(bench, fitted) -> pd.DataFrame:
    return fitted.predict(bench["X_test"])


@pytest.fixture(scope="module")
def saved(bench, fitted, tmp_path_factory):
    """A model folder saved once; tests that break it work on copies."""
    path = tmp_path_factory.mktemp("models") / "model"
    card = {"synthetic": True, "training_set_sha256": training_hash(bench["X"].X, bench["y"])}
    fitted.save(path, card=card)
    return path


def _copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


def _edit_card(path, edit) -> None:
    card = json.loads((path / CARD).read_text())
    edit(card)
    (path / CARD).write_text(json.dumps(card))


# -- the MLP member ----------------------------------------------------------------------------------------------------
def test_mlp_learns_a_simple_function_and_stops_early():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    y = X @ np.array([0.5, -1.0, 0.2]) + 0.3 * np.sin(X[:, 0])
    m = MLPRegressor(hidden=(32, 16), max_epochs=500, patience=5, seed=1).fit(X[:400], y[:400])
    assert np.mean(np.abs(m.predict(X[400:]) - y[400:])) < 0.1
    # the validation loss stops improving long before 500 epochs; the best weights are kept
    assert m.n_epochs_ < 500 and len(m.history_) == m.n_epochs_
    assert int(np.argmin(m.history_)) == m.n_epochs_ - 1 - m.patience


def test_mlp_treats_nan_inputs_as_missing():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = X[:, 0] - X[:, 1]
    X[::7, 2] = np.nan
    m = MLPRegressor(hidden=(16,), max_epochs=50, seed=0).fit(X, y)
    assert list(m.missing_cols_) == [2]
    assert np.isfinite(m.predict(X)).all()


def test_mlp_with_a_validation_set_is_reproducible():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = X.sum(axis=1)
    a = MLPRegressor(hidden=(16,), max_epochs=20, seed=3).fit(X[:150], y[:150], X[150:], y[150:])
    b = MLPRegressor(hidden=(16,), max_epochs=20, seed=3).fit(X[:150], y[:150], X[150:], y[150:])
    assert np.array_equal(a.predict(X), b.predict(X))


# -- the ensemble ---------------------------------------------------------------------------------------------------
def test_weights_sum_to_one_and_follow_inverse_oof_mse(fitted, bench):
    w, mse = fitted.weights_, fitted.oof_mse_
    assert set(w) == {"rf", "xgb", "dnn"}
    assert np.isclose(sum(w.values()), 1.0)
    inv = {m: 1.0 / v for m, v in mse.items()}
    for m in w:
        assert np.isclose(w[m], inv[m] / sum(inv.values()))
    # the members train on the stars with a detected joint Fe signal (train_on="detected")
    assert fitted.n_train_ == int((bench["X"].stars["cog_signal_sigma"] >= 3).sum()) < len(bench["y"])


def test_predict_returns_the_design_columns(held_out, bench):
    assert list(held_out.columns) == PREDICT_COLUMNS
    assert len(held_out) == len(bench["X_test"].X)
    assert set(held_out["flag"]) <= {"ok", "upper_limit"}
    assert np.isfinite(held_out[["feh", "feh_err", "feh_rf", "feh_xgb", "feh_dnn"]].to_numpy()).all()
    assert (held_out["feh_err"] > 0).all()


def test_upper_limits_are_exactly_the_stars_below_three_sigma(held_out, bench):
    stars = bench["X_test"].stars
    below = stars["cog_signal_sigma"].to_numpy() < 3
    assert below.any() and (~below).any()
    assert np.array_equal(held_out["flag"].to_numpy() == "upper_limit", below)
    assert np.array_equal(np.isfinite(held_out["feh_upper"].to_numpy()), below)
    assert np.allclose(held_out["feh_upper"][below], stars["feh_cog_upper"][below], atol=1e-5)
    assert np.allclose(held_out["feh_cog"], stars["feh_cog"], atol=1e-5, equal_nan=True)


def test_residual_ensemble_beats_a_trivial_predictor_on_detected_held_out_stars(held_out, bench):
    truth = bench["truth_test"]["feh"].to_numpy()
    det = (held_out["flag"] == "ok").to_numpy()
    assert det.sum() >= 20
    mae = np.mean(np.abs(held_out["feh"].to_numpy()[det] - truth[det]))
    trivial = np.mean(np.abs(np.median(bench["y"]) - truth[det]))
    assert mae < trivial / 4, (mae, trivial)
    assert mae < 0.3


def test_fused_value_is_the_weighted_mean_of_the_members(held_out, fitted):
    fused = sum(fitted.weights_[m] * held_out[f"feh_{m}"] for m in ("rf", "xgb", "dnn"))
    assert np.allclose(held_out["feh"], fused)


def test_a_single_member_ensemble_leaves_the_others_nan(bench):
    ens = FeHEnsemble(**TINY, members=("xgb",)).fit(bench["X"], bench["y"])
    out = ens.predict(bench["X_test"])
    assert ens.weights_ == {"xgb": 1.0}
    assert out["feh_rf"].isna().all() and out["feh_dnn"].isna().all()
    assert np.allclose(out["feh"], out["feh_xgb"])


def test_target_feh_learns_feh_itself(bench):
    ens = FeHEnsemble(**TINY, members=("rf",), target="feh").fit(bench["X"], bench["y"])
    out = ens.predict(bench["X_test"])
    assert np.isfinite(out["feh"]).all() and out["feh"].between(-5.5, 0).all()


# -- wrong input ------------------------------------------------------------------------------------------------------
def test_features_in_another_order_raise(fitted, bench):
    f = bench["X_test"]
    order = list(range(len(f.names)))
    order[0], order[1] = order[1], order[0]
    swapped = Features(f.X[:, order], [f.names[i] for i in order], f.stars)
    with pytest.raises(EnsembleError, match="same order"):
        fitted.predict(swapped)


def test_a_dataframe_with_columns_in_another_order_raises(fitted, bench):
    frame = bench["X_test"].frame()
    shuffled = frame[frame.columns[::-1]]
    with pytest.raises(EnsembleError, match="same order"):
        fitted.predict(shuffled)


def test_missing_features_are_named(fitted, bench):
    fewer = bench["X_test"].drop(["vmic"])
    with pytest.raises(EnsembleError, match=r"missing \['vmic'\]"):
        fitted.predict(fewer)
    with pytest.raises(EnsembleError, match=rf"{len(fitted.feature_names_)} names; X has {fewer.X.shape[1]} columns"):
        fitted.predict(fewer.X)


def test_predicting_before_fitting_raises():
    with pytest.raises(EnsembleError, match="not fitted"):
        FeHEnsemble().predict(np.zeros((2, 3)))


@pytest.mark.parametrize("bad, match", [
    ({"members": ("rf", "svm")}, "members"),
    ({"members": ()}, "members"),
    ({"target": "log_feh"}, "target"),
    ({"train_on": "everything"}, "train_on"),
    ({"n_folds": 1}, "n_folds"),
])
def test_bad_configuration_raises_at_fit(bench, bad, match):
    with pytest.raises(EnsembleError, match=match):
        FeHEnsemble(**{**TINY, **bad}).fit(bench["X"], bench["y"])


def test_bad_training_data_raise(bench):
    ens = FeHEnsemble(**TINY)
    with pytest.raises(EnsembleError, match="'feh_cog'"):
        ens.fit(bench["X"].drop(["feh_cog"]), bench["y"])
    y = bench["y"].copy()
    y[3] = np.nan
    with pytest.raises(EnsembleError, match="1 missing"):
        ens.fit(bench["X"], y)
    with pytest.raises(EnsembleError, match="expected one per star"):
        ens.fit(bench["X"], bench["y"][:-1])
    with pytest.raises(EnsembleError, match="feature_names"):
        ens.fit(bench["X"].X, bench["y"])


# -- grid search ------------------------------------------------------------------------------------------------------
def test_grid_search_refuses_a_grid_above_max_candidates(bench):
    grid = {"rf": {"max_depth": [4, 8, 12], "min_samples_leaf": [1, 2, 4]}}
    with pytest.raises(EnsembleError, match="9 combinations; expected at most 8"):
        grid_search(bench["X"], bench["y"], grid, max_candidates=8)


def test_grid_search_returns_the_best_candidate_of_a_tiny_grid(bench):
    grid = {"rf": {"n_estimators": [15], "max_depth": [1, 8]}, "xgb": {"n_estimators": [3, 30]}}
    best, table = grid_search(bench["X"], bench["y"], grid, n_folds=2)
    assert len(table) == 4 and table["cv_mse"].notna().all()
    for member in ("rf", "xgb"):
        rows = table[table["member"] == member]
        winner = rows.loc[rows["cv_mse"].idxmin()]
        assert all(winner[k] == v for k, v in best[member].items())
    assert best["rf"] in ({"max_depth": 1, "n_estimators": 15}, {"max_depth": 8, "n_estimators": 15})
    assert set(best["xgb"]) == {"n_estimators"}


def test_grid_search_keeps_the_members_other_overrides(bench, monkeypatch):
    seen = []
    make = ensemble_module.make_forest

    def spy(seed, **overrides):
        seen.append(dict(overrides))
        return make(seed, **{**overrides, "n_estimators": 5})

    monkeypatch.setattr(ensemble_module, "make_forest", spy)
    grid_search(bench["X"], bench["y"], {"rf": {"max_depth": [4]}}, n_folds=2, rf={"n_estimators": 30})
    # the grid varies max_depth; the caller's n_estimators = 30 must still hold (not the 500-tree default)
    assert seen and all(o.get("n_estimators") == 30 and o.get("max_depth") == 4 for o in seen), seen


# -- reproducibility --------------------------------------------------------------------------------------------------
def test_a_fit_with_the_same_seed_is_reproducible(bench, held_out, fitted):
    again = FeHEnsemble(**TINY, seed=0).fit(bench["X"], bench["y"])
    assert again.weights_ == fitted.weights_
    pd.testing.assert_frame_equal(again.predict(bench["X_test"]), held_out)


# -- persistence ------------------------------------------------------------------------------------------------------
def test_save_then_load_gives_the_same_predictions(saved, held_out, bench):
    loaded = FeHEnsemble.load(saved)
    out = loaded.predict(bench["X_test"])
    assert list(out.columns) == PREDICT_COLUMNS
    num = [c for c in PREDICT_COLUMNS if c != "flag"]
    assert np.allclose(out[num], held_out[num], atol=1e-6, equal_nan=True)
    assert (out["flag"] == held_out["flag"]).all()


def test_the_model_card_records_what_the_model_is(saved, fitted, bench):
    card = read_card(saved)
    assert card["synthetic"] is True
    assert card["training_set_sha256"] == training_hash(bench["X"].X, bench["y"])
    assert card["feature_names"] == fitted.feature_names_
    assert {"fehkit", "python", "numpy", "scikit-learn", "xgboost", "torch", "skops", "safetensors"} <= \
        set(card["versions"])
    assert set(card["files"]) == set(FILES.values())
    for name, sha in card["files"].items():
        assert (saved / name).is_file() and len(sha) == 64 and int(sha, 16) >= 0
    assert card["ensemble"]["weights"] == pytest.approx(fitted.weights_)
    assert card["ensemble"]["member_params"]["rf"]["n_estimators"] == 30
    assert not list(saved.parent.glob(".model.*"))  # no temporary folder left beside it


def test_saving_over_an_existing_folder_needs_overwrite(saved, fitted, tmp_path):
    path = _copy(saved, tmp_path)
    with pytest.raises(ModelFileError, match="already exists"):
        fitted.save(path)
    fitted.save(path, overwrite=True, card={"synthetic": False})
    assert read_card(path)["synthetic"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("name", sorted(FILES.values()))
def test_a_flipped_byte_in_a_member_file_is_refused(saved, tmp_path, name):
    path = _copy(saved, tmp_path)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(TamperedModelError, match=name.replace(".", r"\.")):
        FeHEnsemble.load(path)


def test_a_card_of_another_format_version_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit_card(path, lambda c: c.update(format_version=99))
    with pytest.raises(IncompatibleModelError, match="format_version 99"):
        FeHEnsemble.load(path)


def test_a_folder_without_a_card_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    (path / CARD).unlink()
    with pytest.raises(ModelFileError, match="no card.json"):
        FeHEnsemble.load(path)


def test_a_deleted_member_file_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    (path / FILES["xgb"]).unlink()
    with pytest.raises(ModelFileError, match=r"xgb\.json: missing"):
        FeHEnsemble.load(path)


def test_a_card_with_fewer_feature_names_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit_card(path, lambda c: c.update(feature_names=c["feature_names"][:-1]))  # member files still match
    with pytest.raises(IncompatibleModelError, match="features"):
        FeHEnsemble.load(path)


def _swap_forest(path, est) -> None:
    """Put another object into rf.skops and update its SHA-256, as an attacker who can edit the card would."""
    from skops.io import dump

    from fehkit.files import file_sha256

    dump(est, path / FILES["rf"])
    _edit_card(path, lambda c: c["files"].update({FILES["rf"]: file_sha256(path / FILES["rf"])}))


def test_a_forest_file_with_a_function_inside_is_refused_before_it_is_built(saved, tmp_path, bench):
    import os

    from sklearn.preprocessing import FunctionTransformer

    path = _copy(saved, tmp_path)
    _swap_forest(path, FunctionTransformer(func=os.getcwd).fit(bench["X"].X[:5]))
    with pytest.raises(TamperedModelError, match="outside a random forest"):
        FeHEnsemble.load(path)


@pytest.mark.parametrize("kind", ["linear", "pipeline"])
def test_a_forest_file_holding_another_estimator_is_refused(saved, tmp_path, bench, kind):
    # scikit-learn types that skops trusts by default, fitted on the right number of features: only the forest
    # type itself may be in rf.skops, or an attacker swaps the model for one that predicts what they want
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.nan_to_num(bench["X"].X), bench["y"]
    est = LinearRegression() if kind == "linear" else make_pipeline(StandardScaler(), LinearRegression())
    path = _copy(saved, tmp_path)
    _swap_forest(path, est.fit(X, y))
    with pytest.raises(ModelFileError, match=r"rf\.skops"):
        FeHEnsemble.load(path)
