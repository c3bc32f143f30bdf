"""The forest and the boosted trees as tensors give the libraries' own predictions, NaN and threshold ties included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import RandomForestRegressor

from fehkit.models.boosting import XGB_DEFAULTS, make_boosting
from fehkit.models.forest import RF_DEFAULTS, make_forest
from fehkit.models.trees import TensorTrees, _parse_base_score, compiled_available, walk_columns

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_numba = pytest.mark.skipif(not compiled_available(), reason="the compiled walk needs numba")

N_FEATURES = 8


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features on a 0.1 grid (many exact ties), NaN in features 0-3 (masked lines), a nonlinear target."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, N_FEATURES)), 1)
    X[:, :4][rng.uniform(size=(n, 4)) < 0.15] = np.nan
    X[:, 7] = rng.normal(size=n)  # one continuous feature
    Z = np.nan_to_num(X)
    y = Z[:, 0] - 0.5 * Z[:, 1] ** 2 + np.sin(3 * Z[:, 2]) + 0.3 * Z[:, 7] + 0.1 * rng.normal(size=n)
    return X, y


def _boundary_rows(X: np.ndarray, trees: TensorTrees, thresholds: dict[int, np.ndarray], n: int,
                   seed: int) -> np.ndarray:
    """Rows whose values sit on the trees' thresholds and on the float32 values either side of them, or NaN."""
    rng = np.random.default_rng(seed)
    rows = X[rng.integers(0, len(X), n)].copy()
    for f, thr in thresholds.items():
        thr = thr.astype(np.float32)
        near = np.concatenate([thr, np.nextafter(thr, np.float32(np.inf)), np.nextafter(thr, np.float32(-np.inf))])
        pick = rng.uniform(size=n)
        on = pick < 0.7
        rows[on, f] = rng.choice(near, on.sum())
        rows[pick > 0.9, f] = np.nan
    return rows.astype(np.float32)


def _sklearn_thresholds(rf) -> dict[int, np.ndarray]:
    out: dict[int, list] = {}
    for est in rf.estimators_:
        t = est.tree_
        inner = (t.children_left >= 0) & np.isfinite(t.threshold)  # +inf: "all values left, NaN right"
        for f, thr in zip(t.feature[inner], t.threshold[inner], strict=True):
            out.setdefault(int(f), []).append(thr)
    return {f: np.unique(v) for f, v in out.items()}


def _xgb_thresholds(model) -> dict[int, np.ndarray]:
    trees = json.loads(bytes(model.get_booster().save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]
    out: dict[int, list] = {}
    for t in trees:
        for f, c, left in zip(t["split_indices"], t["split_conditions"], t["left_children"], strict=True):
            if left != -1:
                out.setdefault(int(f), []).append(c)
    return {f: np.unique(np.asarray(v, np.float32)) for f, v in out.items()}


@pytest.fixture(scope="module")
def data():
    X, y = _data(1500, seed=0)
    Xtest, _ = _data(700, seed=1)
    return X, y, Xtest


@pytest.fixture(scope="module")
def forests(data):
    X, y, _ = data
    return {"default": make_forest(0).fit(X, y),  # RF_DEFAULTS: 500 trees of depth 12
            "small": make_forest(1, n_estimators=7, max_depth=None, max_features=1.0).fit(X, y)}


@pytest.fixture(scope="module")
def boosters(data):
    X, y, _ = data
    return {"default": make_boosting(0).fit(X, y),  # XGB_DEFAULTS: 400 trees of depth 4
            "small": make_boosting(1, n_estimators=15, max_depth=6, max_bin=256).fit(X, y)}


def test_defaults_are_the_ones_converted():
    assert RF_DEFAULTS["n_estimators"] == 500 and XGB_DEFAULTS["n_estimators"] == 400


@pytest.mark.parametrize("which", ["default", "small"])
def test_forest_matches_sklearn(data, forests, which):
    X, _, Xtest = data
    rf = forests[which]
    trees = TensorTrees.from_sklearn_forest(rf)
    assert trees.n_trees == rf.n_estimators
    ties = _boundary_rows(Xtest, trees, _sklearn_thresholds(rf), 600, seed=2)
    for rows in (X, Xtest, ties):
        x64 = torch.from_numpy(rows.astype(np.float64))
        # the same leaves as scikit-learn, row by row and tree by tree
        np.testing.assert_array_equal(trees.leaves(x64).numpy(), rf.apply(rows))
        pred = trees(x64)
        assert pred.dtype == torch.float64
        diff = np.abs(pred.numpy() - rf.predict(rows)).max()
        print(f"forest {which}: max |tensor - sklearn| = {diff:.3g}")
        assert diff < 1e-12
    # float32 in, float32 out (sum in float32): within float32 rounding
    pred32 = trees(torch.from_numpy(ties))
    assert pred32.dtype == torch.float32
    np.testing.assert_allclose(pred32.numpy(), rf.predict(ties), rtol=0, atol=1e-5)


def test_forest_thresholds_round_down_to_float32(forests):
    """A midpoint of two float32 values is no float32: rounding it to nearest would send the upper one left."""
    rf = forests["small"]
    t = rf.estimators_[0].tree_
    packed = TensorTrees.from_sklearn_forest(rf)
    ids = packed.node_id[0].numpy()[:t.node_count]  # the packed nodes in scikit-learn's numbering
    thr32 = packed.threshold[0].numpy()[:t.node_count]
    inner = (t.children_left[ids] >= 0) & np.isfinite(t.threshold[ids])
    thr32, thr64 = thr32[inner], t.threshold[ids][inner]
    assert np.any(thr64.astype(np.float32).astype(np.float64) != thr64)  # such thresholds occur
    assert np.all(thr32.astype(np.float64) <= thr64)
    assert np.all(np.nextafter(thr32, np.float32(np.inf)).astype(np.float64) > thr64)


def test_forest_nan_follows_missing_go_to_left(data):
    """NaN seen in training goes where the split learned; NaN only at prediction goes to the bigger child."""
    X, y, _ = data
    rf = RandomForestRegressor(n_estimators=5, random_state=0).fit(X[:, 4:], y)  # features without NaN
    trees = TensorTrees.from_sklearn_forest(rf)
    rows = X[:300, 4:].copy()
    rows[::3, 0] = np.nan
    rows[::5, 3] = np.nan
    np.testing.assert_array_equal(trees.leaves(torch.from_numpy(rows)).numpy(), rf.apply(rows))
    np.testing.assert_allclose(trees.predict(rows), rf.predict(rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", ["default", "small"])
def test_boosting_matches_xgboost(data, boosters, which):
    X, _, Xtest = data
    model = boosters[which]
    trees = TensorTrees.from_xgboost(model)
    ties = _boundary_rows(Xtest, trees, _xgb_thresholds(model), 600, seed=3)
    for rows in (X, Xtest, ties):
        x64 = torch.from_numpy(rows.astype(np.float64))
        # the same leaves as XGBoost (its node ids), row by row and tree by tree
        leaves = trees.leaves(x64).numpy()
        np.testing.assert_array_equal(leaves, model.get_booster().predict(xgb.DMatrix(rows), pred_leaf=True))
        expected = model.predict(rows)
        diff = np.abs(trees(x64).numpy() - expected).max()
        print(f"xgboost {which}: max |tensor (float64 sum) - xgboost| = {diff:.3g}")
        assert diff < 1e-5
        # XGBoost adds float32 leaves to the float32 base score one tree after another: so does this, exactly
        values = trees.value.numpy()[np.arange(trees.n_trees), leaves].astype(np.float32)
        acc = np.full(len(rows), trees.base_score, np.float32)
        for k in range(trees.n_trees):
            acc = acc + values[:, k]
        np.testing.assert_array_equal(acc, expected)


@needs_numba
@pytest.mark.parametrize("which", ["default", "small"])
def test_compiled_walk_gives_the_tensor_walk(data, forests, boosters, which):
    """The compiled CPU walk: the libraries' predictions, ties and NaN included, in blocks and one row at a time."""
    X, _, Xtest = data
    for model, trees, thresholds in (
            (forests[which], TensorTrees.from_sklearn_forest(forests[which]), _sklearn_thresholds(forests[which])),
            (boosters[which], TensorTrees.from_xgboost(boosters[which]), _xgb_thresholds(boosters[which]))):
        ties = _boundary_rows(Xtest, trees, thresholds, 600, seed=4)
        for rows in (X, ties, ties[:1], ties[:70]):  # several blocks, one row, a block and a short one
            got = trees.predict_compiled(rows)
            assert got.dtype == np.float64 and got.shape == (len(rows),)
            assert np.array_equal(trees.predict_compiled(rows, columns=walk_columns(rows)), got)  # made once
            np.testing.assert_allclose(got, trees.predict(rows), rtol=0, atol=1e-12)
            np.testing.assert_allclose(got, model.predict(rows), rtol=0, atol=1e-12 if trees.average else 1e-5)
    assert TensorTrees.from_sklearn_forest(forests[which]).predict_compiled(X[:0]).shape == (0,)


@needs_numba
def test_compiled_walk_checks_its_input(forests):
    trees = TensorTrees.from_sklearn_forest(forests["small"])
    with pytest.raises(ValueError, match="expected \\(n_rows, n_features\\)"):
        trees.predict_compiled(np.zeros(N_FEATURES))
    with pytest.raises(ValueError, match=f"fitted on {N_FEATURES}"):
        trees.predict_compiled(np.zeros((3, N_FEATURES + 1)))
    with pytest.raises(ValueError, match="expected walk_columns"):
        trees.predict_compiled(np.zeros((3, N_FEATURES)), columns=np.zeros((3, N_FEATURES), np.float32))


def test_boosting_early_stopping_uses_best_iteration(data):
    X, y, Xtest = data
    model = make_boosting(0, n_estimators=300, learning_rate=0.3, early_stopping_rounds=5)
    model.fit(X[:1000], y[:1000], eval_set=[(X[1000:], y[1000:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()  # it did stop early
    trees = TensorTrees.from_xgboost(model)
    assert trees.n_trees == model.best_iteration + 1
    np.testing.assert_allclose(trees.predict(Xtest), model.predict(Xtest), rtol=0, atol=1e-5)
    # a Booster predicts with all its rounds, and so does its conversion; an explicit range is honoured too
    booster = model.get_booster()
    every = TensorTrees.from_xgboost(booster)
    assert every.n_trees == booster.num_boosted_rounds()
    np.testing.assert_allclose(every.predict(Xtest), booster.predict(xgb.DMatrix(Xtest)), rtol=0, atol=1e-5)
    part = TensorTrees.from_xgboost(model, iteration_range=(2, 9))
    np.testing.assert_allclose(part.predict(Xtest), model.predict(Xtest, iteration_range=(2, 9)), rtol=0, atol=1e-5)


def test_boosting_dart(data):
    X, y, Xtest = data
    model = make_boosting(0, n_estimators=30, booster="dart", rate_drop=0.2).fit(X, y)
    trees = TensorTrees.from_xgboost(model)
    np.testing.assert_allclose(trees.predict(Xtest), model.predict(Xtest), rtol=0, atol=1e-5)


def test_base_score_strings():
    assert _parse_base_score("[5E-1]") == 0.5
    assert _parse_base_score("-1.2064668E-1") == pytest.approx(-0.12064668)
    assert _parse_base_score(0.25) == 0.25
    with pytest.raises(ValueError, match="one number"):
        _parse_base_score("[1E0,2E0]")


def test_refuses_what_it_cannot_convert(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="objective"):
        TensorTrees.from_xgboost(make_boosting(0, n_estimators=2, objective="count:poisson").fit(X, np.abs(y)))
    with pytest.raises(ValueError, match="fit it first"):
        TensorTrees.from_sklearn_forest(RandomForestRegressor())
    trees = TensorTrees.from_sklearn_forest(RandomForestRegressor(n_estimators=2, random_state=0).fit(X, y))
    with pytest.raises(ValueError, match="features"):
        trees(torch.zeros((3, N_FEATURES + 1)))


def test_ensemble_members_convert():
    """A fitted FeHEnsemble's forest and boosted trees (bare scikit-learn / XGBoost estimators) on its features."""
    from fehkit.models import FeHEnsemble
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params, spectra_features

    sim = make_benchmark(120, seed=3)
    feats = spectra_features(sim.batch, reference_params(sim.truth))
    ens = FeHEnsemble(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 5}, n_folds=3)
    ens.fit(feats, sim.truth["feh_ref"])
    X = np.asarray(feats.X, np.float32)  # what the ensemble hands its members
    assert np.isnan(X).any()
    x64 = torch.from_numpy(X.astype(np.float64))
    rf, booster = ens.members_["rf"], ens.members_["xgb"]
    diff_rf = np.abs(TensorTrees.from_sklearn_forest(rf)(x64).numpy() - rf.predict(X)).max()
    diff_xgb = np.abs(TensorTrees.from_xgboost(booster)(x64).numpy() - booster.predict(X)).max()
    print(f"ensemble members: rf {diff_rf:.3g}, xgb {diff_xgb:.3g}")
    assert diff_rf < 1e-12 and diff_xgb < 1e-5
    # and the ensemble's own member columns (each the classical base plus the member) differ by the same amount
    out = ens.predict(feats)
    tensor_gap = TensorTrees.from_sklearn_forest(rf).predict(X) - TensorTrees.from_xgboost(booster).predict(X)
    np.testing.assert_allclose((out["feh_rf"] - out["feh_xgb"]).to_numpy(), tensor_gap, rtol=0, atol=1e-5)

@cuda
def test_on_cuda_like_on_cpu(data, forests, boosters):
    _, _, Xtest = data
    x64 = torch.from_numpy(Xtest.astype(np.float64))
    for trees, expected in ((TensorTrees.from_sklearn_forest(forests["default"]), forests["default"].predict(Xtest)),
                            (TensorTrees.from_xgboost(boosters["default"]), boosters["default"].predict(Xtest))):
        gpu = trees.to("cuda")
        assert gpu.threshold.is_cuda
        np.testing.assert_array_equal(gpu.leaves(x64.cuda()).cpu().numpy(), trees.leaves(x64).numpy())
        np.testing.assert_allclose(gpu(x64.cuda()).cpu().numpy(), expected, rtol=0, atol=1e-5)
