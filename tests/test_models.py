"""The [Fe/H] regressors (fehkit.models): the MLP, the inverse-variance ensemble, grid search and safe persistence.

All on a 200-star SYNTHETIC benchmark with tiny member configurations: these tests check the machinery (weights,
flags, errors, files), not the method's accuracy, which needs the full-size members.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from fehkit.errors import FehkitWarning
from fehkit.features import Features
from fehkit.files import MARKER, file_sha256
from fehkit.flags import FLAGS, detected, has_flag, split
from fehkit.models import FeHEnsemble, NotFittedError, TorchMLPRegressor, grid_search
from fehkit.models import ensemble as ensemble_module
from fehkit.models.ensemble import EnsembleError, oof_mse_score
from fehkit.models.persist import (
    CARD,
    CHECKSUMS,
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
#: The columns of FeHEnsemble.predict (as ``fehkit predict`` writes them, docs/cli.md).
PREDICT_COLUMNS = ["feh", "feh_err", "feh_upper", "feh_rf", "feh_xgb", "feh_dnn", "feh_cog", "flag", "flag_reason"]


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


def _rehash(path) -> None:
    """Rewrite checksums.sha256 over the folder's files, as a writer that got the card wrong (or an attacker) would."""
    names = sorted(p.name for p in path.iterdir() if p.name not in (CHECKSUMS, MARKER))
    (path / CHECKSUMS).write_text("".join(f"{file_sha256(path / n)}  {n}\n" for n in names))


def _edit_card(path, edit, rehash: bool = False) -> None:
    card = json.loads((path / CARD).read_text())
    edit(card)
    (path / CARD).write_text(json.dumps(card))
    if rehash:
        _rehash(path)


# -- the MLP member ----------------------------------------------------------------------------------------------------
def test_mlp_learns_a_simple_function_and_stops_early():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    y = X @ np.array([0.5, -1.0, 0.2]) + 0.3 * np.sin(X[:, 0])
    m = TorchMLPRegressor(hidden=(32, 16), max_epochs=500, patience=5, seed=1).fit(X[:400], y[:400])
    assert np.mean(np.abs(m.predict(X[400:]) - y[400:])) < 0.1
    # the validation loss stops improving long before 500 epochs; the best weights are kept
    assert m.n_epochs_ < 500 and len(m.history_) == m.n_epochs_
    assert int(np.argmin(m.history_)) == m.n_epochs_ - 1 - m.patience


def test_mlp_treats_nan_inputs_as_missing():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = X[:, 0] - X[:, 1]
    X[::7, 2] = np.nan
    m = TorchMLPRegressor(hidden=(16,), max_epochs=50, seed=0).fit(X, y)
    assert list(m.missing_cols_) == [2]
    assert np.isfinite(m.predict(X)).all()


def test_mlp_with_a_validation_set_is_reproducible():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = X.sum(axis=1)
    a = TorchMLPRegressor(hidden=(16,), max_epochs=20, seed=3).fit(X[:150], y[:150], X_val=X[150:], y_val=y[150:])
    b = TorchMLPRegressor(hidden=(16,), max_epochs=20, seed=3).fit(X[:150], y[:150], X_val=X[150:], y_val=y[150:])
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
    assert not has_flag(held_out["flag"], "no_usable_lines").any()
    assert all(set(split(f)) <= set(FLAGS) for f in held_out["flag"])
    assert np.isfinite(held_out[["feh_err", "feh_rf", "feh_xgb", "feh_dnn"]].to_numpy()).all()
    assert np.isfinite(held_out["feh"][detected(held_out["flag"])]).all()  # upper limits have no feh
    assert (held_out["feh_err"] > 0).all()


def test_upper_limits_are_exactly_the_stars_below_three_sigma(held_out, bench):
    stars = bench["X_test"].stars
    below = stars["cog_signal_sigma"].to_numpy() < 3
    assert below.any() and (~below).any()
    assert np.array_equal(has_flag(held_out["flag"], "upper_limit"), below)
    assert np.array_equal(np.isfinite(held_out["feh_upper"].to_numpy()), below)
    assert np.allclose(held_out["feh_upper"][below], stars["feh_cog_upper"][below], atol=1e-5)
    assert np.allclose(held_out["feh_cog"], stars["feh_cog"], atol=1e-5, equal_nan=True)


def test_residual_ensemble_beats_a_trivial_predictor_on_detected_held_out_stars(held_out, bench):
    truth = bench["truth_test"]["feh"].to_numpy()
    det = detected(held_out["flag"])
    assert det.sum() >= 20
    mae = np.mean(np.abs(held_out["feh"].to_numpy()[det] - truth[det]))
    trivial = np.mean(np.abs(np.median(bench["y"]) - truth[det]))
    assert mae < trivial / 4, (mae, trivial)
    assert mae < 0.3


def test_fused_value_is_the_weighted_mean_of_the_members(held_out, fitted):
    fused = sum(fitted.weights_[m] * held_out[f"feh_{m}"] for m in ("rf", "xgb", "dnn"))
    measured = held_out["feh"].notna()  # upper limits have no feh
    assert np.allclose(held_out["feh"][measured], fused[measured])


def test_a_single_member_ensemble_leaves_the_others_nan(bench):
    ens = FeHEnsemble(**TINY, members=("xgb",)).fit(bench["X"], bench["y"])
    out = ens.predict(bench["X_test"])
    assert ens.weights_ == {"xgb": 1.0}
    assert out["feh_rf"].isna().all() and out["feh_dnn"].isna().all()
    measured = out["feh"].notna()  # upper limits have no feh
    assert np.allclose(out["feh"][measured], out["feh_xgb"][measured])


def test_target_feh_learns_feh_itself(bench):
    ens = FeHEnsemble(**TINY, members=("rf",), target="feh").fit(bench["X"], bench["y"])
    out = ens.predict(bench["X_test"])
    measured = detected(out["flag"])  # upper limits have no feh
    assert np.isfinite(out["feh"][measured]).all() and out["feh"][measured].between(-5.5, 0).all()


# -- wrong input ------------------------------------------------------------------------------------------------------
def test_features_in_another_order_raise(fitted, bench):
    f = bench["X_test"]
    order = list(range(len(f.names)))
    order[0], order[1] = order[1], order[0]
    swapped = Features(f.X[:, order], [f.names[i] for i in order], f.stars)
    with pytest.raises(EnsembleError, match="another order"):
        fitted.predict(swapped)


def test_a_dataframe_with_columns_in_another_order_raises(fitted, bench):
    frame = bench["X_test"].frame()
    shuffled = frame[frame.columns[::-1]]
    with pytest.raises(EnsembleError, match="another order"):
        fitted.predict(shuffled)


def test_missing_features_are_named(fitted, bench):
    fewer = bench["X_test"].drop(["vmic"])
    with pytest.raises(EnsembleError, match=r"missing \['vmic'\]"):
        fitted.predict(fewer)
    with pytest.raises(EnsembleError, match=rf"{fitted.n_features_in_} names; X has {fewer.X.shape[1]} columns"):
        fitted.predict(fewer.X)


def test_predicting_before_fitting_raises():
    with pytest.raises(EnsembleError, match="not fitted"):
        FeHEnsemble().predict(np.zeros((2, 3)))


# -- scikit-learn estimators ------------------------------------------------------------------------------------------
def test_the_ensemble_is_a_scikit_learn_estimator(fitted):
    from sklearn.base import clone

    ens = FeHEnsemble(rf={"n_estimators": 30}, members=("rf", "xgb"), n_folds=3)
    assert repr(ens) == "FeHEnsemble(members=('rf', 'xgb'), n_folds=3, rf={'n_estimators': 30})"
    params = ens.get_params()
    assert params["rf"] == {"n_estimators": 30} and params["xgb"] is None and params["members"] == ("rf", "xgb")
    twin = clone(ens)
    assert twin is not ens and twin.get_params() == params and not hasattr(twin, "weights_")
    # a nested member override replaces that member's overrides; the others stay
    twin.set_params(rf={"n_estimators": 10}, seed=4)
    assert twin.rf == {"n_estimators": 10} and twin.member_params("rf")["n_estimators"] == 10
    assert twin.member_params("rf")["max_depth"] == 12 and ens.rf == {"n_estimators": 30} and twin.seed == 4
    # a fitted ensemble: short repr with its summary, no arrays; clone gives an unfitted copy
    text = repr(fitted)
    assert len(text) < 400 and "array" not in text and "fitted on" in text
    assert "weights rf " in fitted.summary() and not hasattr(clone(fitted), "members_")


def test_predicting_unfitted_raises_fehkit_and_scikit_learn_not_fitted_errors():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    from fehkit.errors import FehkitError

    for est, X in ((FeHEnsemble(), np.zeros((2, 3))), (TorchMLPRegressor(), np.zeros((2, 3), np.float32))):
        with pytest.raises(NotFittedError, match="not fitted yet") as info:
            est.predict(X)
        assert isinstance(info.value, FehkitError) and isinstance(info.value, SklearnNotFittedError)


def test_the_mlp_is_a_scikit_learn_estimator():
    from sklearn.base import clone

    m = TorchMLPRegressor(hidden=[16], max_epochs=5)
    assert m.hidden == [16] and clone(m).get_params() == m.get_params()
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 2)).astype(np.float32)
    assert m.fit(X, X[:, 0]) is m and m.n_features_in_ == 2 and m.hidden == [16]
    assert -1 < m.score(X, X[:, 0]) <= 1  # RegressorMixin's R^2


def test_grid_search_cv_runs_over_the_ensemble(bench):
    from sklearn.model_selection import GridSearchCV

    est = FeHEnsemble(xgb={"n_estimators": 10}, members=("xgb",), n_folds=2)
    search = GridSearchCV(est, {"xgb": [{"n_estimators": 5}, {"n_estimators": 20}]}, cv=2, error_score="raise")
    search.fit(bench["X"].frame(), bench["y"])
    assert len(search.cv_results_["params"]) == 2 and np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_estimator_
    assert best.xgb in ({"n_estimators": 5}, {"n_estimators": 20}) and set(best.weights_) == {"xgb"}
    # score is the R^2 of the fused feh column
    from sklearn.metrics import r2_score

    frame = bench["X_test"].frame()
    truth = bench["truth_test"]["feh_ref"].to_numpy()
    feh = best.predict(frame)["feh"].to_numpy()
    ok = np.isfinite(feh)  # upper limits have no feh
    assert best.score(frame, truth) == pytest.approx(r2_score(np.asarray(truth)[ok], feh[ok]))


@pytest.mark.parametrize("bad, match", [
    ({"members": ("rf", "svm")}, "members"),
    ({"members": ()}, "members"),
    ({"members": ("rf", "rf")}, "members"),
    ({"rf": 500}, "rf = 500"),
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


def test_grid_search_scores_each_candidate_by_its_out_of_fold_mse(bench):
    best, table = grid_search(bench["X"], bench["y"], {"xgb": {"n_estimators": [3, 10]}}, n_folds=2, seed=2,
                              label_error=0.05)
    for n, cv_mse in zip(table["n_estimators"], table["cv_mse"], strict=True):
        one = FeHEnsemble(xgb={"n_estimators": n}, members=("xgb",), n_folds=2, seed=2, label_error=0.05)
        one.fit(bench["X"], bench["y"])
        assert cv_mse == one.oof_mse_["xgb"] == -oof_mse_score(one)
    assert best["xgb"]["n_estimators"] == table.loc[table["cv_mse"].idxmin(), "n_estimators"]


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
    num = [c for c in PREDICT_COLUMNS if not c.startswith("flag")]
    assert np.allclose(out[num], held_out[num], atol=1e-6, equal_nan=True)
    assert out["flag"].tolist() == held_out["flag"].tolist()
    assert out["flag_reason"].tolist() == held_out["flag_reason"].tolist()


def test_the_model_card_records_what_the_model_is(saved, fitted, bench):
    card = read_card(saved)
    assert card["synthetic"] is True
    assert card["training_set_sha256"] == training_hash(bench["X"].X, bench["y"])
    assert card["feature_names"] == list(fitted.feature_names_in_)
    assert card["members"] == ["rf", "xgb", "dnn"] and card["format_version"] == 2
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
    # the card's checksum updated too: the member files then disagree with the card
    _edit_card(path, lambda c: c.update(feature_names=c["feature_names"][:-1]), rehash=True)
    with pytest.raises(IncompatibleModelError, match="features"):
        FeHEnsemble.load(path)


# -- the whole folder is checked --------------------------------------------------------------------------------------
def test_every_file_of_the_folder_is_checksummed(saved):
    lines = (saved / CHECKSUMS).read_text().splitlines()
    listed = {line.split("  ")[1]: line.split("  ")[0] for line in lines}
    assert set(listed) == {CARD, *FILES.values()}
    assert all(file_sha256(saved / n) == sha for n, sha in listed.items())
    assert sorted(p.name for p in saved.iterdir()) == sorted([*listed, CHECKSUMS, MARKER])


def test_an_edited_calibration_in_the_card_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit_card(path, lambda c: c["ensemble"]["calibration"].update(scale=0.5))
    with pytest.raises(TamperedModelError, match=r"card\.json: SHA-256 differs"):
        FeHEnsemble.load(path)


@pytest.mark.parametrize("name", ["notes.txt", ".DS_Store"])
def test_an_extra_file_is_refused(saved, tmp_path, name):
    path = _copy(saved, tmp_path)
    (path / name).write_text("x")
    with pytest.raises(TamperedModelError, match=rf"{re.escape(name)}: is not listed in checksums\.sha256"):
        FeHEnsemble.load(path)
    _rehash(path)  # listed too: still not a file of this model
    with pytest.raises(TamperedModelError, match=rf"{re.escape(name)}: is not a file of this model"):
        FeHEnsemble.load(path)


def test_a_missing_or_garbled_checksum_file_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    sums = (path / CHECKSUMS).read_text()
    (path / CHECKSUMS).write_text(sums.replace("  ", " ", 1))
    with pytest.raises(TamperedModelError, match="line 1 is"):
        FeHEnsemble.load(path)
    (path / CHECKSUMS).unlink()
    with pytest.raises(TamperedModelError, match=r"checksums\.sha256: missing"):
        FeHEnsemble.load(path)


def test_without_its_marker_a_model_folder_still_loads_and_can_be_replaced(saved, fitted, tmp_path, bench):
    # the marker says who wrote the folder (it is written after the checksums, and not read when loading)
    path = _copy(saved, tmp_path)
    (path / MARKER).unlink()
    assert np.allclose(FeHEnsemble.load(path).predict(bench["X_test"])["feh"], fitted.predict(bench["X_test"])["feh"],
                       equal_nan=True)
    fitted.save(path, overwrite=True, card={"synthetic": True})  # still recognised by its card
    assert (path / MARKER).is_file() and read_card(path)["synthetic"] is True


def test_a_folder_of_the_older_format_is_refused_with_a_hint_and_can_be_replaced(saved, fitted, tmp_path):
    path = _copy(saved, tmp_path)
    (path / MARKER).unlink()
    (path / CHECKSUMS).unlink()
    _edit_card(path, lambda c: c.update(format_version=1))
    with pytest.raises(IncompatibleModelError, match="format_version 1: written by an older fehkit.*retrain"):
        FeHEnsemble.load(path)
    fitted.save(path, overwrite=True, card={"synthetic": True})
    assert read_card(path)["format_version"] == 2


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(card):
        for k in keys[:-1]:
            card = card[k]
        card[keys[-1]] = value(card[keys[-1]]) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("ensemble", "weights", "rf", -0.1), "ensemble.weights"),
    (_set("ensemble", "weights", "rf", float("nan")), "ensemble.weights"),
    (_set("ensemble", "weights", lambda w: {k: 2 * v for k, v in w.items()}), "summing to 1"),
    (_set("ensemble", "weights", lambda w: {"rf": 0.5, "xgb": 0.5}), "ensemble.weights"),
    (_set("ensemble", "oof_mse", "dnn", 0), "ensemble.oof_mse"),
    (_set("ensemble", "calibration", "scale", 0), r"ensemble\.calibration\.scale = 0; expected a finite number > 0"),
    (_set("ensemble", "calibration", "scale", float("inf")), "ensemble.calibration.scale"),
    (_set("ensemble", "calibration", "floor", "0.05"), "ensemble.calibration.floor"),
    (_set("ensemble", "calibration", "floor", -0.05), "ensemble.calibration.floor"),
    (_set("ensemble", "calibration", "floor", 0.01), r"calibration\.floor = 0\.01; expected a floor >= floor_min"),
    (_set("ensemble", "calibration", "tail_nu", 1.5), "ensemble.calibration.tail_nu"),
    (_set("ensemble", "calibration", "err95_factor", 0), "ensemble.calibration.err95_factor"),
    (_set("members", ["rf", "svm"]), "members"),
    (_set("members", []), "members"),
    (_set("members", ["rf", "xgb"]), "files"),
    (_set("files", lambda f: {k: v for k, v in f.items() if k != "rf.skops"}), "files"),
    (_set("feature_names", []), "feature_names"),
    (_set("feature_names", lambda n: [n[0], *n[:-1]]), "feature_names"),
    (_set("feature_names", lambda n: [1, *n[1:]]), "feature_names"),
    (_set("synthetic", "yes"), "synthetic"),
    (_set("format_version", "2"), "format_version '2'"),
    (_set("format", "pickle"), "format 'pickle'"),
    (_set("ensemble", "label_range", [0.0, -4.0]), "ensemble.label_range"),
    (_set("ensemble", "label_range", [-4.0]), "ensemble.label_range"),
    (_set("ensemble", "label_range", [-4.0, None]), "ensemble.label_range"),
    (_set("ensemble", "params", "members", ["rf", "xgb"]), "ensemble.params"),
    (_set("ensemble", "params", lambda p: {**p, "learning_rate": 1}), "ensemble.params"),
    (_set("ensemble", "params", "target", "log_feh"), "ensemble.params"),
    (_set("dnn", "y_scale", 0), "dnn.y_scale"),
    (_set("dnn", "params", "hidden", [7]), r"dnn\.safetensors: does not fit"),
])
def test_card_values_are_checked_on_load(saved, tmp_path, edit, match):
    path = _copy(saved, tmp_path)
    _edit_card(path, edit, rehash=True)  # a consistent folder, so the values themselves are what is refused
    with pytest.raises(IncompatibleModelError, match=match):
        FeHEnsemble.load(path)


def test_member_hashes_in_the_card_must_match_the_checksums(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit_card(path, _set("files", "xgb.json", "0" * 64), rehash=True)
    with pytest.raises(TamperedModelError, match=r"xgb\.json: the SHA-256 in card\.json differs"):
        FeHEnsemble.load(path)


def _swap_forest(path, est) -> None:
    """Put another object into rf.skops and update every SHA-256, as an attacker who can edit all files would."""
    from skops.io import dump

    dump(est, path / FILES["rf"])
    _edit_card(path, lambda c: c["files"].update({FILES["rf"]: file_sha256(path / FILES["rf"])}), rehash=True)


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


def test_the_error_floor_holds_for_every_star(fitted, held_out):
    c = fitted.calibration_
    assert c["floor"] >= ensemble_module.ERR_FLOOR and c["tail_nu"] > 2 and c["err95_factor"] > 0
    assert (held_out["feh_err"] >= ensemble_module.ERR_FLOOR).all()
    assert 0 < c["oof_coverage_68"] < c["oof_coverage_95"] < 1


def test_upper_limits_have_an_empty_feh_and_a_finite_limit(held_out):
    upper = has_flag(held_out["flag"], "upper_limit")
    assert upper.any() and held_out["feh"][upper].isna().all()
    assert np.isfinite(held_out["feh_upper"][upper]).all()
    assert np.isfinite(held_out["feh"][detected(held_out["flag"])]).all()
    assert np.isfinite(held_out["feh_rf"][upper]).all()  # the members' raw values stay in their own columns


def test_score_is_r2_over_the_measured_stars(bench, fitted, held_out):
    y = bench["truth_test"]["feh"].to_numpy(float)
    ok = held_out["feh"].notna().to_numpy()
    expected = 1 - np.sum((y[ok] - held_out["feh"][ok]) ** 2) / np.sum((y[ok] - y[ok].mean()) ** 2)
    assert fitted.score(bench["X_test"], y) == pytest.approx(expected)
