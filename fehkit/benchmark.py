"""The benchmark run of ``fehkit demo``: a synthetic benchmark from spectra to [Fe/H], stage after stage.

normalize (continuum) -> measure_ew (Voigt EWs) -> features (EWs + Teff, log g, vmic + the classical joint
likelihood) -> FeHEnsemble (random forest, XGBoost, MLP) -> evaluate against the truth, beside the classical
methods and The Cannon -> metrics.json, predictions.csv, report.html and the saved model.

On the packaged default this is a **synthetic** benchmark (:func:`fehkit.synth.make_benchmark`): every number it
produces is about simulated spectra, and every file it writes says so. Training and prediction on a user's own
files live in :mod:`fehkit.training`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit import __version__
from fehkit.continuum import normalize
from fehkit.display import html_summary, text_summary
from fehkit.errors import FehkitWarning
from fehkit.features import Features
from fehkit.files import atomic_folder, jsonable, write_table
from fehkit.flags import join_columns
from fehkit.models.ensemble import FeHEnsemble
from fehkit.spectra import SpectrumBatch, is_synthetic
from fehkit.synth import Simulation, make_benchmark
from fehkit.training import predict_features, reference_params, spectra_features, training_hash

#: The demo's split of the 1,500-star benchmark: 1,050 train + 150 validation (1,200 train+validation) and 300
#: test stars, as the method used; stratified in 0.5 dex [Fe/H] bins.
DEMO_SPLIT = (0.70, 0.10, 0.20)


#: Columns of ``predictions.csv`` taken from the truth of a synthetic benchmark.
TRUTH_OUT = {"feh": "true_feh", "teff": "true_teff", "logg": "true_logg", "vmic": "true_vmic"}


@dataclass
class BenchmarkRun:
    """Everything one run of the main job made.

    Attributes
    ----------
    sim : Simulation
        The (synthetic) spectra and truth.
    features : Features
        Features of every star (all splits).
    ensemble : FeHEnsemble
        Trained on the train split (validation split for the MLP's early stopping).
    predictions : pandas.DataFrame
        One row per test star: the predict columns, the baselines and the truth.
    metrics : dict
        :func:`fehkit.evaluate.evaluate` of the test set (the ``metrics.json`` content).
    timings : dict
        Seconds spent per stage.
    normalized : SpectrumBatch
        The continuum-normalized spectra of every star.
    """

    sim: Simulation
    features: Features
    ensemble: FeHEnsemble
    predictions: pd.DataFrame
    metrics: dict
    timings: dict = field(default_factory=dict)
    normalized: SpectrumBatch | None = None

    @property
    def ew(self) -> Any:
        """The EW table of every star (:class:`fehkit.ew.EWTable`), in the order of ``sim.truth``."""
        return self.features.ew

    def _facts(self) -> list[tuple[str, object]]:
        m = self.metrics
        facts: list[tuple[str, object]] = [("stars", len(self.sim)), ("test stars", m.get("n_test", "?")),
                                           ("upper limits", m.get("n_upper_limits", "?"))]
        ens = (m.get("models") or {}).get("ensemble") or {}
        if ens.get("mae") is not None:
            facts.append(("ensemble MAE (headline)", f"{ens['mae']:.4f} dex"))
        facts.append(("weights", ", ".join(f"{k} {v:.2f}" for k, v in (m.get("weights") or {}).items())))
        return facts

    def __repr__(self) -> str:
        return text_summary("BenchmarkRun", [*self._facts(), ("synthetic", bool(self.metrics.get("synthetic")))])

    def _repr_html_(self) -> str:
        note = "SYNTHETIC benchmark: numbers about simulated spectra" if self.metrics.get("synthetic") else ""
        return html_summary("BenchmarkRun", self._facts(), note=note)


def run_benchmark(
    n_stars: int = 1500,
    seed: int = 11,
    *,
    split: Sequence[float] = DEMO_SPLIT,
    ref_errors: Mapping[str, float] | None = None,
    ensemble: Mapping[str, Any] | None = None,
    label: str = "feh_ref",
    cannon: bool = True,
    ablation: bool = True,
    robustness: bool = True,
    progress: bool = False,
    epoch_callback: Callable[[Any], None] | None = None,
) -> BenchmarkRun:
    """Make the synthetic benchmark, measure it, train the ensemble, run the baselines and evaluate.

    Parameters
    ----------
    n_stars, seed : int
        Benchmark size and seed.
    split : three floats
        Train / validation / test fractions (default :data:`DEMO_SPLIT`).
    ref_errors : mapping, optional
        Errors of the reference Teff, log g, vmic (and [Fe/H]) labels, e.g. ``{"teff": 30, "logg": 0.1,
        "vmic": 0.1}`` (default 100 K, 0.2, 0.2, 0.05).
    ensemble : mapping, optional
        Keyword arguments of :class:`FeHEnsemble` (member overrides, folds, target).
    label : str
        Truth column used as the training label: ``feh_ref`` (the noisy reference [Fe/H], what a user has) or
        ``feh``.
    cannon, ablation : bool
        Run The Cannon peer (needs ``fehkit[peers]``) and the ablation without log g and vmic.
    robustness : bool
        Score the trained model on test spectra made with physics the analysis does not know
        (:func:`fehkit.robustness.run_robustness`: as many stars as the test split, the same stars per scenario).
    progress : bool
        Show the ensemble's progress bar.
    epoch_callback : callable, optional
        Passed to :meth:`FeHEnsemble.fit` of the main ensemble: called after every epoch of every MLP fit with a
        :class:`~fehkit.models.mlp.EpochRecord` (e.g. :meth:`fehkit.widgets.TrainingDashboard.on_epoch`, which
        draws the loss curves live). It changes nothing in the training or the results.
    """
    from fehkit.evaluate import evaluate

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sim = make_benchmark(n_stars, seed, split=split, ref_errors=ref_errors)
    timings["simulate"] = time.perf_counter() - t0

    # a few stars through the whole path first: the first call after an install compiles the kernels (numba caches
    # them on disk), which would otherwise count as the stages' time; one star leaves some branches of the EW fits
    # and the classical method uncompiled (~9 s of 60), 16 stars none
    t0 = time.perf_counter()
    params = reference_params(sim.truth)
    first = np.arange(min(16, sim.batch.n_spectra))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)  # the same stars' warnings come again below
        spectra_features(sim.batch.select(first), params.iloc[first])
    timings["warm_up"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    norm = normalize(sim.batch).batch
    timings["normalize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = spectra_features(sim.batch, params, normalized=norm)
    timings["ew_and_features"] = time.perf_counter() - t0

    truth = sim.truth.reset_index(drop=True)
    split_col = truth["split"].to_numpy()
    tr, va, te = (split_col == s for s in ("train", "val", "test"))
    y = truth[label].to_numpy(float)
    label_error = float(truth["feh_ref_err"].iloc[0]) if label == "feh_ref" and "feh_ref_err" in truth else 0.0
    kwargs = {"label_error": label_error, "seed": seed, "progress": progress, **(ensemble or {})}

    t0 = time.perf_counter()
    ens = FeHEnsemble(**kwargs).fit(feats.select(tr), y[tr], X_val=feats.select(va), y_val=y[va],
                                    epoch_callback=epoch_callback)
    timings["train"] = time.perf_counter() - t0
    synthetic = is_synthetic(sim.batch)
    pred = _prediction_table(predict_features(ens, feats.select(te)), feats.select(te),
                             truth[te].reset_index(drop=True), synthetic)

    extra: dict[str, Any] = {}
    if cannon:
        t0 = time.perf_counter()
        pred["feh_cannon"] = _cannon(norm, truth, tr, te)
        timings["cannon"] = time.perf_counter() - t0
    if ablation:
        t0 = time.perf_counter()
        extra["ablation"] = _ablation(sim, norm, truth, tr, va, te, y, kwargs)
        timings["ablation"] = time.perf_counter() - t0
    if robustness:
        from fehkit.robustness import run_robustness

        t0 = time.perf_counter()
        extra["robustness"] = run_robustness(ens, n=max(int(te.sum()), 10), seed=seed + 1, ref_errors=ref_errors)
        timings["robustness"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # detection involves no training: the lowest [Fe/H] reached is measured on every star of the benchmark
    detections = pd.DataFrame({"true_feh": truth["feh"], "snr": truth["snr"],
                               "cog_signal_sigma": feats.stars["cog_signal_sigma"],
                               "cog_median_n_lines": feats.stars["cog_median_n_lines"]})
    metrics = evaluate(pred, ensemble=ens, synthetic=synthetic,
                       ablation=extra.get("ablation"), param_errors=_param_errors(truth), detections=detections,
                       oof=_oof_table(ens, feats.select(tr), truth[tr].reset_index(drop=True)))
    metrics["n_train"], metrics["n_val"] = int(tr.sum()), int(va.sum())
    metrics["label"] = label
    if "robustness" in extra:
        metrics["robustness"] = extra["robustness"]
    metrics["seed"] = int(seed)
    metrics["fehkit_version"] = __version__
    metrics["command"] = (f"fehkit.benchmark.run_benchmark(n_stars={n_stars}, seed={seed}, split={tuple(split)}, "
                          f"ref_errors={dict(ref_errors) if ref_errors else None}, label={label!r}, cannon={cannon}, "
                          f"ablation={ablation}, robustness={robustness})")
    timings["evaluate"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return BenchmarkRun(sim, feats, ens, pred, metrics, timings, norm)


def write_outputs(run: BenchmarkRun, out: str | os.PathLike[str], *, overwrite: bool = True,
                  command: str | None = None) -> Path:
    """Write ``metrics.json``, ``predictions.csv``, ``report.html`` and ``model/``: what ``fehkit demo`` promises.

    Everything is written into one temporary folder renamed into place when complete
    (:func:`fehkit.files.atomic_folder`, kind ``"demo"``), so an interrupt leaves the old results or the new ones,
    never new metrics beside an old report or model. An existing ``out`` is replaced only with ``overwrite`` and
    only when fehkit wrote it (it holds the marker file) or it is empty. ``command`` (the command line as run) is
    recorded in ``metrics.json`` beside ``seed`` and ``fehkit_version``; by default the library call is.
    """
    from fehkit.report.results import feh_report

    metrics = dict(run.metrics)
    metrics.setdefault("fehkit_version", __version__)
    if command is not None:
        metrics["command"] = command
    about = {k: metrics[k] for k in ("command", "seed", "synthetic") if k in metrics}
    with atomic_folder(out, kind="demo", overwrite=overwrite, about=about) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
        comment = ("SYNTHETIC benchmark (simulated spectra, not observations): fehkit demo test-set predictions"
                   if metrics.get("synthetic") else None)
        write_table(run.predictions, tmp / "predictions.csv", comment=comment)
        feh_report(metrics, run.predictions, tmp / "report.html")
        train = run.features.select(run.sim.truth["split"].to_numpy() == "train")
        run.ensemble.save(tmp / "model", card={
            "synthetic": bool(metrics.get("synthetic", True)),
            "training_data": "fehkit synthetic benchmark (make_benchmark)" if metrics.get("synthetic") else "real",
            "training_set_sha256": training_hash(train.X, run.sim.truth.loc[run.sim.truth["split"] == "train",
                                                                            metrics.get("label", "feh_ref")]),
            "metrics": {k: metrics[k] for k in ("headline_subset", "n_test", "coverage_68", "weights")
                        if k in metrics} | {"models": metrics.get("models", {})},
        })
    return Path(out)


def _prediction_table(pred: pd.DataFrame, feats: Features, truth: pd.DataFrame, synthetic: bool) -> pd.DataFrame:
    """Return the predict columns (:func:`fehkit.training.predict_features`), classical details and the truth."""
    s = feats.stars
    out = pred.reset_index(drop=True).copy()
    for c in ("feh_cog_err", "feh_cog_err_param", "feh_cog_upper", "cog_signal_sigma", "feh_cog_median",
              "cog_median_n_lines"):
        out[c] = s[c].to_numpy()
    for src, dst in TRUTH_OUT.items():
        out[dst] = truth[src].to_numpy()
    out["snr"] = truth["snr"].to_numpy()
    for c in ("teff_ref", "logg_ref", "vmic_ref", "feh_ref", "feh_ext", "population"):
        if c in truth:
            out[c] = truth[c].to_numpy()
    out["synthetic"] = synthetic
    return out


def oof_table(run: BenchmarkRun) -> pd.DataFrame:
    """Return the ensemble's out-of-fold predictions of a run's training stars, beside their truth.

    One row per training star the members were cross-validated on: ``feh`` (fused), ``feh_err``, each member's
    ``feh_<member>``, the classical ``feh_cog``, ``true_feh``, ``snr`` and ``flag`` (``upper_limit`` where the joint
    Fe signal is below the detection threshold), ``star_id``. Held-out predictions, like the test set's.
    """
    train = run.sim.truth["split"].to_numpy() == "train"
    truth = run.sim.truth[train].reset_index(drop=True)
    table = _oof_table(run.ensemble, run.features.select(train), truth)
    oof = run.ensemble.oof_predictions_
    rows = oof["row"].to_numpy()
    for m in run.ensemble.weights_:
        table[f"feh_{m}"] = oof[f"feh_{m}"].to_numpy()
    if "star_id" in truth:
        table["star_id"] = truth["star_id"].to_numpy()[rows]
    return table


def _oof_table(ens: FeHEnsemble, feats: Features, truth: pd.DataFrame) -> pd.DataFrame:
    """Tabulate the ensemble's out-of-fold predictions of the training stars, with their truth and classical values."""
    oof = ens.oof_predictions_
    rows = oof["row"].to_numpy()
    s = feats.stars.iloc[rows].reset_index(drop=True)
    return pd.DataFrame({"feh": oof["feh"].to_numpy(), "feh_err": oof["feh_err"].to_numpy(),
                         "feh_cog": s["feh_cog"].to_numpy(), "true_feh": truth["feh"].to_numpy()[rows],
                         "snr": truth["snr"].to_numpy()[rows],
                         "flag": join_columns({"upper_limit": s["cog_signal_sigma"] < ens.detection_sigma}, len(s))})


def _cannon(norm: SpectrumBatch, truth: pd.DataFrame, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    from fehkit.baselines import fit_cannon, predict_cannon

    labels = pd.DataFrame({"teff": truth["teff_ref"], "logg": truth["logg_ref"], "feh": truth["feh_ref"]})
    peer = fit_cannon(norm.select(np.flatnonzero(tr)), labels[tr].reset_index(drop=True))
    return predict_cannon(peer, norm.select(np.flatnonzero(te)))["feh"].to_numpy(float)


def _ablation(sim: Simulation, norm: SpectrumBatch, truth: pd.DataFrame, tr: np.ndarray, va: np.ndarray,
              te: np.ndarray, y: np.ndarray, kwargs: dict) -> dict:
    """Retrain the ensemble without log g and vmic.

    They go neither into the features nor into the curve of growth (where the training set's medians stand in).
    """
    params = reference_params(truth)
    for k in ("logg", "vmic"):
        params[k] = float(np.median(params.loc[tr, k]))
        params[f"{k}_err"] = float(np.std(truth.loc[tr, f"{k}_ref"]))
    feats = spectra_features(sim.batch, params, normalized=norm)
    feats = feats.drop(["logg", "vmic", "dfeh_logg", "dfeh_vmic"])
    ens = FeHEnsemble(**kwargs).fit(feats.select(tr), y[tr], X_val=feats.select(va), y_val=y[va])
    pred = ens.predict(feats.select(te))
    return {"without": ["logg", "vmic"], "predictions": pred["feh"].to_numpy(),
            "weights": ens.weights_, "feature_count": len(feats.names)}


def _param_errors(truth: pd.DataFrame) -> dict:
    return {k: float(truth[f"{k}_ref_err"].iloc[0]) for k in ("teff", "logg", "vmic", "feh")
            if f"{k}_ref_err" in truth}
