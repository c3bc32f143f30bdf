"""Watch the ensemble train: the MLP's loss curves drawn live, then each member's out-of-fold residuals and weights."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
from jupyter_bokeh import BokehModel

from fehkit.errors import PlotInputError
from fehkit.models.base import MEMBERS
from fehkit.models.mlp import EpochRecord
from fehkit.plots.style import model_label, titled
from fehkit.plots.training import (
    loss_figure,
    oof_residuals_figure,
    start_loss_curve,
    stream_loss,
    update_oof_residuals_figure,
    update_weights_figure,
    weights_figure,
)
from fehkit.widgets._bokeh import ensure_bokehjs


class TrainingDashboard(widgets.VBox):
    """A notebook widget that draws the MLP's training and validation loss while the ensemble trains.

    Display it, then train with :meth:`on_epoch` as the epoch callback (:meth:`fit` does both steps for a
    :class:`~fehkit.models.FeHEnsemble`; ``fehkit.benchmark.run_benchmark(..., epoch_callback=dashboard.on_epoch)``
    for the benchmark). After every epoch of every MLP fit (one per cross-validation fold, then the final fit)
    the new losses are streamed into the loss figure: only that row goes to the browser. The diamond and the dashed
    line mark the early-stopping point, the epoch of lowest validation loss whose weights the fit keeps; the
    validation curves of earlier fits stay in grey. When training is over, :meth:`show_ensemble` (or
    :meth:`show_run`) fills the lower figures: each member's out-of-fold residuals against the training labels,
    and the weights the ensemble gave them (inverse out-of-fold variance). The widget computes nothing itself.

    Parameters
    ----------
    synthetic : bool
        Whether the training stars are simulated (the titles say SYNTHETIC).
    members : sequence of str
        The ensemble's members (default all three: ``"rf"``, ``"xgb"``, ``"dnn"``).

    Attributes
    ----------
    records : list of EpochRecord
        Every epoch received, in order.
    loss_plot, residual_plot, weight_plot : jupyter_bokeh.BokehModel
        The three figures (``._model`` is the Bokeh figure).

    Examples
    --------
    >>> from fehkit.models import FeHEnsemble
    >>> from fehkit.synth import make_benchmark
    >>> from fehkit.training import reference_params, spectra_features
    >>> sim = make_benchmark(120, seed=3)  # doctest: +SKIP
    >>> feats = spectra_features(sim.batch, reference_params(sim.truth))  # doctest: +SKIP
    >>> dashboard = TrainingDashboard()
    >>> ens = FeHEnsemble(dnn={"max_epochs": 30}, n_folds=3)
    >>> ens = dashboard.fit(ens, feats, sim.truth["feh_ref"])  # doctest: +SKIP
    >>> len(dashboard.records) > 0  # doctest: +SKIP
    True
    """

    def __init__(self, *, synthetic: bool = True, members: Sequence[str] = MEMBERS) -> None:
        ensure_bokehjs()
        self.synthetic = bool(synthetic)
        self.records: list[EpochRecord] = []
        self._fit_label: str | None = None
        self._best_loss = math.nan
        self.status = widgets.HTML("<i>waiting for training to start: pass <code>dashboard.on_epoch</code> as the "
                                   "epoch callback, or call <code>dashboard.fit(...)</code></i>")
        self.loss_plot = BokehModel(loss_figure(synthetic=self.synthetic))
        self.members = tuple(members)
        self.residual_plot = BokehModel(oof_residuals_figure([], {m: [] for m in self.members}, [],
                                                             synthetic=self.synthetic))
        self.weight_plot = BokehModel(weights_figure(dict.fromkeys(self.members, math.nan), synthetic=self.synthetic))
        self.summary = widgets.HTML()
        super().__init__([self.status, self.loss_plot, widgets.HBox([self.residual_plot, self.weight_plot]),
                          self.summary])

    # ---- during training ----------------------------------------------------------------------------------------
    def on_epoch(self, record: EpochRecord) -> None:
        """Receive one epoch (the epoch callback): add its losses to the loss figure (a new fit starts a new curve)."""
        if not isinstance(record, EpochRecord):
            raise PlotInputError(f"record: expected a fehkit.models.mlp.EpochRecord, found {type(record).__name__}")
        fig = self.loss_plot._model
        if record.epoch == 1 or record.fit != self._fit_label:
            start_loss_curve(fig, titled(f"MLP loss while it trains: {record.fit or 'fit'}", self.synthetic))
            self._fit_label = record.fit
            self._best_loss = math.inf
        if record.best_epoch == record.epoch:
            self._best_loss = record.val_loss
        stream_loss(fig, record.epoch, record.train_loss, record.val_loss, best_epoch=record.best_epoch,
                    best_loss=self._best_loss)
        self.records.append(record)
        where = html.escape(record.fit or "fit")
        if record.last:
            fig.title.text = titled(f"MLP loss, {record.fit or 'fit'}: stopped after epoch {record.epoch}, kept the "
                                    f"weights of epoch {record.best_epoch}", self.synthetic)
            self.status.value = (f"{where}: stopped after epoch {record.epoch}; kept epoch {record.best_epoch} "
                                 f"(validation loss {self._best_loss:.4f})")
        else:
            self.status.value = (f"training the MLP, {where}: epoch {record.epoch}, training loss "
                                 f"{record.train_loss:.4f}, validation loss {record.val_loss:.4f} (best: epoch "
                                 f"{record.best_epoch})")

    def fit(self, ensemble: Any, X: Any, y: Any, **fit_kwargs: Any) -> Any:
        """Fit ``ensemble`` (a :class:`~fehkit.models.FeHEnsemble`) with the live loss curves, then show the result.

        ``fit_kwargs`` go to ``ensemble.fit`` (``X_val``, ``y_val``, ``feature_names``). Returns the fitted ensemble.
        """
        ensemble.fit(X, y, epoch_callback=self.on_epoch, **fit_kwargs)
        self.show_ensemble(ensemble, y)
        return ensemble

    # ---- after training ----------------------------------------------------------------------------------------
    def show_ensemble(self, ensemble: Any, y: Any) -> None:
        """Draw a fitted ensemble's out-of-fold residuals and weights; ``y`` are the labels it was fitted on."""
        oof = getattr(ensemble, "oof_predictions_", None)
        if oof is None or not hasattr(ensemble, "weights_"):
            raise PlotInputError("ensemble: no oof_predictions_ or weights_; expected a FeHEnsemble fitted in this "
                                 "session (a loaded model keeps no out-of-fold predictions)")
        labels = np.asarray(y, float).ravel()
        rows = oof["row"].to_numpy(int)
        if rows.size and rows.max() >= labels.size:
            raise PlotInputError(f"y: {labels.size} labels, but the out-of-fold rows reach {int(rows.max())}; "
                                 "expected the labels the ensemble was fitted on")
        members = {m: oof[f"feh_{m}"].to_numpy(float) for m in ensemble.weights_}
        update_oof_residuals_figure(self.residual_plot._model, labels[rows], members, oof["feh"].to_numpy(float))
        update_weights_figure(self.weight_plot._model, ensemble.weights_, ensemble.oof_mse_)
        self.summary.value = _summary_html(ensemble.weights_, ensemble.oof_mse_, members, oof["feh"].to_numpy(float),
                                           labels[rows], self.synthetic)

    def show_run(self, run: Any) -> None:
        """Draw the out-of-fold residuals and weights of a benchmark run's ensemble (:class:`BenchmarkRun`)."""
        truth = run.sim.truth.reset_index(drop=True)
        label = (getattr(run, "metrics", None) or {}).get("label", "feh_ref")
        if label not in truth or "split" not in truth:
            raise PlotInputError(f"run.sim.truth: expected the columns {label!r} and 'split' of a benchmark run, found "
                                 f"{list(truth.columns)}")
        self.show_ensemble(run.ensemble, truth.loc[truth["split"] == "train", label].to_numpy(float))


def _summary_html(weights: Mapping[str, float], oof_mse: Mapping[str, float], members: Mapping[str, np.ndarray],
                  fused: np.ndarray, labels: np.ndarray, synthetic: bool) -> str:
    """Tabulate under the figures each member's out-of-fold RMS against the labels, its MSE and weight."""
    def rms(p: np.ndarray) -> str:
        d = p - labels
        d = d[np.isfinite(d)]
        return f"{math.sqrt(float(np.mean(d ** 2))):.4f}" if d.size else "n/a"

    rows = "".join(f"<tr><td>{html.escape(model_label(m))}</td><td>{rms(members[m])}</td>"
                   f"<td>{oof_mse[m]:.5f}</td><td><b>{weights[m]:.3f}</b></td></tr>" for m in weights)
    rows += f"<tr><td>ensemble</td><td>{rms(fused)}</td><td></td><td>1</td></tr>"
    head = ("SYNTHETIC training stars: " if synthetic else "") + (
        f"{labels.size} stars predicted out of fold. A member's weight is 1/MSE over the sum of 1/MSE, the MSE "
        "taken on stars with a detected Fe signal, less the labels' own variance.")
    return (f"<div style='font-size:90%'>{html.escape(head)}<table><tr><th>model</th><th>OOF RMS vs label (dex)</th>"
            f"<th>OOF MSE (weights)</th><th>weight</th></tr>{rows}</table></div>")
