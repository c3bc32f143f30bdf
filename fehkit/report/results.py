"""The [Fe/H] results page: one standalone HTML file of the metrics tables and the figures, readable offline.

:func:`feh_report` turns ``metrics.json`` (from :func:`fehkit.evaluate.evaluate`) and the predictions of the test
stars into a page: a SYNTHETIC banner when the benchmark is simulated, the headline numbers (models, weights,
coverage, targets met or missed), the binned tables, the detection-limit and ablation checks, then the Bokeh
figures of :mod:`fehkit.plots.results`. The tables are plain HTML (searchable, copyable, printable); BokehJS is
embedded (``bokeh.resources.INLINE``), so the page opens without the internet. Every text that comes from the
inputs is escaped. Sections whose keys ``metrics`` lacks say so instead of failing, so the page can be written
for a partial evaluation.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from bokeh.embed import file_html
from bokeh.resources import INLINE

from fehkit.files import atomic_output
from fehkit.plots import results as result_figures
from fehkit.plots.results import bin_label, model_stats
from fehkit.plots.style import MODELS
from fehkit.spectra import is_synthetic

#: The bin tables' MAE columns: metrics.json key -> header.
BIN_COLUMNS = {"mae": "MAE ensemble", "bias": "bias ensemble", "mae_cog": "MAE cog", "mae_rf": "MAE rf",
               "mae_xgb": "MAE xgb", "mae_dnn": "MAE dnn", "mae_cannon": "MAE Cannon"}
BANNER = ("SYNTHETIC benchmark (not observations): every star on this page is a simulated APOGEE spectrum with "
          "known truth. The numbers measure fehkit on its own forward model; on real stars expect larger errors.")

CSS = """
main {max-width: 1200px; margin: 0 auto; padding: 12px 24px 40px; font: 14px/1.45 system-ui, sans-serif;
      color: #222;}
h1 {font-size: 22px; margin: 8px 0 4px;} h2 {font-size: 17px; margin: 26px 0 6px; border-bottom: 1px solid #ccc;}
p.note {color: #555; margin: 2px 0 8px; max-width: 900px;}
table {border-collapse: collapse; margin: 4px 0 10px; font-size: 13px;}
th, td {padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top;}
th {background: #f2f2f2;} td.num {text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;}
tr.missed td {background: #fde2e2;} td.missed {color: #a40000; font-weight: bold;}
td.met {color: #1a7f37; font-weight: bold;} tr.unchecked td {color: #888;}
tr.headline td {font-weight: bold;}
.banner {border: 3px solid #c00; background: #fff0f0; color: #900; padding: 10px 14px; margin: 10px 0;
         font-weight: bold; font-size: 15px;}
.warning {border-left: 4px solid #e69f00; background: #fff8e6; padding: 6px 10px;}
dl.facts {display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 4px 0;}
dl.facts dt {color: #555;} dl.facts dd {margin: 0;}
.figures {display: flex; flex-wrap: wrap; gap: 18px;}
figure {margin: 0; flex: 0 0 auto;} figcaption {color: #555; font-size: 12.5px; margin-top: 4px;}
"""

# file_html fills ``embed`` with one root per figure, found by the figure's name.
TEMPLATE = """
{% from macros import embed %}
{% block preamble %}<style>{{ css }}</style>{% endblock %}
{% block contents %}
<main>
{% for part in parts %}
{{ part.html }}
{% if part.root %}<figure style="width: {{ part.width }}px">{{ embed(roots[part.root]) }}
<figcaption>{{ part.caption }}</figcaption></figure>{% endif %}
{% endfor %}
</main>
{% endblock %}
"""


def feh_report(
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame,
    out: str | os.PathLike[str],
    title: str = "fehkit [Fe/H] results",
) -> Path:
    """Write the [Fe/H] results page: metrics tables and figures in one standalone HTML file.

    Parameters
    ----------
    metrics : dict
        ``metrics.json`` as written by :func:`fehkit.evaluate.evaluate`: ``synthetic``, ``models``, ``weights``,
        ``targets``, ``by_snr``, ``by_feh``, ``by_teff``, ``by_feh_snr``, ``lowest_feh``, ``ablation``,
        ``cross_survey``, ``bias_ttest``, ... Missing keys are reported on the page as missing.
    predictions : pandas.DataFrame
        One row per test star (``predictions.csv``): the model columns ``feh``, ``feh_err``, ``feh_upper``,
        ``feh_rf``, ... and the truth ``true_feh``, ``true_teff``, ``snr``. Model columns it lacks (e.g.
        ``feh_cannon``) are left out of the figures.
    out : path
        The HTML file to write (atomically: a failed run leaves no half page).
    title : str
        Page title; "(SYNTHETIC benchmark)" is appended when the stars are simulated.

    Returns
    -------
    Path
        ``out``.
    """
    # one plain-JSON form whether metrics comes from metrics.json or straight from evaluate() (numpy scalars and
    # booleans: np.False_ is not False)
    metrics = json.loads(json.dumps(metrics, default=_plain))
    synthetic = bool(metrics.get("synthetic")) or is_synthetic(predictions)
    page_title = title + (" (SYNTHETIC benchmark)" if synthetic else "")
    parts: list[dict[str, str]] = [{"html": _header(metrics, predictions, page_title, synthetic)}]
    for heading, note, section in _sections():
        if section is _cross_survey_real and not metrics.get("cross_survey_real"):
            continue  # only for a labelled table with other surveys' [Fe/H]
        parts.append({"html": f"<section><h2>{_e(heading)}</h2>" + (f"<p class='note'>{_e(note)}</p>" if note
                                                                    else "") + section(metrics) + "</section>"})

    figures = []
    parts.append({"html": "<section><h2>Figures</h2><p class='note'>Hover a point for the star; click a legend "
                          "entry to hide it; drag to pan, wheel to zoom.</p><div class='figures'>"})
    for name, caption, build in _figure_builders(metrics, predictions, synthetic):
        try:
            fig = build()
        except ValueError as error:  # a column or key the inputs lack: say so, keep the rest of the page
            parts.append({"html": f"<p class='warning'>{_e(name)} not drawn: {_e(error)}</p>"})
            continue
        fig.name = name
        figures.append(fig)
        parts.append({"html": "", "root": name, "caption": _e(caption), "width": str(int(fig.width or 600))})
    parts.append({"html": "</div></section>"})

    if figures:
        page = file_html(figures, resources=INLINE, title=page_title, template=TEMPLATE,
                         template_variables={"parts": parts, "css": CSS})
    else:  # nothing to draw (file_html needs a model): the tables alone, without BokehJS
        page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(page_title)}</title>"
                f"<style>{CSS}</style></head><body><main>{''.join(p['html'] for p in parts)}</main></body></html>")
    path = Path(out)
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# sections: each takes metrics and returns escaped HTML
# ---------------------------------------------------------------------------------------------------------------
def _header(metrics: Mapping[str, Any], pred: pd.DataFrame, title: str, synthetic: bool) -> str:
    out = [f"<h1>{_e(title)}</h1>"]
    if synthetic:
        out.append(f"<div class='banner synthetic'>{_e(BANNER)}</div>")
    in_metrics, in_pred = metrics.get("synthetic"), is_synthetic(pred)
    if in_metrics is not None and bool(in_metrics) != in_pred and len(pred):
        out.append(f"<p class='warning'>metrics.json says synthetic = {_e(bool(in_metrics))} but the predictions "
                   f"say {_e(in_pred)}: were they written by the same run?</p>")
    cal = metrics.get("calibration") or {}
    expect95 = (f"0.95 for Gaussian errors; {_f(cal['oof_coverage_95'])} for the tails this model fitted, whose "
                f"95% interval is ±{_f(cal['err95_factor'])} feh_err" if "err95_factor" in cal and
                "oof_coverage_95" in cal else "0.95 if calibrated")
    against = ("; feh_err and each label's own error added in quadrature"
               if metrics.get("coverage_errors", "feh_err") != "feh_err" else "")
    labels = str(metrics.get("truth", "")).startswith("feh_ref")
    reference = "the reference label" if labels else "true"
    facts = [
        ("test stars", _f(metrics.get("n_test"), 0)),
        ("headline subset", f"{_f(metrics.get('n_headline'), 0)} stars: {metrics.get('headline_subset', '—')}"),
        ("upper limits", f"{_f(metrics.get('n_upper_limits'), 0)} test stars without a detected Fe signal "
                         "(flag upper_limit; a 3σ limit, not a value)"),
        ("coverage of ±feh_err", f"{_f(metrics.get('coverage_68'))} of the stars have |predicted − {reference}| ≤ "
                                 "feh_err (0.68 if feh_err is a calibrated 1σ); "
                                 f"{_f(metrics.get('coverage_95'))} within 1.96 feh_err ({expect95}){against}"),
    ]
    held = metrics.get("upper_limits_hold")
    if isinstance(held, Mapping) and held.get("n"):
        facts.append(("upper limits that hold", f"{_f(held.get('fraction'))} ({_f(held.get('n_hold'), 0)} of "
                                                f"{_f(held.get('n'), 0)}) have true [Fe/H] ≤ feh_upper"))
    if metrics.get("n_train") is not None:
        facts.append(("training set", f"{_f(metrics.get('n_train'), 0)} stars (+ {_f(metrics.get('n_val'), 0)} "
                                      "validation), disjoint from the test stars"))
    if metrics.get("truth"):
        facts.append(("scored against", str(metrics["truth"])))
    if isinstance(metrics.get("validation"), Mapping):
        v = metrics["validation"]
        facts.append(("cross-validation", f"{_f(v.get('folds'), 0)} folds stratified in {v.get('stratified_in')} "
                                          f"(seed {v.get('seed')}): {v.get('note', '')}"))
    if metrics.get("label"):
        facts.append(("trained on", f"{metrics['label']} (the [Fe/H] label the models learned)"))
    errors = metrics.get("param_errors")
    if isinstance(errors, Mapping):
        units = {"teff": ("Teff", "K", 0), "logg": ("log g", "dex", 2), "vmic": ("vmic", "km/s", 2)}
        text = ", ".join(f"{units.get(k, (k, '', 3))[0]} {_f(v, units.get(k, (k, '', 3))[2])} "
                         f"{units.get(k, (k, '', 3))[1]}".rstrip() for k, v in errors.items())
        facts.append(("stellar-parameter errors", f"{text} (1σ errors of the reference labels the models use)"))
    out.append("<dl class='facts'>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>")
    return "\n".join(out)


def _targets(metrics: Mapping[str, Any]) -> str:
    targets = metrics.get("targets")
    if not targets:
        return _absent("targets")
    rows = []
    for t in targets:
        met = t.get("met")
        status = ("met", "met") if met is True else ("MISSED", "missed") if met is False else ("not checked", "")
        rows.append(_Row([_e(t.get("name") or "—"), _num_cell(t.get("value")), _e(t.get("target") or "—"),
                          _cell(status[0], status[1]), _e(t.get("note") or "")],
                         "missed" if met is False else ""))
    n_missed = sum(1 for t in targets if t.get("met") is False)
    summary = (f"<p><b>{len(targets) - n_missed} of {len(targets)} targets met</b>"
               + (f"; <b class='missed'>{n_missed} missed</b> (red rows)." if n_missed else ".") + "</p>")
    return summary + _table(["target", "value", "goal", "status", "where / why"], rows)


def _models(metrics: Mapping[str, Any]) -> str:
    stats = model_stats(metrics)
    if not stats:
        return _absent("models")
    weights, oof = metrics.get("weights") or {}, metrics.get("oof_mse") or {}
    rows = []
    for key, s in stats.items():
        label = f"{MODELS[key][1]} ({key})" if key in MODELS else key
        rows.append(_Row([_e(label), _num_cell(s.get("n"), 0), _ci_cell(s.get("mae"), s.get("mae_ci95")),
                          _ci_cell(s.get("bias"), s.get("bias_ci95"), signed=True), _num_cell(s.get("scatter")),
                          _ci_cell(s.get("r"), s.get("r_ci95")), _num_cell(s.get("mse"), 4),
                          _num_cell(weights.get(key)), _num_cell(oof.get(key), 4)],
                         "headline" if key == "ensemble" else ""))
    return _table(["model", "n", "MAE (dex) [95% CI]", "bias (dex) [95% CI]", "scatter (dex)", "r [95% CI]",
                   "MSE (dex²)", "weight", "out-of-fold MSE (dex²)"], rows)


def _bins(key: str) -> Callable[[Mapping[str, Any]], str]:
    def section(metrics: Mapping[str, Any]) -> str:
        bins = metrics.get(key)
        if not bins:
            return _absent(key)
        shown = [c for c in BIN_COLUMNS if any(b.get(c) is not None for b in bins)]
        rows = [_Row([_e(bin_label(b.get("lo"), b.get("hi"))), _num_cell(b.get("n"), 0),
                      _num_cell(b.get("n_upper_limits"), 0)]
                     + [_num_cell(b.get(c), signed=c == "bias") for c in shown]) for b in bins]
        return _table(["bin", "stars", "upper limits"] + [f"{BIN_COLUMNS[c]} (dex)" for c in shown], rows)
    return section


def _grid_of(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda metrics: _grid(metrics, key)


def _grid(metrics: Mapping[str, Any], key: str = "by_feh_snr") -> str:
    grid = metrics.get(key)
    if not grid:
        return _absent(key)
    rows = []
    for g in grid:
        checked, meets = bool(g.get("checked")), g.get("meets")
        if not checked:
            status, cls, row = "not checked (< 20 detected)", "", "unchecked"
        elif meets is False:
            status, cls, row = "MISSED", "missed", "missed"
        else:
            status, cls, row = ("met", "met", "") if meets else ("—", "", "")
        rows.append(_Row([_e(bin_label(g.get("feh_lo"), g.get("feh_hi"))), _e(bin_label(g.get("snr_lo"),
                                                                                         g.get("snr_hi"))),
                          _num_cell(g.get("n"), 0), _num_cell(g.get("n_detected"), 0), _num_cell(g.get("mae")),
                          _num_cell(g.get("mae_cog")), _ci_cell(g.get("ratio"), g.get("ratio_ci95"), 2),
                          _cell(status, cls)], row))
    return _table(["true [Fe/H] (dex)", "S/N", "stars", "detected", "MAE ensemble (dex)", "MAE cog (dex)",
                   "MAE ratio ensemble / cog [95% CI]", "status"], rows)


def _lowest(metrics: Mapping[str, Any]) -> str:
    lowest = metrics.get("lowest_feh")
    if not lowest:
        return _absent("lowest_feh")
    rows = [_Row([_num_cell(x.get("snr"), 0), _e(bin_label(x.get("snr_lo"), x.get("snr_hi"))),
                  _num_cell(x.get("n"), 0), _num_cell(x.get("lowest_detected_feh"), 2),
                  _num_cell(x.get("feh_50pct"), 2), _num_cell(x.get("feh_50pct_per_line"), 2)]) for x in lowest]
    return _table(["S/N", "S/N range used", "stars", "lowest true [Fe/H] detected (dex)",
                   "[Fe/H] where half are detected: joint likelihood (dex)",
                   "… where half have one line detected alone (per-line method) (dex)"], rows)


def _ablation(metrics: Mapping[str, Any]) -> str:
    ablation = metrics.get("ablation")
    if not ablation:
        return _absent("ablation")
    without = ", ".join(str(w) for w in ablation.get("without") or []) or "—"
    stats = ablation.get("ensemble") or {}
    full = (metrics.get("models") or {}).get("ensemble") or {}
    rows = [_Row([_e("all features"), _ci_cell(full.get("mae"), full.get("mae_ci95")), _num_cell(full.get("bias"),
                                                                                                signed=True),
                  _num_cell(full.get("scatter")), ""]),
            _Row([_e(f"without {without}"), _ci_cell(stats.get("mae"), stats.get("mae_ci95")),
                  _num_cell(stats.get("bias"), signed=True), _num_cell(stats.get("scatter")),
                  _num_cell(ablation.get("delta_mae"), signed=True)])]
    return _table(["ensemble trained on", "MAE (dex) [95% CI]", "bias (dex)", "scatter (dex)", "ΔMAE (dex)"], rows)


def _robustness(metrics: Mapping[str, Any]) -> str:
    scenarios = metrics.get("robustness")
    if not scenarios:
        return _absent("robustness")
    rows = []
    for name, r in scenarios.items():
        if r.get("skipped"):
            rows.append(_Row([_e(name), _e(r.get("description", "")), _e("skipped: " + str(r["skipped"])), "", "",
                              "", "", ""]))
            continue
        rows.append(_Row([_e(name), _e(r.get("description", "")), _num_cell(r.get("n"), 0), _num_cell(r.get("mae")),
                          _num_cell(r.get("bias"), signed=True), _num_cell(r.get("coverage_68")),
                          _num_cell(r.get("mae_cog")), _num_cell(r.get("bias_cog"), signed=True)]))
    return _table(["scenario", "the test spectra have", "stars", "MAE (dex)", "bias (dex)", "coverage_68",
                   "MAE cog", "bias cog"], rows)


def _cross_survey(metrics: Mapping[str, Any]) -> str:
    cross = metrics.get("cross_survey")
    if not cross:
        return _absent("cross_survey")
    rows = [_Row([_e(cross.get("label") or "—"), _num_cell(cross.get("n"), 0), _num_cell(cross.get("bias"),
                                                                                        signed=True),
                  _num_cell(cross.get("scatter")), _num_cell(cross.get("mae")), _num_cell(cross.get("t"), 2),
                  _p_cell(cross.get("p"))])]
    return _table(["compared with", "stars", "mean offset (dex)", "scatter (dex)", "MAE (dex)", "t", "p"], rows)


def _cross_survey_real(metrics: Mapping[str, Any]) -> str:
    cross = metrics.get("cross_survey_real")
    if not cross:
        return _absent("cross_survey_real")
    rows = [_Row([_e(f"{c.get('label') or name} ({name})"), _num_cell(c.get("n"), 0), _num_cell(c.get("n_missing"), 0),
                  _num_cell(c.get("bias"), signed=True), _num_cell(c.get("scatter")), _num_cell(c.get("mae")),
                  _num_cell(c.get("bias_ref"), signed=True), _num_cell(c.get("scatter_ref"))])
            for name, c in cross.items()]
    out = _table(["compared with", "stars", "stars without a value", "bias: feh − survey (dex)", "scatter (dex)",
                  "MAE (dex)", "bias: feh_ref − survey (dex)", "scatter (dex)"], rows)
    bins = [b for c in cross.values() for b in c.get("by_feh") or []]
    if bins:
        labels = [bin_label(b.get("lo"), b.get("hi")) for b in next(iter(cross.values())).get("by_feh") or []]
        rows = [_Row([_e(label)] + [cell for c in cross.values() for b in (c.get("by_feh") or [])[i:i + 1]
                                    for cell in (_num_cell(b.get("n"), 0), _num_cell(b.get("bias"), signed=True),
                                                 _num_cell(b.get("scatter")))])
                for i, label in enumerate(labels)]
        header = ["reference [Fe/H] (dex)"] + [f"{h} {name}" for name in cross for h in ("stars", "bias", "scatter")]
        out += _table(header, rows)
    return out


def _bias_ttest(metrics: Mapping[str, Any]) -> str:
    test = metrics.get("bias_ttest")
    if not test:
        return _absent("bias_ttest")
    rows = [_Row([_num_cell(test.get("n"), 0), _num_cell(test.get("t"), 2), _p_cell(test.get("p"))])]
    return _table(["stars", "t", "p"], rows)


def _sections() -> list[tuple[str, str, Callable[[Mapping[str, Any]], str]]]:
    return [
        ("Targets", "Each goal of the benchmark, the value reached and, where missed, where and why.", _targets),
        ("Models on the headline subset", "MAE with its 95% bootstrap interval; bias = mean(predicted − true); "
         "weight: the ensemble's inverse-variance weight of each member, from its out-of-fold MSE.", _models),
        ("By S/N", "All test stars in each S/N bin; MAEs over the detected ones.", _bins("by_snr")),
        ("By true [Fe/H]", "All test stars in each [Fe/H] bin; MAEs over the detected ones.", _bins("by_feh")),
        ("By true Teff", "All test stars in each Teff bin; MAEs over the detected ones.", _bins("by_teff")),
        ("[Fe/H] × S/N grid check", "The ensemble against the curve of growth in each cell; a cell is checked "
         "when it holds at least 20 detected stars.", _grid_of("by_feh_snr")),
        ("[Fe/H] × S/N grid check, training stars out of fold", "The same comparison on the out-of-fold "
         "predictions of the training stars: each predicted by members that did not see it, four times as many "
         "stars as the test set.", _grid_of("by_feh_snr_oof")),
        ("Detection limit", "The lowest true [Fe/H] at which a star is still detected, near each S/N, over every "
         "star of the benchmark (detection involves no training), for the joint likelihood of all lines and for "
         "the per-line method (which needs one line detected on its own).", _lowest),
        ("Ablation", "The ensemble retrained without some stellar parameters.", _ablation),
        ("Robustness: physics the analysis does not know", "The trained model on test spectra that break one "
         "assumption of the analysis each (the same simulated stars in every row; headline subset: detected, "
         "S/N >= 50). The standard row is the benchmark's own physics; the others show how far each unknown moves "
         "the answer. Simulated spectra, not survey data.", _robustness),
        ("Cross-survey check", "fehkit against an external survey's [Fe/H] of the same stars.", _cross_survey),
        ("Cross-survey check on the labelled stars", "fehkit's [Fe/H] against the other surveys' values the table "
         "carries (ASPCAP, GALAH), over stars with a measured [Fe/H] (not an upper limit) and a value there; the "
         "reference labels against the same survey for comparison, then the bias by reference [Fe/H]. ASPCAP's "
         "DR17 grid stops at [M/H] = −2.5, so its values are missing below.", _cross_survey_real),
        ("Bias t-test", "One-sample t-test of predicted − true [Fe/H] (detected headline stars) against zero.",
         _bias_ttest),
    ]


def _figure_builders(
    metrics: Mapping[str, Any], pred: pd.DataFrame, synthetic: bool
) -> list[tuple[str, str, Callable[[], Any]]]:
    p = result_figures
    return [
        ("fig_one_to_one", "Ensemble [Fe/H] against the truth; whiskers ±feh_err; grey triangles: 3σ upper limits "
         "of undetected stars.", lambda: p.one_to_one_figure(pred, "feh", synthetic=synthetic)),
        ("fig_one_to_one_cog", "The classical curve of growth (joint likelihood) against the truth.",
         lambda: p.one_to_one_figure(pred, "feh_cog", synthetic=synthetic)),
        ("fig_residual_histogram", "Residuals of every model over the detected stars (same bins).",
         lambda: p.residual_histogram_figure(pred, synthetic=synthetic)),
        ("fig_residual_snr", "Residual against S/N; red: the curve of growth.",
         lambda: p.residual_vs_figure(pred, "snr", synthetic=synthetic)),
        ("fig_residual_feh", "Residual against true [Fe/H]; triangles: upper limit − truth (the residual lies below).",
         lambda: p.residual_vs_figure(pred, "true_feh", synthetic=synthetic)),
        ("fig_residual_teff", "Residual against true Teff.",
         lambda: p.residual_vs_figure(pred, "true_teff", synthetic=synthetic)),
        ("fig_members", "MAE of each model on the headline subset with its 95% interval.",
         lambda: p.members_figure({**metrics, "synthetic": synthetic})),
        ("fig_by_feh", "MAE per true [Fe/H] bin; bars: stars per bin (grey: upper limits).",
         lambda: p.binned_mae_figure({**metrics, "synthetic": synthetic}, "by_feh")),
        ("fig_by_snr", "MAE per S/N bin; bars: stars per bin (grey: upper limits).",
         lambda: p.binned_mae_figure({**metrics, "synthetic": synthetic}, "by_snr")),
        ("fig_by_teff", "MAE per true Teff bin; bars: stars per bin (grey: upper limits).",
         lambda: p.binned_mae_figure({**metrics, "synthetic": synthetic}, "by_teff")),
    ]


# ---------------------------------------------------------------------------------------------------------------
# HTML helpers: every text from the inputs goes through _e
# ---------------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON form of what json cannot write: numpy scalars and arrays, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class _Row:
    """One table row: cells already escaped HTML (``<td>...</td>`` or bare text, wrapped in <td>), a row class."""

    def __init__(self, cells: Sequence[str], cls: str = "") -> None:
        self.cells, self.cls = cells, cls


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cell(text: str, cls: str = "") -> str:
    return f"<td class='{cls}'>{_e(text)}</td>" if cls else f"<td>{_e(text)}</td>"


def _f(value: Any, digits: int = 3, signed: bool = False) -> str:
    """Format a number; None, NaN and non-numbers as an em dash (a JSON null is 'not computed')."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "—"
    return f"{v:{'+' if signed else ''}.{digits}f}"


def _num_cell(value: Any, digits: int = 3, signed: bool = False) -> str:
    return f"<td class='num'>{_e(_f(value, digits, signed))}</td>"


def _p_cell(value: Any) -> str:
    """Format a p-value with three decimals, or two significant digits below 0.001 (a 1e-7 is not 0.000)."""
    small = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e-3
    text = f"{value:.1e}" if small else _f(value)
    return f"<td class='num'>{_e(text)}</td>"


def _ci_cell(value: Any, ci: Any, digits: int = 3, signed: bool = False) -> str:
    text = _f(value, digits, signed)
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        text += f" [{_f(ci[0], digits, signed)}, {_f(ci[1], digits, signed)}]"
    return f"<td class='num'>{_e(text)}</td>"


def _table(header: Sequence[str], rows: Sequence[_Row]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row.cells)
        body.append(f"<tr class='{row.cls}'>{cells}</tr>" if row.cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _absent(key: str) -> str:
    return f"<p class='warning'>metrics.json has no {_e(key)}.</p>"
