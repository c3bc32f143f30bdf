"""The training dashboard, the fusion explorer, and the library hooks under them.

Given a tiny benchmark run (200 SYNTHETIC stars, tiny ensemble) trained with the dashboard's epoch callback, when
the MLP trains the loss curve grows epoch by epoch and marks the weights kept; afterwards the dashboard shows the
ensemble's own out-of-fold residuals and weights. Given the same run, when a weight slider or a rule button of the
fusion explorer is moved, the MAE shown changes and equals what the library's fusion gives, and the
inverse-variance rule reproduces FeHEnsemble.predict and metrics.json exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from jupyter_bokeh import BokehModel

from fehkit.benchmark import oof_table, run_benchmark
from fehkit.errors import FehkitWarning, PlotInputError
from fehkit.evaluate import headline_mask
from fehkit.models import FeHEnsemble, TorchMLPRegressor
from fehkit.models.base import EnsembleError
from fehkit.models.ensemble import fuse, fusion_importance, fusion_scores, fusion_weights, normalize_weights
from fehkit.models.mlp import EpochRecord
from fehkit.plots.training import loss_figure, start_loss_curve, stream_loss
from fehkit.widgets import FusionExplorer, TrainingDashboard

TINY = dict(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 25, "patience": 5}, n_folds=3)


def _data(fig, name: str) -> dict:
    return fig.select_one({"name": name}).data_source.data


@pytest.fixture(scope="module")
def trained():
    """A tiny benchmark run trained with a dashboard attached; what the loss source held at each epoch."""
    dashboard = TrainingDashboard()
    source = dashboard.loss_plot._model.select_one({"name": "val_loss"}).data_source
    seen: list[tuple[str, int, int]] = []

    def spy(record: EpochRecord) -> None:
        dashboard.on_epoch(record)
        seen.append((record.fit, record.epoch, len(source.data["epoch"])))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        run = run_benchmark(200, seed=11, cannon=False, ablation=False, robustness=False, ensemble=TINY,
                            epoch_callback=spy)
    return run, dashboard, seen


# ---- the MLP's epoch callback --------------------------------------------------------------------------------
def test_epoch_callback_reports_every_epoch_and_changes_nothing():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = X @ np.array([0.5, -1.0, 0.2, 0.0]) + 0.3 * rng.normal(size=300)
    params = dict(hidden=(16, 8), max_epochs=60, patience=4, seed=3)
    records: list[EpochRecord] = []
    with_cb = TorchMLPRegressor(**params).fit(X, y, epoch_callback=records.append)
    without = TorchMLPRegressor(**params).fit(X, y)

    # the same training, bit for bit
    assert with_cb.history_ == without.history_ and with_cb.train_history_ == without.train_history_
    for (k, a), b in zip(with_cb.module_.state_dict().items(), without.module_.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # one record per epoch, in order, with the numbers the fit recorded
    assert [r.epoch for r in records] == list(range(1, with_cb.n_epochs_ + 1))
    assert [r.val_loss for r in records] == with_cb.history_
    assert [r.train_loss for r in records] == with_cb.train_history_
    assert [r.last for r in records] == [False] * (len(records) - 1) + [True]
    best = int(np.argmin(with_cb.history_)) + 1
    assert records[-1].best_epoch == with_cb.best_epoch_ == best
    if with_cb.n_epochs_ < params["max_epochs"]:  # stopped early: patience epochs after the best one
        assert with_cb.n_epochs_ == best + params["patience"]
    # the untrained net predicts the mean (loss about 1 on the standardized target), then learns
    assert with_cb.train_history_[-1] < with_cb.train_history_[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_epoch_callback_changes_nothing_on_cuda():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = X[:, 0] - 0.5 * X[:, 1] + 0.2 * rng.normal(size=400)
    params = dict(hidden=(32, 16), max_epochs=30, patience=5, seed=2, device="cuda")
    records: list[EpochRecord] = []
    without = TorchMLPRegressor(**params).fit(X, y)
    if TorchMLPRegressor(**params).fit(X, y).history_ != without.history_:
        pytest.skip("CUDA training is not bit-reproducible on this GPU: nothing to compare the callback run with")
    with_cb = TorchMLPRegressor(**params).fit(X, y, epoch_callback=records.append)
    assert with_cb.history_ == without.history_ == [r.val_loss for r in records]
    np.testing.assert_array_equal(with_cb.predict(X), without.predict(X))


# ---- the training dashboard ---------------------------------------------------------------------------------
def test_loss_curve_grows_while_the_mlp_trains(trained):
    run, dashboard, seen = trained
    fits = list(dict.fromkeys(f for f, _, _ in seen))
    assert fits == ["fold 1 of 3", "fold 2 of 3", "fold 3 of 3", "final fit"]
    for fit in fits:
        lengths = [n for f, _, n in seen if f == fit]
        epochs = [e for f, e, _ in seen if f == fit]
        # the source held exactly the epochs so far when each epoch arrived: it grew one row at a time
        assert lengths == epochs == list(range(1, len(epochs) + 1))
    # at the end: the final fit's curve, the folds' curves in grey, the marker on the weights the MLP kept
    fig = dashboard.loss_plot._model
    dnn = run.ensemble.members_["dnn"]
    assert list(_data(fig, "val_loss")["val_loss"]) == dnn.history_
    assert list(_data(fig, "train_loss")["train_loss"]) == dnn.train_history_
    assert len(_data(fig, "earlier_fits")["xs"]) == 3
    assert list(_data(fig, "best")["epoch"]) == [dnn.best_epoch_]
    assert _data(fig, "best")["val_loss"][0] == min(dnn.history_)
    assert fig.select_one({"name": "best_span"}).location == dnn.best_epoch_
    assert fig.title.text == (f"SYNTHETIC: MLP loss, final fit: stopped after epoch {dnn.n_epochs_}, kept the "
                              f"weights of epoch {dnn.best_epoch_}")


def test_dashboard_shows_the_ensembles_oof_residuals_and_weights(trained):
    run, dashboard, _ = trained
    dashboard.show_run(run)
    ens = run.ensemble
    oof = ens.oof_predictions_
    labels = run.sim.truth.loc[run.sim.truth["split"] == "train", "feh_ref"].to_numpy(float)[oof["row"]]
    for m in ("rf", "xgb", "dnn"):
        data = _data(dashboard.residual_plot._model, f"oof_{m}")
        np.testing.assert_array_equal(data["resid"], oof[f"feh_{m}"].to_numpy() - labels)
    np.testing.assert_array_equal(_data(dashboard.residual_plot._model, "oof_ensemble")["resid"],
                                  oof["feh"].to_numpy() - labels)
    weights = _data(dashboard.weight_plot._model, "weights")
    assert list(weights["weight"]) == list(ens.weights_.values())
    assert "SYNTHETIC" in dashboard.summary.value and f"{ens.weights_['rf']:.3f}" in dashboard.summary.value
    assert isinstance(dashboard.loss_plot, BokehModel)


def test_dashboard_refuses_what_it_cannot_draw(trained):
    run, _, _ = trained
    dashboard = TrainingDashboard()
    with pytest.raises(PlotInputError, match="EpochRecord"):
        dashboard.on_epoch({"epoch": 1})
    with pytest.raises(PlotInputError, match="oof_predictions_"):
        dashboard.show_ensemble(FeHEnsemble(), [0.0])
    with pytest.raises(PlotInputError, match="labels"):
        dashboard.show_ensemble(run.ensemble, [-2.0, -3.0])


def test_loss_figure_streams_and_restarts():
    fig = loss_figure(synthetic=False)
    for epoch, (tr, va) in enumerate([(1.0, 0.9), (0.8, 0.7), (0.7, 0.75)], start=1):
        stream_loss(fig, epoch, tr, va, best_epoch=min(epoch, 2), best_loss=min(va, 0.7))
    assert list(_data(fig, "val_loss")["epoch"]) == [1, 2, 3]
    assert list(_data(fig, "best")["epoch"]) == [2] and fig.select_one({"name": "best_span"}).location == 2
    start_loss_curve(fig, "next fit")
    assert list(_data(fig, "val_loss")["epoch"]) == [] and list(_data(fig, "best")["epoch"]) == []
    assert [list(ys) for ys in _data(fig, "earlier_fits")["ys"]] == [[0.9, 0.7, 0.75]]
    assert fig.title.text == "next fit"


# ---- the fusion library -------------------------------------------------------------------------------------
def test_inverse_variance_fusion_is_what_the_ensemble_predicts(trained):
    run, _, _ = trained
    ens, pred = run.ensemble, run.predictions
    weights = fusion_weights(ens.oof_mse_)
    assert weights == ens.weights_
    fused = fuse({m: pred[f"feh_{m}"].to_numpy() for m in weights}, weights)
    measured = np.isfinite(pred["feh"].to_numpy())
    assert measured.sum() > 10
    np.testing.assert_array_equal(fused[measured], pred["feh"].to_numpy()[measured])
    # and the fused test-set numbers are metrics.json's
    s = fusion_scores({m: pred[f"feh_{m}"] for m in weights}, weights, pred["true_feh"], pred["feh_err"],
                      subset=headline_mask(pred["flag"], pred["snr"]))
    assert s["n"] == run.metrics["n_headline"]
    assert s["mae"] == pytest.approx(run.metrics["models"]["ensemble"]["mae"], abs=1e-12)
    assert s["bias"] == pytest.approx(run.metrics["models"]["ensemble"]["bias"], abs=1e-12)
    assert s["coverage_68"] == pytest.approx(run.metrics["coverage_68"], abs=1e-12)
    # the out-of-fold fused values are the ensemble's own
    oof = oof_table(run)
    np.testing.assert_array_equal(fuse({m: oof[f"feh_{m}"] for m in weights}, weights), oof["feh"].to_numpy())


def test_fusion_rules_and_their_errors():
    mse = {"rf": 0.01, "xgb": 0.02, "dnn": 0.04}
    w = fusion_weights(mse)
    assert w["rf"] == pytest.approx(2 * w["xgb"]) == pytest.approx(4 * w["dnn"])
    assert sum(w.values()) == pytest.approx(1.0)
    assert fusion_weights(mse, "equal") == {m: pytest.approx(1 / 3) for m in mse}
    assert fusion_weights(mse, "single", member="xgb") == {"rf": 0.0, "xgb": 1.0, "dnn": 0.0}
    # a zero-weight member's NaN does not spoil the fused value
    assert fuse({"rf": np.array([-2.0]), "dnn": np.array([np.nan])}, {"rf": 1.0, "dnn": 0.0}).tolist() == [-2.0]
    assert normalize_weights({"rf": 2.0, "dnn": 2.0}) == {"rf": 0.5, "dnn": 0.5}
    with pytest.raises(EnsembleError, match="rule 'median'"):
        fusion_weights(mse, "median")
    with pytest.raises(EnsembleError, match="member 'cannon'"):
        fusion_weights(mse, "single", member="cannon")
    with pytest.raises(EnsembleError, match="positive"):
        fusion_weights({"rf": 0.0, "dnn": 0.01})
    with pytest.raises(EnsembleError, match="sum to 0"):
        normalize_weights({"rf": 0.0, "dnn": 0.0})
    with pytest.raises(EnsembleError, match="no member"):
        fuse({"rf": np.zeros(2)}, {"rf": 0.5, "dnn": 0.5})


# ---- the fusion explorer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explorer(trained):
    return FusionExplorer(trained[0])


def test_explorer_starts_at_the_ensembles_numbers(trained, explorer):
    run = trained[0]
    assert explorer.rule.value == "inverse_variance"
    assert explorer.weights == run.ensemble.weights_
    mae = dict(zip(_data(explorer.metrics_plot._model, "mae")["set"], _data(explorer.metrics_plot._model, "mae")["mae"],
                   strict=True))
    assert mae["test"] == pytest.approx(run.metrics["models"]["ensemble"]["mae"], abs=1e-12)
    assert explorer.scores["test"]["coverage_68"] == pytest.approx(run.metrics["coverage_68"], abs=1e-12)
    assert explorer.scores["out-of-fold"]["n"] > explorer.scores["test"]["n"]
    assert "SYNTHETIC" in explorer.table.value
    # shuffling the classical value (the starting point of every member) costs more than any single line
    assert explorer.importance.index[0] == "feh_cog" and explorer.importance.iloc[0] > 0.05


def test_weight_slider_changes_the_mae_shown(trained, explorer):
    run = trained[0]
    explorer.rule.value = "inverse_variance"
    source = explorer.metrics_plot._model.select_one({"name": "mae"}).data_source
    before = list(source.data["mae"])
    importance_before = list(_data(explorer.importance_plot._model, "importance")["value"])
    explorer.sliders["dnn"].value = 0.0
    explorer.sliders["rf"].value = 1.0
    after = list(source.data["mae"])
    assert after != before
    assert explorer.rule.value == "custom"
    sliders = {m: s.value for m, s in explorer.sliders.items()}
    expected = normalize_weights(sliders)
    assert explorer.weights == expected and explorer.weights["dnn"] == 0.0
    pred = run.predictions
    s = fusion_scores({m: pred[f"feh_{m}"] for m in expected}, expected, pred["true_feh"], pred["feh_err"],
                      subset=headline_mask(pred["flag"], pred["snr"]))
    assert after[list(source.data["set"]).index("test")] == pytest.approx(s["mae"], abs=1e-12)
    assert f"{s['mae']:.4f}" in explorer.table.value
    assert list(_data(explorer.importance_plot._model, "importance")["value"]) != importance_before
    # the reference dashes stay at the inverse-variance MAE
    ref = _data(explorer.metrics_plot._model, "mae_reference")
    assert list(ref["mae"]) == before


def test_rule_buttons_set_the_sliders_and_single_member_is_that_member(trained, explorer):
    run = trained[0]
    explorer.rule.value = "single:xgb"
    assert {m: s.value for m, s in explorer.sliders.items()} == {"rf": 0.0, "xgb": 1.0, "dnn": 0.0}
    assert explorer.rule.value == "single:xgb"  # the sliders moved by the rule did not switch it to custom
    assert explorer.scores["test"]["mae"] == pytest.approx(run.metrics["models"]["xgb"]["mae"], abs=1e-12)
    explorer.rule.value = "equal"
    assert explorer.weights == {m: pytest.approx(1 / 3) for m in ("rf", "xgb", "dnn")}
    explorer.rule.value = "inverse_variance"
    assert explorer.scores["test"]["mae"] == pytest.approx(run.metrics["models"]["ensemble"]["mae"], abs=1e-12)


def test_all_sliders_at_zero_keeps_the_last_weights(explorer):
    explorer.rule.value = "inverse_variance"
    kept = dict(explorer.weights)
    for s in explorer.sliders.values():
        s.value = 0.0
    assert "every weight is 0" in explorer.message.value
    # the last valid weights (the neural net alone, once the other two were at 0) stay in use
    assert explorer.weights == {"rf": 0.0, "xgb": 0.0, "dnn": 1.0} != kept
    explorer.rule.value = "inverse_variance"
    assert explorer.message.value == ""


def test_fusion_importance_of_an_unused_feature_is_zero(trained):
    run = trained[0]
    pred = run.predictions
    weights = run.ensemble.weights_
    members = {m: pred[f"feh_{m}"].to_numpy() for m in weights}
    # a "permutation" that leaves every member's values unchanged adds nothing to the MAE
    gain = fusion_importance({"nothing": members}, members, weights, pred["true_feh"])
    assert gain["nothing"] == 0.0


def test_explorer_needs_out_of_fold_predictions(trained, tmp_path):
    run = trained[0]
    loaded = FeHEnsemble.load(run.ensemble.save(tmp_path / "model"))
    with pytest.raises(PlotInputError, match="oof_predictions_"):
        FusionExplorer(type(run)(run.sim, run.features, loaded, run.predictions, run.metrics))
