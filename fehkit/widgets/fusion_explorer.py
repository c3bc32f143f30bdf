"""Move the ensemble's member weights and see what inverse-variance fusion buys: MAE, bias, coverage, importances."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
from jupyter_bokeh import BokehModel

from fehkit.errors import PlotInputError
from fehkit.evaluate import headline_mask
from fehkit.models.base import EnsembleError
from fehkit.models.ensemble import fusion_importance, fusion_scores, fusion_weights, normalize_weights
from fehkit.plots.style import model_label
from fehkit.plots.training import (
    fusion_metrics_figure,
    importance_figure,
    update_fusion_metrics_figure,
    update_importance_figure,
)
from fehkit.spectra import is_synthetic
from fehkit.widgets._bokeh import ensure_bokehjs

#: The two sets of stars scored: the training stars predicted out of fold, and the test stars.
SETS = ("out-of-fold", "test")

#: The rule buttons' value for weights set by hand on the sliders.
CUSTOM = "custom"


class FusionExplorer(widgets.VBox):
    """A notebook widget that fuses the ensemble's members with weights you choose, and scores the result live.

    The buttons pick a rule (:func:`fehkit.models.ensemble.fusion_weights`): inverse out-of-fold variance (what
    :class:`~fehkit.models.FeHEnsemble` uses), equal weights, or one member alone; the sliders set any other
    weights (they are rescaled to sum to 1). Each change fuses the members' [Fe/H]
    (:func:`~fehkit.models.ensemble.fuse`, the ensemble's own code) on two sets of stars, the training stars
    predicted out of fold and the test stars, and shows their MAE, bias and coverage_68 (the fraction within
    +-feh_err; the errors were calibrated for the inverse-variance weights) on the headline subset (a detected
    joint Fe signal, S/N >= 50), the MAE as bars beside the inverse-variance value. Beside them, the permutation
    importance of the features for the fused model at these weights, on the test stars
    (:func:`~fehkit.models.ensemble.fusion_importance`): how much the MAE grows when one feature is shuffled.
    The widget computes nothing itself.

    Parameters
    ----------
    run : fehkit.benchmark.BenchmarkRun
        A benchmark run: its ensemble (fitted in this session: it keeps the out-of-fold predictions), test-set
        ``predictions`` with the truth, and ``features``.
    top : int
        How many features the importance figure shows.
    seed : int
        Seeds the permutations of the importances.

    Attributes
    ----------
    weights : dict
        The weights in use (summing to 1).
    scores : dict
        ``{"out-of-fold": {...}, "test": {...}}``: :func:`~fehkit.models.ensemble.fusion_scores` at ``weights``.
    importance : pandas.Series
        The permutation importance of every feature at ``weights``, largest first.

    Examples
    --------
    >>> from fehkit.benchmark import run_benchmark
    >>> run = run_benchmark(400, seed=11, cannon=False, ablation=False, robustness=False)  # doctest: +SKIP
    >>> explorer = FusionExplorer(run)  # doctest: +SKIP
    >>> explorer.rule.value = "single:dnn"  # the neural net alone  # doctest: +SKIP
    >>> explorer.sliders["rf"].value = 0.5  # some random forest back in: the rule becomes "custom"  # doctest: +SKIP
    """

    def __init__(self, run: Any, *, top: int = 12, seed: int = 0) -> None:
        from fehkit.benchmark import oof_table

        ensemble = run.ensemble
        if not hasattr(ensemble, "oof_predictions_"):
            raise PlotInputError("run.ensemble: no oof_predictions_; expected an ensemble fitted in this session (a "
                                 "loaded model keeps no out-of-fold predictions)")
        pred = run.predictions.reset_index(drop=True)
        self.members = list(ensemble.weights_)
        need = [f"feh_{m}" for m in self.members] + ["feh_err", "true_feh", "flag", "snr"]
        missing = [c for c in need if c not in pred]
        if missing:
            raise PlotInputError(f"run.predictions: no column(s) {missing}; expected the test predictions of "
                                 "fehkit.benchmark.run_benchmark with the truth")
        ensure_bokehjs()
        self.run = run
        self.synthetic = is_synthetic(pred)
        self.oof_mse = dict(ensemble.oof_mse_)
        self.top = int(top)
        oof = oof_table(run)
        # each set: the members' [Fe/H], the truth, feh_err and the headline subset
        self._sets = {name: ({m: t[f"feh_{m}"].to_numpy(float) for m in self.members}, t["true_feh"].to_numpy(float),
                             t["feh_err"].to_numpy(float), headline_mask(t["flag"], t["snr"]))
                      for name, t in zip(SETS, (oof, pred), strict=True)}
        test = run.sim.truth["split"].to_numpy() == "test"
        self._permuted = ensemble.permutation_predictions(run.features.select(test), seed=seed)

        options = [("inverse variance", "inverse_variance"), ("equal", "equal"),
                   *[(f"{model_label(m)} only", f"single:{m}") for m in self.members], ("custom (sliders)", CUSTOM)]
        self.rule = widgets.ToggleButtons(options=options, value="inverse_variance", description="weights",
                                          style={"button_width": "auto"})
        self.weights = fusion_weights(self.oof_mse)
        slider = dict(min=0.0, max=1.0, step=0.01, readout_format=".2f", continuous_update=False,
                      style={"description_width": "100px"}, layout=widgets.Layout(width="280px"))
        self.sliders = {m: widgets.FloatSlider(value=round(self.weights[m], 2), description=model_label(m), **slider)
                        for m in self.members}
        self.message = widgets.HTML()
        self.table = widgets.HTML()
        self._syncing = False
        self.scores = self._score(self.weights)
        self.reference = {name: s["mae"] for name, s in self.scores.items()}
        self.importance = self._importance(self.weights)
        self.metrics_plot = BokehModel(fusion_metrics_figure(self.reference, self.reference,
                                                             synthetic=self.synthetic))
        shown = self.importance.iloc[:self.top]
        self.importance_plot = BokehModel(importance_figure(shown.index, shown.to_numpy(), synthetic=self.synthetic))
        self.table.value = self._table_html()
        self.rule.observe(self._new_rule, names="value")
        for s in self.sliders.values():
            s.observe(self._new_slider, names="value")
        super().__init__([self.rule, widgets.HBox(list(self.sliders.values())), self.message, self.table,
                          widgets.HBox([self.metrics_plot, self.importance_plot])])

    # ---- the controls ------------------------------------------------------------------------------------------
    def _new_rule(self, change: dict) -> None:
        rule = str(change["new"])
        if rule == CUSTOM:
            return
        name, _, member = rule.partition(":")
        weights = fusion_weights(self.oof_mse, name, member or None)
        self._syncing = True  # the sliders follow the rule; their own observers must not switch it to custom
        try:
            for m, s in self.sliders.items():
                s.value = round(weights[m], 2)
        finally:
            self._syncing = False
        self._show(weights)

    def _new_slider(self, change: dict) -> None:
        if self._syncing:
            return
        try:
            weights = normalize_weights({m: s.value for m, s in self.sliders.items()})
        except EnsembleError:
            self.message.value = "<b>every weight is 0</b>: set at least one slider above 0"
            return
        self._syncing = True
        try:
            self.rule.value = CUSTOM
        finally:
            self._syncing = False
        self._show(weights)

    # ---- the numbers -------------------------------------------------------------------------------------------
    def _score(self, weights: dict[str, float]) -> dict[str, dict]:
        return {name: fusion_scores(preds, weights, truth, err, subset=head)
                for name, (preds, truth, err, head) in self._sets.items()}

    def _importance(self, weights: dict[str, float]) -> Any:
        preds, truth, _, head = self._sets["test"]
        return fusion_importance(self._permuted, preds, weights, truth, subset=head)

    def _show(self, weights: dict[str, float]) -> None:
        self.weights = weights
        self.scores = self._score(weights)
        self.importance = self._importance(weights)
        update_fusion_metrics_figure(self.metrics_plot._model, {n: s["mae"] for n, s in self.scores.items()})
        shown = self.importance.iloc[:self.top]
        update_importance_figure(self.importance_plot._model, shown.index, shown.to_numpy())
        self.message.value = ""
        self.table.value = self._table_html()

    def _table_html(self) -> str:
        def num(v: Any, fmt: str) -> str:
            return "n/a" if v is None else fmt.format(v)

        weights = ", ".join(f"{html.escape(model_label(m))} {w:.3f}" for m, w in self.weights.items())
        rows = "".join(
            f"<tr><td>{name}</td><td>{s['n']}</td><td><b>{num(s['mae'], '{:.4f}')}</b></td>"
            f"<td>{num(s['bias'], '{:+.4f}')}</td><td>{num(s['coverage_68'], '{:.3f}')}</td>"
            f"<td>{num(self.reference[name], '{:.4f}')}</td></tr>" for name, s in self.scores.items())
        head = "SYNTHETIC stars, scored against the simulated truth" if self.synthetic else "scored against the labels"
        return (f"<div style='font-size:90%'><b>weights</b> {weights}<br>{head}; headline subset (detected joint Fe "
                "signal, S/N ≥ 50)<table><tr><th>stars</th><th>n</th><th>MAE (dex)</th><th>bias (dex)</th>"
                f"<th>coverage_68</th><th>MAE, inverse variance</th></tr>{rows}</table></div>")
