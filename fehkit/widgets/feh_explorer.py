"""Follow one test star from its EWs to its [Fe/H]: the joint likelihood, the lines, and what each model says."""

from __future__ import annotations

import html
import math
import warnings
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
from jupyter_bokeh import BokehModel

from fehkit.errors import FehkitWarning, PlotInputError
from fehkit.ew import EWTable
from fehkit.features import STATE_BLEND, STATE_DETECTED, STATE_UPPER, joint_usable
from fehkit.flags import has_flag
from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.joint import likelihood_profile
from fehkit.plots.likelihood import (
    likelihood_figure,
    line_ew_figure,
    update_likelihood_figure,
    update_line_ew_figure,
)
from fehkit.plots.style import model_label
from fehkit.spectra import is_synthetic
from fehkit.widgets._bokeh import ensure_bokehjs

#: Predictions columns the explorer cannot do without.
REQUIRED = ("star_id", "feh", "feh_err", "flag", "feh_cog")

#: Marks of the likelihood figure: key -> predictions column (the truth first, then the classical method).
MARKS = {"truth": "true_feh", "cog": "feh_cog", "cog_per_line_median": "feh_cog_median", "ensemble": "feh",
         "rf": "feh_rf", "xgb": "feh_xgb", "dnn": "feh_dnn"}


class FeHExplorer(widgets.VBox):
    """A notebook widget that shows, for one test star of a benchmark run, how its [Fe/H] came about.

    A drop-down picks the star (sorted by true [Fe/H] where the truth is known, labelled with its id and S/N).
    The left figure is its joint likelihood over [Fe/H] (:func:`fehkit.physics.joint.likelihood_profile`, drawn by
    :func:`fehkit.plots.likelihood.likelihood_figure`) with the truth, the classical value, the ensemble and its members
    marked, and the excluded range of an upper limit shaded; beside it a table of the numbers. Below, each line's
    measured EW against the curve of growth at the best-fit [Fe/H] (:func:`fehkit.plots.likelihood.line_ew_figure`).
    Changing the star redraws both figures in place. The widget computes nothing itself.

    Parameters
    ----------
    run : fehkit.benchmark.BenchmarkRun
        A run of the main job: its ``predictions`` (the test stars), ``features`` (every star: the parameters and
        the EWs the classical method used) and ``metrics`` (the ensemble weights). The EWs come from ``run.ew``
        (an :class:`~fehkit.ew.EWTable` of every star) when the run has one, otherwise from the features.
    star : str, optional
        The star_id shown first (default: the first of the list).

    Attributes
    ----------
    profile : dict
        :func:`~fehkit.physics.joint.likelihood_profile` of the selected star (a batch of one).

    Examples
    --------
    >>> from fehkit.benchmark import run_benchmark
    >>> run = run_benchmark(120, seed=3, cannon=False, ablation=False,  # doctest: +SKIP
    ...                     ensemble=dict(rf={"n_estimators": 20}, xgb={"n_estimators": 20}, dnn={"max_epochs": 5}))
    >>> explorer = FeHExplorer(run)  # doctest: +SKIP
    >>> explorer.select.value = 3  # row 3 of run.predictions  # doctest: +SKIP
    """

    def __init__(self, run: Any, star: str | None = None) -> None:
        pred = run.predictions.reset_index(drop=True)
        missing = [c for c in REQUIRED if c not in pred]
        if missing:
            raise PlotInputError(f"run.predictions: no column(s) {missing}; found {list(pred.columns)}; expected the "
                                 "predictions table of fehkit.benchmark.run_benchmark")
        stars = run.features.stars.reset_index(drop=True)
        rows = pd.Index(stars["star_id"].astype(str)).get_indexer(pred["star_id"].astype(str))
        if (rows < 0).any():
            raise PlotInputError(f"run.features: no row for the test star(s) "
                                 f"{pred['star_id'][rows < 0].astype(str).tolist()[:5]}; expected features of every "
                                 "star of run.predictions")
        self.run = run
        self.predictions = pred
        self.synthetic = is_synthetic(pred)
        self._stars = stars
        self._rows = rows
        self._weights = dict((getattr(run, "metrics", None) or {}).get("weights") or {})
        self._wave, self._ew, self._err, self._usable, self._flag = _line_measurements(run, len(stars))
        self._cog = CurveOfGrowth.load()
        self._lines = self._cog.line_index(self._wave)

        order = (np.argsort(pred["true_feh"].to_numpy(float), kind="stable") if "true_feh" in pred
                 else np.arange(len(pred)))
        options = [(self._label(int(i)), int(i)) for i in order]
        first = int(order[0]) if star is None else self._find(star)
        self.select = widgets.Dropdown(options=options, value=first, description="star",
                                       layout=widgets.Layout(width="520px"))
        self.details = widgets.HTML(layout=widgets.Layout(width="350px"))
        self.profile = self._profile()
        ensure_bokehjs()
        self.likelihood_plot = BokehModel(likelihood_figure(*self._likelihood_args(), **self._likelihood_kwargs()))
        self.ew_plot = BokehModel(line_ew_figure(*self._line_args(), **self._line_kwargs()))
        self.details.value = self._details_html()
        self.select.observe(self._show, names="value")
        super().__init__([self.select, widgets.HBox([self.likelihood_plot, self.details]), self.ew_plot])

    @property
    def index(self) -> int:
        """Row of the selected star in ``run.predictions``."""
        return int(self.select.value)

    @property
    def star(self) -> pd.Series:
        """The selected star's row of ``run.predictions``."""
        return self.predictions.iloc[self.index]

    # ---- the selected star's data ---------------------------------------------------------------------------
    def _find(self, star: str) -> int:
        hits = np.flatnonzero(self.predictions["star_id"].astype(str).to_numpy() == str(star))
        if not hits.size:
            raise PlotInputError(f"star: {star!r} is not a test star of this run; expected one of "
                                 f"{self.predictions['star_id'].astype(str).tolist()[:5]} ...")
        return int(hits[0])

    def _label(self, i: int) -> str:
        p = self.predictions.iloc[i]
        parts = [str(p["star_id"])]
        if "snr" in p:
            parts.append(f"S/N {float(p['snr']):.0f}")
        if "true_feh" in p:
            parts.append(f"true [Fe/H] {float(p['true_feh']):+.2f}")
        if has_flag([p["flag"]], "upper_limit")[0]:
            parts.append("upper limit")
        return " · ".join(parts)

    def _profile(self) -> dict[str, np.ndarray]:
        j = self._rows[self.index]
        s = self._stars.iloc[j]
        with warnings.catch_warnings():
            # a reference log g just off the grid is clipped, as it was when the features were built (warned there)
            warnings.simplefilter("ignore", FehkitWarning)
            return likelihood_profile(self._ew[j], self._err[j], self._usable[j], float(s["teff"]), float(s["logg"]),
                                      float(s["vmic"]), float(s.get("alpha_fe", 0.4)), cog=self._cog,
                                      lines=self._lines)

    def _best(self) -> int:
        return int(np.argmin(self.profile["m2lnl"][0]))

    def _likelihood_args(self) -> tuple[Any, ...]:
        p = self.star
        marks = {key: float(p[col]) for key, col in MARKS.items() if col in p}
        upper = float(p["feh_upper"]) if has_flag([p["flag"]], "upper_limit")[0] and "feh_upper" in p else None
        return self.profile["feh_grid"], self.profile["m2lnl"][0], marks, upper, self.synthetic

    def _likelihood_kwargs(self) -> dict[str, Any]:
        return {"m2lnl_none": float(self.profile["m2lnl_none"][0]),
                "title": f"joint likelihood of {self.star['star_id']}"}

    def _line_args(self) -> tuple[Any, ...]:
        j = self._rows[self.index]
        return self._wave, self._ew[j], self._err[j], self.profile["model_ew"][0, self._best()], self._usable[j]

    def _line_kwargs(self) -> dict[str, Any]:
        j = self._rows[self.index]
        best = float(self.profile["feh_grid"][self._best()])
        return {"flag": self._flag[j], "feh_best": best, "synthetic": self.synthetic,
                "title": f"{self.star['star_id']}: measured EWs and the curve of growth at the best fit, "
                         f"[Fe/H] = {best:.2f}"}

    def _show(self, change: dict) -> None:
        self.profile = self._profile()
        # the same figures, new data: BokehModel sends only the changes to the browser
        update_likelihood_figure(self.likelihood_plot._model, *self._likelihood_args(), **self._likelihood_kwargs())
        update_line_ew_figure(self.ew_plot._model, *self._line_args(), **self._line_kwargs())
        self.details.value = self._details_html()

    # ---- the table beside the likelihood -----------------------------------------------------------------------
    def _details_html(self) -> str:
        p = self.star
        s = self._stars.iloc[self._rows[self.index]]
        upper = bool(has_flag([p["flag"]], "upper_limit")[0])
        truth = "SYNTHETIC truth" if self.synthetic else "reference"

        def num(key: str, fmt: str = "{:+.2f}", src: pd.Series = p) -> str:
            v = float(src[key]) if key in src else math.nan
            return fmt.format(v) if math.isfinite(v) else "n/a"

        def pm(value: str, error: str) -> str:
            return f"{num(value)} ± {num(error, '{:.2f}')}"

        rows: list[tuple[str, str]] = []
        if "true_feh" in p:
            rows.append((f"true [Fe/H] ({truth})", num("true_feh")))
        if "true_teff" in p:
            rows.append((f"true Teff, log g ({truth})", f"{num('true_teff', '{:.0f}')} K, "
                                                        f"{num('true_logg', '{:.2f}')}"))
        rows.append(("Teff, log g, vmic used (reference)", f"{num('teff', '{:.0f}', s)} K, {num('logg', '{:.2f}', s)}, "
                                                          f"{num('vmic', '{:.2f}', s)} km/s"))
        if upper:
            rows.append(("[Fe/H] (3σ upper limit)", f"< {num('feh_upper')}"))
            rows.append(("ensemble (not a measurement)", pm("feh", "feh_err")))
        else:
            rows.append(("ensemble", pm("feh", "feh_err")))
        for m in ("rf", "xgb", "dnn"):
            if f"feh_{m}" in p:
                w = self._weights.get(m)
                rows.append((f"  {model_label(m)}" + (f" (weight {w:.2f})" if w is not None else ""),
                             num(f"feh_{m}")))
        rows.append(("curve of growth, joint", pm("feh_cog", "feh_cog_err") if "feh_cog_err" in p
                     else num("feh_cog")))
        if "feh_cog_median" in p:
            rows.append(("curve of growth, per-line median", num("feh_cog_median")))
        if "cog_signal_sigma" in p:
            rows.append(("joint Fe signal", f"{num('cog_signal_sigma', '{:.1f}')}σ: "
                         + ("below 3σ, no detection" if upper else "detected (≥ 3σ)")))
        j = self._rows[self.index]
        rows.append(("lines in the likelihood", f"{int(self._usable[j].sum())} of {self._wave.size}"))
        rows.append(("flag", str(p["flag"])))
        reason = p.get("flag_reason")
        if isinstance(reason, str) and reason:
            rows.append(("why", reason))
        body = "".join(f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(b)}</b></td></tr>" for a, b in rows)
        head = ("SYNTHETIC star " if self.synthetic else "star ") + html.escape(str(p["star_id"]))
        if "snr" in p:
            head += f", S/N {float(p['snr']):.0f}"
        return f"<div style='font-size:90%'><b>{head}</b><table>{body}</table></div>"


def _line_measurements(run: Any, n_stars: int) -> tuple[np.ndarray, ...]:
    """Each star's EWs as the classical method used them: wave (L,), ew, err, usable, flag (n_stars, L).

    From ``run.ew`` when the run carries the EW table; otherwise from the features, which hold every line's EW,
    error and state (NaN where the line was masked or failed). Either way ``usable`` is what
    :func:`fehkit.features.build_features` gave the joint likelihood: a measured EW, not a suspected blend.
    """
    table = getattr(run, "ew", None)
    if isinstance(table, EWTable):
        if table.n_spectra != n_stars:
            raise PlotInputError(f"run.ew: expected one row per star of run.features ({n_stars}), found "
                                 f"{table.n_spectra}")
        ew = np.asarray(table.ew_mA, float)
        err = np.asarray(table.ew_err_mA, float)
        flag = np.asarray(table.flag, dtype=object)
        usable = joint_usable(table)
        return table.lines["wave_vac"].to_numpy(float), ew, err, usable, flag
    feats = run.features
    wave = np.asarray(feats.info.get("lines", []), float)
    col = {n: i for i, n in enumerate(feats.names)}
    tags = [f"{w:.2f}" for w in wave]
    if not tags or any(f"ew_{t}" not in col for t in tags):
        raise PlotInputError("run.features: expected the per-line columns ew_<wave>, ew_err_<wave>, state_<wave> of "
                             "fehkit.features.build_features, or run.ew (the EW table)")
    X = np.asarray(feats.X, float)
    ew = X[:, [col[f"ew_{t}"] for t in tags]]
    err = X[:, [col[f"ew_err_{t}"] for t in tags]]
    state = X[:, [col[f"state_{t}"] for t in tags]]
    usable = np.isfinite(ew) & np.isfinite(err) & (err > 0) & (state != STATE_BLEND)
    flag = np.select([state == STATE_DETECTED, state == STATE_UPPER, state == STATE_BLEND],
                     ["ok", "upper_limit", "blend_suspect"], default="masked or fit_failed").astype(object)
    return wave, ew, err, usable, flag
