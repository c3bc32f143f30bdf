"""The ``fehkit`` command.

``fehkit simulate`` writes a synthetic benchmark (apStar-format files, truth.csv) made by :mod:`fehkit.synth`.

``fehkit fetch list|product|spectra`` lists and fetches the remote products of ``data_manifest.yaml`` into the
cache (:mod:`fehkit.data`).

``fehkit ew`` normalizes the continuum of APOGEE spectrum files and measures the EW of every packaged Fe I line
(:mod:`fehkit.continuum`, :mod:`fehkit.ew`), writing one row per (star, line) to a CSV file.

``fehkit inspect`` reads APOGEE spectrum files (or the packaged real examples), prints one line per spectrum
(id, S/N, visits, wavelength range, masked fraction, chip gaps) and writes ``summary.csv`` and an HTML page with
a plot of each spectrum. Errors a user can cause are printed as one line naming the file and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fehkit import __version__
from fehkit.errors import FehkitError, FehkitWarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fehkit`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except FehkitError as err:
        print(f"fehkit {args.command}: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fehkit", description="[Fe/H] of extremely metal-poor stars from APOGEE H-band spectra."
    )
    parser.add_argument("--version", action="version", version=f"fehkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="summarize and plot APOGEE spectrum files",
        description="Print id, S/N, visits, wavelength range, masked fraction and chip gaps of each spectrum, and "
        "write OUT/summary.csv and OUT/inspect.html (a Bokeh plot per spectrum, masked pixels and Fe I fit "
        "windows marked).",
    )
    p.add_argument("files", nargs="*", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--examples", action="store_true", help="add the packaged real DR17 example spectra")
    p.add_argument("--rows", default="combined", choices=["combined", "visits", "all"], help="apStar rows to read")
    p.add_argument("--kind", default="auto", choices=["auto", "apStar", "aspcapStar", "apVisit"])
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="stop at, or skip, a bad file")
    p.add_argument("--out", type=Path, default=Path("fehkit-inspect"), help="output folder (default %(default)s)")
    p.add_argument("--no-html", action="store_true", help="do not write the HTML page")
    p.add_argument("--max-plots", type=int, default=50, help="plot at most this many spectra (default %(default)s)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "simulate",
        help="write a SYNTHETIC benchmark: apStar-format FITS files and truth.csv",
        description="Draw an EMP halo population, simulate its APOGEE spectra from the MOOG curve-of-growth grid "
        "(fehkit.synth) and write OUT/apStar-*.fits (marked SYNTHETI in their headers), OUT/truth.csv (true "
        "parameters, noisy reference labels, split), OUT/truth_ew.csv (true EWs) and OUT/simulate.html (simulated "
        "spectra beside the real example spectra). All of it is synthetic.",
    )
    p.add_argument("--n", type=int, default=100, help="number of stars (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("fehkit-simulate"), help="output folder (default %(default)s)")
    p.add_argument("--split", type=float, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions, stratified by [Fe/H] (default 0.70 0.15 0.15)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in OUT")
    p.add_argument("--no-html", action="store_true", help="do not write simulate.html")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "ew",
        help="measure the EWs of the Fe I lines in APOGEE spectrum files",
        description="Normalize the continuum and fit every packaged Fe I line of every spectrum (batched Voigt fits) "
        "and write one row per (star, line): star_id, line_wave (vacuum A), ew_mA (also below detection), "
        "ew_err_mA, ew_upper_mA (3-sigma upper limit), flag (ok, upper_limit, masked, fit_failed, blend_suspect), "
        "then fit details.",
    )
    p.add_argument("files", nargs="*", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--examples", action="store_true", help="add the packaged real DR17 example spectra")
    p.add_argument("--out", type=Path, default=Path("ew.csv"), help="output CSV (default %(default)s)")
    p.add_argument("--params", type=Path, help="CSV of stellar parameters (star_id or file; teff, logg, vmic, feh) "
                   "for the expected line widths and damping; default a metal-poor giant")
    p.add_argument("--linelist", type=Path, help="a line list CSV (default: the packaged Fe I list)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--mc-draws", type=int, default=100, help="Monte Carlo draws for the resampled errors "
                   "(0 to skip; default %(default)s)")
    p.add_argument("--rv-tolerance", type=float, default=10.0, help="largest line-centre offset in km/s "
                   "(default %(default)s)")
    p.add_argument("--rows", default="combined", choices=["combined", "visits", "all"], help="apStar rows to read")
    p.add_argument("--kind", default="auto", choices=["auto", "apStar", "aspcapStar", "apVisit"])
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="stop at, or skip, a bad file")
    p.set_defaults(func=_ew)

    p = sub.add_parser(
        "demo",
        help="the main job on the embedded SYNTHETIC benchmark: train, evaluate, report",
        description="Simulate the SYNTHETIC EMP benchmark (1,500 stars: 1,050 train, 150 validation, 300 test), "
        "normalize, measure EWs, train the ensemble (random forest, XGBoost, MLP) with 5-fold inverse-variance "
        "weights, run the classical curve-of-growth methods and The Cannon, and write OUT/metrics.json, "
        "OUT/predictions.csv, OUT/report.html and OUT/model/. All numbers are about simulated spectra.",
    )
    p.add_argument("--out", type=Path, default=Path("fehkit-demo"), help="output folder (default %(default)s)")
    p.add_argument("--n-stars", type=int, default=1500, help="benchmark size (default %(default)s)")
    p.add_argument("--seed", type=int, default=11, help="seed of the benchmark and the models (default %(default)s)")
    p.add_argument("--param-errors", type=float, nargs=3, metavar=("TEFF", "LOGG", "VMIC"),
                   help="1-sigma errors of the reference Teff (K), log g, vmic (km/s) (default 100 0.2 0.2)")
    p.add_argument("--no-cannon", action="store_true", help="skip The Cannon peer")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation without log g and vmic")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "train",
        help="train the [Fe/H] ensemble on a benchmark folder or a table of real stars",
        description="Measure EWs and train the ensemble. DATA is a benchmark folder (truth.csv + apStar files, from "
        "fehkit simulate; trains on split 'train', stops the MLP on 'val') or a CSV/Parquet table of real stars with "
        "columns file, feh_ref, feh_ref_err, teff, logg, vmic (exploratory recalibration). Writes MODEL/ in safe "
        "formats with a model card.",
    )
    p.add_argument("--data", type=Path, required=True, help="benchmark folder or training table")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of folds and members (default %(default)s)")
    p.add_argument("--grid-search", metavar="JSON", help="a bounded grid per member scored by cross-validation on "
                   "the training stars, e.g. '{\"rf\": {\"max_depth\": [8, 12, 16]}}' (at most 16 combinations "
                   "per member)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "predict",
        help="[Fe/H] of APOGEE spectrum files with a trained model",
        description="Normalize, measure EWs and predict [Fe/H]; writes one row per spectrum: star_id, feh, feh_err, "
        "feh_upper (3-sigma limit where flag is upper_limit), feh_rf, feh_xgb, feh_dnn, feh_cog, n_lines, flag.",
    )
    p.add_argument("files", nargs="+", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--model", type=Path, required=True, help="model folder (fehkit train / fehkit demo)")
    p.add_argument("--params", type=Path, required=True, help="CSV of stellar parameters (star_id or file; teff, "
                   "logg, vmic, optionally alpha_fe, teff_err, logg_err, vmic_err)")
    p.add_argument("--out", type=Path, default=Path("results.csv"), help="output CSV (default %(default)s)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "evaluate",
        help="score a trained model on a benchmark folder's test stars",
        description="Predict the test split of a benchmark folder (all its stars when it has no split) and write "
        "the metrics (metrics.json keys of DESIGN.md) against its truth.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="benchmark folder (truth.csv + apStar files)")
    p.add_argument("--out", type=Path, default=Path("metrics.json"), help="output JSON (default %(default)s)")
    p.set_defaults(func=_evaluate)

    _add_fetch_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    import json

    from fehkit.training import train_model

    if args.out.exists() and not args.overwrite:
        raise FehkitError(f"{args.out}: already exists; expected a new folder or --overwrite")
    search = None
    if args.grid_search:
        try:
            search = json.loads(args.grid_search)
        except json.JSONDecodeError as err:
            raise FehkitError(f"--grid-search: not valid JSON ({err}); expected e.g. "
                              '\'{"rf": {"max_depth": [8, 12]}}\'') from None
        bad = [k for k in (search if isinstance(search, dict) else {}) if k not in ("rf", "xgb", "dnn")]
        if not isinstance(search, dict) or bad or not all(isinstance(v, dict) for v in search.values()):
            raise FehkitError(f"--grid-search: {args.grid_search!r}; expected an object mapping rf, xgb or dnn to "
                              "{parameter: [values]}")
    ens = train_model(args.data, args.out, seed=args.seed, search=search, overwrite=args.overwrite,
                      progress=not args.quiet)
    print(f"trained on {ens.n_train_} stars with a detected Fe signal; weights " +
          ", ".join(f"{k} {v:.2f}" for k, v in ens.weights_.items()) + f"; wrote {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fehkit.files import atomic_output
    from fehkit.io import read_apogee
    from fehkit.models import FeHEnsemble
    from fehkit.training import predict_spectra

    ens = FeHEnsemble.load(args.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        batch = read_apogee(args.files)
        params = _read_params(args.params, batch.meta, extra=("alpha_fe", "teff_err", "logg_err", "vmic_err"))
        for col in ("teff", "logg", "vmic"):
            if col not in params or params[col].isna().any():
                raise FehkitError(f"{args.params}: no {col} for some spectra; expected teff, logg and vmic for "
                                  "every file")
        out = predict_spectra(ens, batch, params)
    with atomic_output(args.out) as tmp:
        out.to_csv(tmp, index=False, float_format="%.5g")
    card = getattr(ens, "card_", {})
    if card.get("synthetic"):
        print("note: this model was trained on SYNTHETIC spectra", file=sys.stderr)
    print(f"wrote {args.out}: {len(out)} spectra, {int((out.flag == 'upper_limit').sum())} upper limits")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from fehkit.benchmark import TRUTH_OUT
    from fehkit.evaluate import evaluate
    from fehkit.files import atomic_output, jsonable
    from fehkit.models import FeHEnsemble
    from fehkit.training import predict_spectra, read_training_data

    ens = FeHEnsemble.load(args.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        batch, params, labels, synthetic = read_training_data(args.data)
        truth = pd.read_csv(args.data / "truth.csv", comment="#")
        test = (labels["split"] == "test").to_numpy()
        test = test if test.any() else np.ones(len(labels), bool)
        idx = np.flatnonzero(test)
        pred = predict_spectra(ens, batch.select(idx), params.iloc[idx])
    t = truth.iloc[idx].reset_index(drop=True)
    for src, dst in TRUTH_OUT.items():
        pred[dst] = t[src].to_numpy()
    pred["snr"] = t["snr"].to_numpy()
    if "feh_ext" in t:
        pred["feh_ext"] = t["feh_ext"].to_numpy()
    metrics = evaluate(pred, ensemble=ens, synthetic=synthetic)
    with atomic_output(args.out) as tmp:
        Path(tmp).write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
    e = metrics["models"].get("ensemble", {})
    print(f"{'SYNTHETIC ' if synthetic else ''}test stars {metrics['n_test']}, headline {metrics['n_headline']}: "
          f"MAE {e.get('mae', float('nan')):.4f}, bias {e.get('bias', float('nan')):+.4f}; wrote {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import time

    from fehkit.benchmark import run_benchmark, write_outputs

    if args.n_stars < 50:
        raise FehkitError(f"--n-stars {args.n_stars}: expected at least 50 (5-fold cross-validation needs stars)")
    errors = dict(zip(("teff", "logg", "vmic"), args.param_errors, strict=True)) if args.param_errors else None
    cannon = not args.no_cannon
    if cannon:
        try:
            import TheCannon  # noqa: F401
        except ImportError:
            print("fehkit demo: The Cannon is not installed (pip install \"fehkit[peers]\"); skipping that peer",
                  file=sys.stderr)
            cannon = False
    t0 = time.perf_counter()
    print(f"fehkit demo: SYNTHETIC benchmark of {args.n_stars} simulated stars (seed {args.seed}); "
          "results describe simulated spectra, not survey data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        run = run_benchmark(args.n_stars, args.seed, ref_errors=errors, cannon=cannon,
                            ablation=not args.no_ablation, progress=not args.quiet)
        write_outputs(run, args.out)
    m = run.metrics
    print(f"test stars: {m['n_test']}, upper limits: {m['n_upper_limits']}, headline subset: {m['n_headline']} "
          f"({m['headline_subset']})")
    print(f"{'model':10s} {'MAE':>7s} {'bias':>8s} {'scatter':>8s} {'r':>7s}")
    for name, s in m["models"].items():
        if s.get("n"):
            print(f"{name:10s} {s['mae']:7.4f} {s['bias']:+8.4f} {s['scatter']:8.4f} {s['r']:7.4f}")
    print(f"coverage_68: {m['coverage_68']:.3f}   weights: " +
          ", ".join(f"{k} {v:.2f}" for k, v in m.get("weights", {}).items()))
    for t in m.get("targets", []):
        value = t["value"] if isinstance(t["value"], str) else round(t["value"], 4)
        note = f" -- {t['note']}" if t["note"] and not t["met"] else ""
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['name']}: {value} (target {t['target']}){note}")
    print(f"wrote {args.out}/metrics.json, predictions.csv, report.html, model/ in {time.perf_counter() - t0:.0f} s")
    return 0


def _ew(args: argparse.Namespace) -> int:
    from fehkit.ew import measure_ew
    from fehkit.examples import example_paths
    from fehkit.io import read_apogee
    from fehkit.lines import load_linelist

    paths = list(args.files) + (example_paths() if args.examples else [])
    if not paths:
        raise FehkitError("no input: expected FILE arguments or --examples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        batch = read_apogee(paths, kind=args.kind, rows=args.rows, on_error=args.on_error, progress=len(paths) >= 50)
    for _, reason in batch.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    lines = load_linelist(args.linelist) if args.linelist else None
    params = _read_params(args.params, batch.meta) if args.params else None
    table = measure_ew(batch, lines, backend=args.backend, device=args.device, params=params,
                       mc_draws=args.mc_draws, rv_tolerance=args.rv_tolerance)
    table.write_csv(args.out)
    flags = pd.DataFrame(table.flag, index=table.star_id)
    print(f"{'star_id':<20} {'ok':>3} {'upper':>5} {'blend':>5} {'failed':>6} {'masked':>6}  shared RV (km/s)")
    for i, sid in enumerate(table.star_id):
        counts = flags.iloc[i].value_counts()
        print(f"{sid:<20} {counts.get('ok', 0):>3} {counts.get('upper_limit', 0):>5} "
              f"{counts.get('blend_suspect', 0):>5} {counts.get('fit_failed', 0):>6} {counts.get('masked', 0):>6}  "
              f"{table.shared_rv_kms[i]:+.2f} ({table.n_shape_lines[i]} lines)")
    print(f"wrote {args.out}: {table.n_spectra} spectra x {table.n_lines} lines")
    return 0


def _read_params(path: Path, meta: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Stellar parameters of each spectrum from a CSV, matched on star_id, or on the file name."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise FehkitError(f"{path}: cannot read the parameter CSV ({err}); expected a CSV file") from err
    wanted = [c for c in ("teff", "logg", "vmic", "feh") if c in table]
    if not wanted:
        raise FehkitError(f"{path}: no column teff, logg, vmic or feh; expected at least one of them")
    for key in ("star_id", "file"):
        if key in table and key in meta:
            left = meta[key].astype(str) if key == "star_id" else meta[key].astype(str).map(lambda f: Path(f).name)
            right = table.assign(**{key: table[key].astype(str) if key == "star_id"
                                    else table[key].astype(str).map(lambda f: Path(f).name)})
            right = right.drop_duplicates(key)
            cols = wanted + [c for c in extra if c in table]
            return pd.DataFrame({key: left}).merge(right[[key, *cols]], on=key, how="left")[cols]
    raise FehkitError(f"{path}: expected a star_id or file column to match the spectra, found {list(table.columns)}")


def _simulate(args: argparse.Namespace) -> int:
    from fehkit.synth import make_benchmark

    if args.n < 1:
        raise FehkitError(f"--n {args.n}: expected a positive number of stars")
    if args.out.exists() and any(args.out.glob("apStar-*.fits")) and not args.overwrite:
        raise FehkitError(f"{args.out}: already holds apStar files; expected an empty folder or --overwrite")
    sim = make_benchmark(args.n, args.seed, args.out, split=args.split, overwrite=args.overwrite)
    t = sim.truth
    counts = t.split.value_counts().reindex(["train", "val", "test"], fill_value=0)
    print(f"SYNTHETIC benchmark: {len(t)} stars (seed {args.seed}); [Fe/H] {t.feh.min():.2f}..{t.feh.max():.2f} "
          f"({(t.feh < -2.5).mean():.0%} below -2.5); Teff {t.teff.min():.0f}..{t.teff.max():.0f} K; "
          f"S/N {t.snr.min():.0f}..{t.snr.max():.0f}; split " +
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    written = [f"{len(t)} apStar files", args.out / "truth.csv", args.out / "truth_ew.csv"]
    if not args.no_html:
        from fehkit.report.spectra import realism_page

        written.append(realism_page(sim, args.out / "simulate.html"))
    print(f"wrote to {args.out}: " + ", ".join(str(w) for w in written))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fehkit.examples import example_paths
    from fehkit.files import atomic_output
    from fehkit.io import read_apogee
    from fehkit.lines import load_linelist

    paths = list(args.files) + (example_paths() if args.examples else [])
    if not paths:
        raise FehkitError("no input: expected FILE arguments or --examples")
    with warnings.catch_warnings():  # skipped files are listed below, once
        warnings.simplefilter("ignore", FehkitWarning)
        batch = read_apogee(paths, kind=args.kind, rows=args.rows, on_error=args.on_error, progress=len(paths) >= 50)
    summary = batch.summary()
    print(_format_summary(summary))
    for _, reason in batch.skipped:
        print(f"skipped: {reason}", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    written = [args.out / "summary.csv"]
    if not args.no_html:
        from fehkit.report.spectra import inspect_page

        written.append(inspect_page(batch, args.out / "inspect.html", lines=load_linelist(), max_plots=args.max_plots))
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def _format_summary(summary: pd.DataFrame) -> str:
    header = (f"{'star_id':<20} {'row':>3} {'S/N':>6} {'visits':>6} {'wavelength range (A)':>21} {'masked':>7}"
              "  chip gaps")
    rows = [header, "-" * len(header)]
    for r in summary.itertuples():
        rows.append(
            f"{str(r.star_id):<20} {r.row:>3} {r.snr:>6.1f} {r.nvisits:>6} "
            f"{r.wave_min:>10.2f}-{r.wave_max:<10.2f} {100 * r.masked_fraction:>6.1f}%  {r.chip_gaps}"
        )
    return "\n".join(rows)


def _add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="list and fetch remote data products into the cache (data_manifest.yaml)",
        description="Fetch the remote products listed in data_manifest.yaml into the cache with pooch (sha256 "
        "checked where fixed, retried with backoff on HTTP 5xx and truncated downloads). Files already cached are "
        "not downloaded again, so an interrupted fetch is resumed by running it again. --cache and --mirror "
        "override FEHKIT_CACHE and FEHKIT_DATA_URL.",
    )
    what = p.add_subparsers(dest="fetch_command", metavar="WHAT", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache folder (default $FEHKIT_CACHE, else the OS cache folder)")
    common.add_argument("--mirror", help="mirror base url that replaces every file's host (default $FEHKIT_DATA_URL)")
    common.add_argument("--manifest", type=Path, help="another data manifest (default data_manifest.yaml)")
    common.add_argument("--retries", type=int, default=3, help="retries on temporary failures (default %(default)s)")
    common.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default %(default)s)")
    what.add_parser("list", parents=[common], help="list the products: kind, size, sha256, licence, citation")
    q = what.add_parser("product", parents=[common], help="fetch one file product by name")
    q.add_argument("name", help="product name, e.g. galah_dr4_allstar (see 'fehkit fetch list')")
    q.add_argument("--field", action="append", default=[], metavar="KEY=VALUE",
                   help="template value of a per-star product, e.g. --field telescope=apo25m (repeatable)")
    q = what.add_parser("spectra", parents=[common],
                        help="fetch the spectrum files of an allStar-like table (TELESCOPE, FIELD, FILE columns)")
    q.add_argument("table", type=Path, help="CSV or FITS table, e.g. rows saved from fehkit.data.query_apogee")
    q.add_argument("--kind", default="apStar", choices=["apStar", "aspcapStar"], help="which file of each star")
    q.add_argument("--workers", type=int, default=4, help="parallel downloads (default %(default)s)")
    q.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="fail, or report the failed files and keep the others (default %(default)s)")
    q.add_argument("--out", type=Path, help="write the table with url, path and fetch_status columns (CSV)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    from fehkit.data import cache_dir, fetch_product, fetch_spectra, load_manifest

    manifest = load_manifest(args.manifest)
    retry = {"retries": args.retries, "backoff": args.backoff}
    if args.fetch_command == "list":
        table = manifest.table()[["name", "kind", "size", "sha256", "licence", "citation"]]
        table["size"] = [f"{s / 1e6:.1f} MB" if s else "-" for s in table["size"]]
        table["licence"] = [t if len(t) <= 44 else t[:43] + "…" for t in table["licence"]]
        print(table.to_string(index=False))
        mirror = args.mirror if args.mirror is not None else os.environ.get("FEHKIT_DATA_URL")
        print(f"cache: {cache_dir(args.cache)}; mirror: {mirror or 'none (original hosts)'}")
        return 0
    if args.fetch_command == "product":
        fields = {}
        for item in args.field:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise FehkitError(f"--field {item!r}: expected KEY=VALUE, e.g. telescope=apo25m")
            fields[key] = value
        path = fetch_product(args.name, manifest=manifest, cache=args.cache, mirror=args.mirror, progress=True,
                             **retry, **fields)
        print(path)
        return 0
    from fehkit.files import atomic_output

    with warnings.catch_warnings():  # failures are counted below, once
        warnings.simplefilter("ignore", FehkitWarning)
        rows = fetch_spectra(args.table, kind=args.kind, cache=args.cache, mirror=args.mirror, manifest=manifest,
                             workers=args.workers, progress=not args.no_progress, on_error=args.on_error, **retry)
    status = rows["fetch_status"].str.split(":").str[0].value_counts()
    print(f"{len(rows)} rows: {status.get('downloaded', 0)} downloaded, {status.get('cached', 0)} already cached, "
          f"{status.get('failed', 0)} failed; cache {cache_dir(args.cache)}")
    for reason in rows.loc[rows["path"].isna(), "fetch_status"]:
        print(reason, file=sys.stderr)
    if args.out:
        with atomic_output(args.out) as tmp:
            rows.to_csv(tmp, index=False)
        print(f"wrote {args.out}")
    return 0 if rows["path"].notna().all() else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
