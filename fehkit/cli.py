"""The ``fehkit`` command: one subcommand per job, with the file contracts of docs/cli.md.

``fehkit inspect`` summarizes and plots APOGEE spectrum files (``summary.csv``, ``inspect.html``).
``fehkit ew`` measures the EWs of the packaged Fe I lines (one CSV row per star and line).
``fehkit simulate`` writes a SYNTHETIC benchmark folder (apStar-format files, ``truth.csv``, ``truth_ew.csv``).
``fehkit demo`` runs the main job on the embedded SYNTHETIC benchmark (``metrics.json``, ``predictions.csv``,
``report.html``, ``model/``). ``fehkit train``, ``predict`` and ``evaluate`` train the [Fe/H] ensemble, apply it to
spectrum files and score it on a benchmark folder or a labelled table of stars; ``fehkit validate`` cross-validates it
on a labelled table (out-of-sample [Fe/H] of every star, compared with the reference labels and with ASPCAP or
GALAH where the table has them). ``fehkit batch`` predicts a whole catalogue on dask.distributed in resumable
chunks (``parts/``, ``results.parquet``, ``run.json``). ``fehkit serve`` answers [Fe/H] over HTTP (docs/service.md).
``fehkit fetch`` lists and fetches the remote data products of ``data_manifest.yaml`` into the cache.

Every error a user can cause (a bad file, a missing column, a bad number, an output that cannot be written) is a
:class:`~fehkit.errors.FehkitError`, printed as one line ``fehkit COMMAND: error: ...`` with exit status 2, and
found before the work starts where it can be. fehkit's warnings are collected and printed at the end, each kind
once with a count. Folders are written whole and only ever replace a folder fehkit wrote (docs/cli.md).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit import __version__
from fehkit.errors import FehkitError, FehkitWarning, InputTableError, UsageError

#: Exit status of a run that failed on bad input (argparse uses the same for a bad command line).
EXIT_ERROR = 2

ENSEMBLE_HELP = ("settings of the ensemble as JSON, e.g. '{\"n_folds\": 3, \"rf\": {\"n_estimators\": 100}}' "
                 "(keys rf, xgb, dnn, members, n_folds, target, train_on, detection_sigma)")
OVERWRITE_HELP = ("replace OUT if it exists; only a folder fehkit wrote (it holds .fehkit-output.json) or an empty "
                  "one is ever replaced, whole")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fehkit`` command line; return the exit status (0 done, 1 partly done, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _CommandLineError as err:
        print(f"{err.prog}: error: {err.message} (see {err.prog} --help)", file=sys.stderr)
        return EXIT_ERROR
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    name = f"fehkit {args.command}"
    args.command_line = "fehkit " + shlex.join(argv)
    args.reported = set()  # warnings a command already printed itself (skipped files), not repeated at the end
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FehkitWarning)
        try:
            status = int(args.func(args) or 0)
        except FehkitError as err:
            status, error = EXIT_ERROR, str(err)
        except OSError as err:  # the disk filled up, a permission changed while working: still one line
            status, error = EXIT_ERROR, _os_error(err)
        except KeyboardInterrupt:
            status, error = 130, "interrupted; outputs are left as they were before this run"
    for line in warning_lines(name, caught, skip=args.reported):
        print(line, file=sys.stderr)
    for line in getattr(args, "final_lines", ()):  # a summary after the warnings (fehkit predict's flags)
        print(line)
    if error is not None:
        print(f"{name}: error: {' '.join(error.split())}", file=sys.stderr)
    return status


def warning_lines(name: str, caught: Iterable[warnings.WarningMessage], skip: Iterable[str] = ()) -> list[str]:
    """One line per kind of warning: ``fehkit CMD: warning (N times): message``.

    Warnings of one category whose messages differ only in their numbers are one kind; the first message is
    shown, with ``first shown`` when the others differ from it. Other libraries' warnings carry their category.
    """
    skip = set(skip)
    groups: dict[tuple[str, str], list[str]] = {}
    for w in caught:
        message = " ".join(str(w.message).split())
        if message in skip:
            continue
        category = "" if issubclass(w.category, FehkitWarning) else f"{w.category.__name__}: "
        key = (category, re.sub(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", "#", message))
        groups.setdefault(key, []).append(message)
    lines = []
    for (category, _), messages in groups.items():
        n = len(messages)
        count = "" if n == 1 else f" ({n} times)" if len(set(messages)) == 1 else f" ({n} times, first shown)"
        lines.append(f"{name}: warning{count}: {category}{messages[0]}")
    return lines


def _os_error(err: OSError) -> str:
    if err.filename is None:
        return str(err)
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{where}: {err.strerror or err}"


class _CommandLineError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog, self.message = prog, message


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise instead of printing the usage and exiting: :func:`main` prints one line and returns 2."""
        raise _CommandLineError(self.prog, message)


def _number(kind: type, low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """Make an argparse type: a finite int or float at least ``low`` (above it when ``above``), at most ``high``."""
    what = "a whole number" if kind is int else "a number"
    bound = f"> {low:g}" if above else f">= {low:g}"
    if high is not None:
        bound = f"from {low:g} to {high}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; expected {what} {bound}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text}: out of range; expected {what} {bound}")
        return value

    parse.__name__ = kind.__name__
    return parse


_SEED = _number(int, 0, 2**32 - 1)
_COUNT = _number(int, 0)
_POSITIVE_COUNT = _number(int, 1)
_NON_NEGATIVE = _number(float, 0)
_POSITIVE = _number(float, 0, above=True)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="fehkit", description="[Fe/H] of extremely metal-poor stars from APOGEE H-band spectra. Errors a user "
        "can cause exit with status 2 and one line naming the input; docs/cli.md describes every file written.",
    )
    parser.add_argument("--version", action="version", version=f"fehkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="summarize and plot APOGEE spectrum files",
        description="Print id, S/N, visits, wavelength range, masked fraction and chip gaps of each spectrum, and "
        "write the folder OUT: summary.csv (one row per spectrum) and inspect.html (a Bokeh plot per spectrum, "
        "masked pixels and Fe I fit windows marked). OUT is written whole; an existing OUT needs --overwrite.",
    )
    p.add_argument("files", nargs="*", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--examples", action="store_true", help="add the packaged real DR17 example spectra")
    p.add_argument("--rows", default="combined", choices=["combined", "visits", "all"], help="apStar rows to read")
    p.add_argument("--kind", default="auto", choices=["auto", "apStar", "aspcapStar", "apVisit"])
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="stop at, or skip, a bad file")
    p.add_argument("--out", type=Path, default=Path("fehkit-inspect"), help="output folder (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-html", action="store_true", help="do not write the HTML page")
    p.add_argument("--max-plots", type=_COUNT, default=50, help="plot at most this many spectra (default %(default)s)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "simulate",
        help="write a SYNTHETIC benchmark folder: apStar-format FITS files and truth.csv",
        description="Draw an EMP halo population, simulate its APOGEE spectra from the MOOG curve-of-growth grid "
        "(fehkit.synth) and write the folder OUT: apStar-*.fits (marked SYNTHETI in their headers), truth.csv (true "
        "parameters, noisy reference labels, split), truth_ew.csv (true EWs) and simulate.html (simulated spectra "
        "beside the real example spectra). All of it is synthetic. OUT is written whole; an existing OUT needs "
        "--overwrite.",
    )
    p.add_argument("--n", type=_POSITIVE_COUNT, default=100, help="number of stars (default %(default)s)")
    p.add_argument("--seed", type=_SEED, default=0, help="random seed, 0 to 2**32-1 (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("fehkit-simulate"), help="output folder (default %(default)s)")
    p.add_argument("--split", type=_NON_NEGATIVE, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions summing to 1, stratified by [Fe/H] (default 0.70 0.15 0.15)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-html", action="store_true", help="do not write simulate.html")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "ew",
        help="measure the EWs of the Fe I lines in APOGEE spectrum files",
        description="Normalize the continuum and fit every packaged Fe I line of every spectrum (batched Voigt fits) "
        "and write the CSV file OUT, one row per (star, line): star_id, line_wave (vacuum A, as in the line list), "
        "ew_mA (also below detection), ew_err_mA, ew_upper_mA (3-sigma upper limit), flag (ok, upper_limit, masked, "
        "fit_failed, blend_suspect), then fit details. An existing file OUT is replaced.",
    )
    p.add_argument("files", nargs="*", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--examples", action="store_true", help="add the packaged real DR17 example spectra")
    p.add_argument("--out", type=Path, default=Path("ew.csv"), help="output CSV file (default %(default)s)")
    p.add_argument("--params", type=Path, help="CSV of stellar parameters (star_id or file; teff, logg, vmic, feh) "
                   "for the expected line widths and damping; default a metal-poor giant")
    p.add_argument("--linelist", type=Path, help="a line list CSV (default: the packaged Fe I list)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default cuda when available, else cpu)")
    p.add_argument("--mc-draws", type=_COUNT, default=100, help="Monte Carlo draws for the resampled errors "
                   "(0 to skip; default %(default)s)")
    p.add_argument("--rv-tolerance", type=_POSITIVE, default=10.0, help="largest line-centre offset in km/s "
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
        "weights, run the classical curve-of-growth methods and The Cannon, and write the folder OUT: metrics.json "
        "(the metrics, with seed, command and fehkit_version), predictions.csv (the test stars), report.html and "
        "model/. All numbers are about simulated spectra. OUT is written whole. A folder an earlier fehkit demo "
        "wrote is replaced without --overwrite (so the demo can be run again); any other existing folder needs "
        "--overwrite.",
    )
    p.add_argument("--out", type=Path, default=Path("fehkit-demo"), help="output folder (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + " (not needed for a folder fehkit demo "
                   "wrote)")
    p.add_argument("--n-stars", type=_POSITIVE_COUNT, default=1500, help="benchmark size, at least 50 (default "
                   "%(default)s)")
    p.add_argument("--seed", type=_SEED, default=11, help="seed of the benchmark and the models (default %(default)s)")
    p.add_argument("--param-errors", type=_NON_NEGATIVE, nargs=3, metavar=("TEFF", "LOGG", "VMIC"),
                   help="1-sigma errors of the reference Teff (K), log g, vmic (km/s) (default 100 0.2 0.2)")
    p.add_argument("--no-cannon", action="store_true", help="skip The Cannon peer")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation without log g and vmic")
    p.add_argument("--no-robustness", action="store_true", help="skip the robustness scenarios (test spectra "
                   "made with physics the analysis does not know)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "train",
        help="train the [Fe/H] ensemble on a benchmark folder or a table of real stars",
        description="Measure EWs and train the ensemble. DATA is a benchmark folder (truth.csv + apStar files, from "
        "fehkit simulate; trains on split 'train', stops the MLP on 'val') or a CSV/Parquet table of real stars with "
        "columns file, feh_ref, feh_ref_err, teff, logg, vmic (exploratory recalibration). Writes the model folder "
        "OUT in safe formats with a model card (card.json); an existing OUT needs --overwrite.",
    )
    p.add_argument("--data", type=Path, required=True, help="benchmark folder or training table")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of folds and members (default %(default)s)")
    p.add_argument("--grid-search", metavar="JSON", help="a bounded grid per member scored by cross-validation on "
                   "the training stars, e.g. '{\"rf\": {\"max_depth\": [8, 12, 16]}}' (at most 16 combinations "
                   "per member)")
    p.add_argument("--holdout", type=_number(float, 0, 0.9), default=0.0, metavar="FRACTION",
                   help="keep this fraction of the training stars out of training (stratified in [Fe/H]), score the "
                   "model on them and record the metrics and their predictions in the model card (e.g. 0.2)")
    p.add_argument("--ensemble", metavar="JSON", help=ENSEMBLE_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "predict",
        help="[Fe/H] of APOGEE spectrum files with a trained model",
        description="Normalize, measure EWs and predict [Fe/H]; writes the CSV file OUT, one row per spectrum: "
        "star_id, feh, feh_err, feh_upper (3-sigma limit where flag is upper_limit), feh_rf, feh_xgb, feh_dnn, "
        "feh_cog, feh_sys (MOOG-vs-SME systematic of feh_cog), n_lines, flag (ok, or those that apply of "
        "upper_limit, no_usable_lines, out_of_domain, grid_edge, "
        "grid_extrapolated, joined by ';'), flag_reason. Prints a count per flag. An existing file OUT is replaced.",
    )
    p.add_argument("files", nargs="+", type=Path, help="apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--model", type=Path, required=True, help="model folder (fehkit train, or model/ of fehkit demo)")
    p.add_argument("--params", type=Path, required=True, help="CSV of stellar parameters (star_id or file; teff, "
                   "logg, vmic, optionally alpha_fe, teff_err, logg_err, vmic_err), a row for every spectrum")
    p.add_argument("--out", type=Path, default=Path("results.csv"), help="output CSV file (default %(default)s)")
    p.add_argument("--device", default="auto", help="where to run: auto (a CUDA GPU when torch sees one, else the "
                   "CPU), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--batch-size", type=_POSITIVE_COUNT, default=None, help="files per chunk: held in memory at once "
                   "and read ahead by other processes while the previous chunk is measured (default 256)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "bench",
        help="measure fehkit's speed here: spectra/s per stage and end to end, against baselines (SYNTHETIC spectra)",
        description="Times, on the same N simulated spectra: continuum normalization, EW fits, features with the "
        "classical method, prediction (members, fusion, flags) and fehkit.infer end to end in memory; the same "
        "spectra read back from apStar files; the naive per-line scipy curve_fit loop and The Cannon's test step "
        "(when thecannon is installed) as baselines; the peak memory. Prints a summary; --json writes every number "
        "(keys: device, n, stages, end_to_end_spectra_per_s, files_per_s, baseline_spectra_per_s, "
        "speedup_vs_baseline, cannon_spectra_per_s, ew_agreement_mA, peak_rss_mb, ...). Without --model it first "
        "trains a model with the default settings (about a minute).",
    )
    p.add_argument("--n", type=_POSITIVE_COUNT, default=2000, help="spectra (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--engine", choices=("auto", "torch", "numpy"), default="auto", help="torch tensor operations "
                   "on the device, or NumPy and the compiled kernels on the CPU (default auto: torch on a GPU)")
    p.add_argument("--model", type=Path, default=None, help="model folder to predict with (default: train one)")
    p.add_argument("--baseline-n", type=_POSITIVE_COUNT, default=40, help="spectra for the slow curve_fit loop "
                   "(default %(default)s)")
    p.add_argument("--no-cannon", action="store_true", help="skip The Cannon's test step")
    p.add_argument("--no-files", action="store_true", help="skip writing and reading apStar files")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulated spectra (default %(default)s)")
    p.add_argument("--stream", type=_COUNT, default=0, metavar="M", help="also stream M spectra, simulated a chunk "
                   "at a time, through fehkit.infer.infer_chunks, and report the peak memory with it")
    p.add_argument("--batch-size", type=_POSITIVE_COUNT, default=None, help="spectra per chunk (default: N in one "
                   "chunk; 2048 when streaming)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "evaluate",
        help="score a trained model on a benchmark folder's test stars or on a labelled table of stars",
        description="DATA a benchmark folder: predict its test split (all its stars when none is marked test) and "
        "write the JSON file OUT (default metrics.json): per model MAE, bias, scatter, r with confidence intervals, "
        "binned metrics, upper limits and coverage against the folder's truth.csv (the keys of metrics.json of "
        "fehkit demo); an existing file OUT is replaced. DATA a labelled table (the layout fehkit train reads: "
        "file, feh_ref, feh_ref_err, teff, logg, vmic): predict every star and write the folder OUT (default "
        "fehkit-evaluate): metrics.json against feh_ref, with the cross-survey comparison where the table has "
        "ASPCAP fe_h/m_h or GALAH [Fe/H] columns, predictions.csv and report.html; an existing OUT needs "
        "--overwrite.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="benchmark folder (truth.csv + apStar files, from "
                   "fehkit simulate) or a labelled CSV/Parquet table")
    p.add_argument("--out", type=Path, help="output JSON file for a benchmark folder (default metrics.json), output "
                   "folder for a table (default fehkit-evaluate)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + " (table DATA only)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "validate",
        help="cross-validated [Fe/H] and metrics for every star of a labelled table",
        description="Split the stars of DATA (the layout fehkit train reads: a CSV/Parquet table with file, "
        "feh_ref, feh_ref_err, teff, logg, vmic, or a benchmark folder) into FOLDS folds stratified in feh_ref, "
        "predict each fold with an ensemble trained on the other folds, and write the folder OUT: metrics.json "
        "(against feh_ref, with the cross-survey comparison where the table has ASPCAP fe_h/m_h or GALAH [Fe/H] "
        "columns), predictions.csv (one row per star, its fold) and report.html. OUT is written whole; an existing "
        "OUT needs --overwrite.",
    )
    p.add_argument("--data", type=Path, required=True, help="labelled table (or benchmark folder)")
    p.add_argument("--folds", type=_number(int, 2), default=5, help="number of folds, at least 2 (default "
                   "%(default)s)")
    p.add_argument("--out", type=Path, default=Path("fehkit-validate"), help="output folder (default %(default)s)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the folds and members (default %(default)s)")
    p.add_argument("--ensemble", metavar="JSON", help=ENSEMBLE_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "batch",
        help="[Fe/H] of a whole catalogue of spectrum files on a dask cluster, resumable",
        description="Predict [Fe/H] for every file of a catalogue in chunks on dask.distributed (a local cluster "
        "of --workers processes, or the scheduler at --scheduler; needs fehkit[dask]). INPUT is one CSV/Parquet "
        "table with a path (or file) column, relative to the table's folder, and teff, logg, vmic (optionally "
        "star_id, alpha_fe, teff_err, logg_err, vmic_err), or spectrum files with --params. Writes the folder OUT: "
        "parts/part-NNNNN.parquet (one per chunk, written as it finishes), results.parquet (the columns of fehkit "
        "predict plus path and error, one row per file in the catalogue's order; a file that cannot be read is a "
        "row with flag no_usable_lines and error) and run.json. Run again on the same OUT to resume: finished "
        "chunks are reused. Another existing folder needs --overwrite.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="a CSV/Parquet catalogue table, or "
                   "apStar/asStar, aspcapStar or apVisit FITS files (.gz ok)")
    p.add_argument("--model", type=Path, required=True, help="model folder (fehkit train, or model/ of fehkit demo)")
    p.add_argument("--out", type=Path, default=Path("fehkit-batch"), help="output folder (default %(default)s)")
    p.add_argument("--params", type=Path, help="CSV/Parquet of stellar parameters (star_id or file; teff, logg, "
                   "vmic, ...) as for fehkit predict, for the stars the catalogue gives none")
    p.add_argument("--scheduler", metavar="ADDR", help="address of a running dask scheduler, e.g. "
                   "tcp://host:8786 (its workers must see the files and OUT at the same paths); default: a local "
                   "cluster")
    p.add_argument("--workers", type=_POSITIVE_COUNT, help="worker processes of the local cluster (default one per "
                   "core)")
    p.add_argument("--chunk-size", type=_POSITIVE_COUNT, default=100, help="spectra per task (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in OUT (its finished chunks are not "
                   "reused); only a folder fehkit wrote or an empty one is ever emptied")
    p.add_argument("--quiet", action="store_true", help="no dashboard line, no progress bar")
    p.set_defaults(func=_batch)

    p = sub.add_parser(
        "serve",
        help="an HTTP service: POST a spectrum, get [Fe/H] back (needs fehkit[service])",
        description="Serve a trained model over HTTP with FastAPI and uvicorn (docs/service.md): POST /v1/feh (one "
        "spectrum: an uploaded apStar/asStar, aspcapStar or apVisit file, or JSON flux/ivar on the apStar grid, "
        "with teff, logg, vmic), POST /v1/feh/batch (up to --max-batch JSON spectra), GET /healthz, /readyz, "
        "/v1/model (the model card), /metrics (Prometheus text), /openapi.json. Each worker process loads the "
        "model once and warms it before it answers; a worker that dies is restarted. With the environment "
        "variable FEHKIT_API_KEY set, every endpoint but the health checks needs it in the X-API-Key header. "
        "Runs until interrupted (Ctrl-C).",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (fehkit train, or model/ of fehkit demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine "
                   "only; 0.0.0.0 for every interface, e.g. in a container)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--workers", type=_POSITIVE_COUNT, default=1, help="worker processes, each with the model and "
                   "FEHKIT_THREADS = cores / workers threads unless that is set (default %(default)s)")
    p.add_argument("--max-batch", type=_POSITIVE_COUNT, default=100, help="spectra per POST /v1/feh/batch at most "
                   "(default %(default)s)")
    p.add_argument("--max-body-mb", type=_POSITIVE, default=64.0, help="largest request body in MiB, refused "
                   "before it is read (default %(default)s)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls "
                   "from this origin, e.g. https://pipeline.example.org (repeatable; default: CORS off)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn's log level (default %(default)s)")
    p.set_defaults(func=_serve)

    _add_fetch_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:

    from fehkit.files import check_output_folder
    from fehkit.training import train_model

    search = None
    if args.grid_search:
        search = _json_option("--grid-search", args.grid_search, '\'{"rf": {"max_depth": [8, 12]}}\'')
        bad = [k for k in (search if isinstance(search, dict) else {}) if k not in ("rf", "xgb", "dnn")]
        if not isinstance(search, dict) or bad or not all(isinstance(v, dict) for v in search.values()):
            raise UsageError(f"--grid-search: {args.grid_search!r}; expected an object mapping rf, xgb or dnn to "
                             "{parameter: [values]}")
    if not args.data.exists():
        raise UsageError(f"--data {args.data}: not found; expected a benchmark folder or a CSV/Parquet table")
    ensemble = _ensemble_json(args.ensemble)
    check_output_folder(args.out, args.overwrite)
    ens = train_model(args.data, args.out, seed=args.seed, search=search, overwrite=args.overwrite,
                      progress=not args.quiet, ensemble=ensemble, holdout=args.holdout)
    print(f"trained on {ens.n_train_} stars with a detected Fe signal; weights " +
          ", ".join(f"{k} {v:.2f}" for k, v in ens.weights_.items()) + f"; wrote {args.out}")
    if getattr(ens, "holdout_", None) is not None:
        print(f"held out {len(ens.holdout_.predictions)} stars ({args.holdout:g}, stratified in [Fe/H]; recorded in "
              f"{args.out}/card.json under holdout):")
        _print_table_metrics(ens.holdout_)
    return 0


def _json_option(option: str, text: str, example: str) -> Any:
    """Parse the JSON value of a command-line option; a UsageError naming the option when it is not JSON."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{option}: not valid JSON ({err}); expected e.g. {example}") from None


def _ensemble_json(text: str | None) -> dict | None:
    """``--ensemble JSON``: FeHEnsemble settings, checked before any work."""
    if not text:
        return None
    allowed = ("rf", "xgb", "dnn", "members", "n_folds", "target", "train_on", "detection_sigma")
    value = _json_option("--ensemble", text, '\'{"n_folds": 3}\'')
    bad = [k for k in (value if isinstance(value, dict) else {}) if k not in allowed]
    if not isinstance(value, dict) or bad or not all(isinstance(value[k], dict) for k in ("rf", "xgb", "dnn")
                                                     if k in value):
        raise UsageError(f"--ensemble {text!r}: found {', '.join(map(str, bad)) or type(value).__name__}; expected "
                         f"an object with keys among {', '.join(allowed)} (rf, xgb, dnn: objects of settings)")
    return value


def _print_table_metrics(res: object) -> None:
    """Print the headline numbers of a labelled table's evaluation against feh_ref and the cross-survey check."""
    m = res.metrics
    what = "SYNTHETIC stand-in table (simulated spectra): " if res.synthetic else ""
    e = m["models"].get("ensemble", {})
    print(f"  {what}{m['n_test']} stars, {m['n_upper_limits']} upper limits, headline {m['n_headline']} "
          f"({m['headline_subset']})")
    if e.get("n"):
        cov = m.get("coverage_68")
        print(f"  against feh_ref (reference labels): MAE {e['mae']:.4f}, bias {e['bias']:+.4f}, scatter "
              f"{e['scatter']:.4f} dex" + (f", coverage_68 {cov:.2f}" if cov is not None else "")
              + (" (feh_err with the labels' own errors)" if m.get("coverage_errors", "feh_err") != "feh_err" else ""))
    for name, c in (m.get("cross_survey_real") or {}).items():
        if c.get("n"):
            scatter = f"{c['scatter']:.4f}" if c.get("scatter") is not None else "-"
            print(f"  feh - {name} ({c['label']}): n {c['n']}, bias {c['bias']:+.4f}, scatter {scatter} dex "
                  f"(feh_ref - {name}: bias {c['bias_ref']:+.4f}); {c['n_missing']} stars without a value")
        else:
            print(f"  {name} ({c['label']}): no star with a measured feh and a value")


def _write_table_results(args: argparse.Namespace, res: object, kind: str, title: str) -> None:
    """Write OUT: metrics.json, predictions.csv, report.html of a labelled table's evaluation."""
    import json

    from fehkit.files import atomic_folder, jsonable, write_table
    from fehkit.report.results import feh_report

    metrics = {**res.metrics, "command": args.command_line, "fehkit_version": __version__}
    pred = res.predictions
    comment = ("SYNTHETIC stand-in table: simulated spectra, not observations" if res.synthetic else None)
    about = {"command": args.command_line, "seed": getattr(args, "seed", None), "synthetic": res.synthetic}
    with atomic_folder(args.out, kind=kind, overwrite=args.overwrite, about=about) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
        write_table(pred, tmp / "predictions.csv", comment=comment)
        shown = pred.assign(true_feh=pred["feh_ref"], true_teff=pred["teff"])
        feh_report(metrics, shown, tmp / "report.html", title=title)


def _predict(args: argparse.Namespace) -> int:
    from fehkit.files import check_output_file, write_table
    from fehkit.flags import has_flag, tally
    from fehkit.infer import infer, resolve_device
    from fehkit.models import FeHEnsemble

    required = ("teff", "logg", "vmic")
    check_output_file(args.out)
    device = resolve_device(args.device)
    table = _load_params(args.params, extra=("alpha_fe", "teff_err", "logg_err", "vmic_err"), required=required)
    ens = FeHEnsemble.load(args.model, device=str(device))
    # the files are read a chunk at a time (ahead, in other processes); each chunk's rows of --params are found by
    # the star ids (or file names) read from it
    out = infer(args.files, ens, lambda meta: _match_params(table, args.params, meta, required=required),
                device=str(device), batch_size=args.batch_size)
    write_table(out, args.out)
    _note_synthetic_model(getattr(ens, "card_", {}).get("synthetic"))
    n_upper = int(has_flag(out["flag"], "upper_limit").sum())
    print(f"wrote {args.out}: {len(out)} spectra, {n_upper} upper limits")
    args.final_lines = ["flags: " + ", ".join(f"{k} {n}" for k, n in tally(out["flag"]).items())]
    return 0


def _note_synthetic_model(synthetic: bool | None) -> None:
    """Say on stderr, after a prediction, when its model was trained on synthetic spectra."""
    if synthetic:
        print("note: this model was trained on SYNTHETIC spectra", file=sys.stderr)


def _bench(args: argparse.Namespace) -> int:
    from fehkit.bench import run_bench, summary, write_json
    from fehkit.files import check_output_file

    if args.json is not None:
        check_output_file(args.json)
    res = run_bench(args.n, device=args.device, model=args.model, seed=args.seed, baseline_n=args.baseline_n,
                    cannon=not args.no_cannon, files=not args.no_files, stream=args.stream,
                    batch_size=args.batch_size, progress=args.stream > 0, engine=args.engine)
    res["command"] = args.command_line
    print(summary(res))
    if args.json is not None:
        write_json(res, args.json)
        print(f"wrote {args.json}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    from fehkit.batch import TABLE_SUFFIXES, run_catalog
    from fehkit.flags import has_flag, tally

    tables = [p for p in args.inputs if p.name.lower().endswith(TABLE_SUFFIXES)]
    if tables and len(args.inputs) > 1:
        raise UsageError(f"{tables[0]}: a table among {len(args.inputs)} inputs; expected one catalogue table or "
                         "spectrum files")
    if args.scheduler and args.workers:
        raise UsageError("--workers: sets the local cluster; not with --scheduler (the scheduler has its workers)")
    source = args.inputs[0] if tables else args.inputs
    run = run_catalog(source, args.model, args.scheduler, out=args.out, chunk_size=args.chunk_size,
                      params=args.params, overwrite=args.overwrite, progress=not args.quiet, workers=args.workers,
                      command=args.command_line)
    res, info = run.results, run.info
    _note_synthetic_model(info["model_synthetic"])
    errors = res[res["error"] != ""]
    for path, error in zip(errors["path"][:10], errors["error"][:10], strict=True):
        print(f"{path}: {error}", file=sys.stderr)
    if len(errors):
        more = " (listed above)" if len(errors) <= 10 else " (the first 10 listed above)"
        print(f"{len(errors)} file(s) could not be predicted{more}; their rows have flag no_usable_lines and error",
              file=sys.stderr)
    speed = info["spectra_per_s"]
    rate = f"; {speed:.1f} spectra/s on {info['workers']} workers" if speed else ""
    print(f"wrote {args.out}/results.parquet: {len(res)} spectra, {int(has_flag(res['flag'], 'upper_limit').sum())} "
          f"upper limits, {len(errors)} errors; {info['chunks_computed']} chunks computed, {info['chunks_reused']} "
          f"reused{rate}")
    args.final_lines = ["flags: " + ", ".join(f"{k} {n}" for k, n in tally(res["flag"]).items())]
    return 0


def _serve(args: argparse.Namespace) -> int:
    import json
    import socket

    from fehkit.models.persist import read_card
    from fehkit.threads import THREADS_ENV

    try:
        import uvicorn

        from fehkit.service import SETTINGS_ENV, ServiceSettings
    except ImportError as err:
        raise UsageError(f"fehkit serve needs the service extra ({err.name} is not installed); expected "
                         "pip install 'fehkit[service]'") from None
    settings = ServiceSettings(max_batch=int(args.max_batch), max_body_mb=float(args.max_body_mb),
                               cors_origins=list(args.cors_origin)).check()
    card = read_card(args.model)  # every file checked before a worker starts
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a clear error for a port in use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, int(args.port)))
        except OSError as err:
            raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror or err}); "
                             "expected a free port on an address of this machine") from None
    # one compute thread per worker does the work: the cores are shared among the workers, not oversubscribed
    os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // int(args.workers))))
    os.environ[SETTINGS_ENV] = json.dumps({"model": str(args.model.resolve()), "max_batch": settings.max_batch,
                                           "max_body_mb": settings.max_body_mb,
                                           "cors_origins": settings.cors_origins})
    _note_synthetic_model(card.get("synthetic"))
    key = "required (FEHKIT_API_KEY)" if os.environ.get("FEHKIT_API_KEY") else "none"
    print(f"fehkit serve: {args.model} on http://{args.host}:{args.port} with {args.workers} worker(s), "
          f"{os.environ[THREADS_ENV]} thread(s) each; API key {key}", file=sys.stderr)
    uvicorn.run("fehkit.service:app_from_environment", factory=True, host=args.host, port=int(args.port),
                workers=int(args.workers), log_level=args.log_level, server_header=False, proxy_headers=False,
                timeout_graceful_shutdown=10)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from fehkit.benchmark import TRUTH_OUT
    from fehkit.evaluate import evaluate
    from fehkit.files import atomic_output, check_output_file, jsonable
    from fehkit.models import FeHEnsemble
    from fehkit.training import predict_spectra, read_training_data

    if args.data.is_file():  # a labelled table: a folder of metrics, predictions and report
        return _evaluate_table(args)
    args.out = args.out or Path("metrics.json")
    check_output_file(args.out)
    if not args.data.is_dir():
        found = "is a file" if args.data.exists() else "not found"
        raise UsageError(f"--data {args.data}: {found}; expected a benchmark folder (truth.csv + apStar files, from "
                         "fehkit simulate): evaluate scores against its true [Fe/H]")
    truth_path = args.data / "truth.csv"
    if not truth_path.is_file():
        raise InputTableError(f"{args.data}: no truth.csv; expected a benchmark folder written by fehkit simulate")
    try:
        columns = pd.read_csv(truth_path, comment="#", nrows=0).columns
    except (OSError, ValueError) as err:
        raise InputTableError(f"{truth_path}: cannot read it ({' '.join(str(err).split())}); expected fehkit "
                              "simulate's truth.csv") from None
    missing = [c for c in (*TRUTH_OUT, "snr") if c not in columns]
    if missing:
        raise InputTableError(f"{truth_path}: no column(s) {missing}; expected the true parameters of fehkit "
                              "simulate's truth.csv (feh, teff, logg, vmic, snr)")
    ens = FeHEnsemble.load(args.model)
    batch, params, labels, synthetic = read_training_data(args.data, need_train=False)
    truth = pd.read_csv(truth_path, comment="#")
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
    metrics["command"] = args.command_line
    metrics["fehkit_version"] = __version__
    with atomic_output(args.out) as tmp:
        Path(tmp).write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
    e = metrics["models"].get("ensemble", {})
    print(f"{'SYNTHETIC ' if synthetic else ''}test stars {metrics['n_test']}, headline {metrics['n_headline']}: "
          f"MAE {e.get('mae', float('nan')):.4f}, bias {e.get('bias', float('nan')):+.4f}; wrote {args.out}")
    return 0


def _evaluate_table(args: argparse.Namespace) -> int:
    from fehkit.files import check_output_folder
    from fehkit.training import evaluate_table

    args.out = args.out or Path("fehkit-evaluate")
    check_output_folder(args.out, args.overwrite)
    res = evaluate_table(args.model, args.data)
    print(f"fehkit evaluate: model {args.model} on the labelled table {args.data}")
    _print_table_metrics(res)
    _write_table_results(args, res, "evaluate", "fehkit [Fe/H] on a labelled table")
    print(f"wrote {args.out}: metrics.json, predictions.csv, report.html")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fehkit.files import check_output_folder
    from fehkit.training import validate_table

    ensemble = _ensemble_json(args.ensemble)
    if not args.data.exists():
        raise UsageError(f"--data {args.data}: not found; expected a labelled CSV/Parquet table (file, feh_ref, "
                         "feh_ref_err, teff, logg, vmic) or a benchmark folder")
    check_output_folder(args.out, args.overwrite)
    res = validate_table(args.data, args.folds, seed=args.seed, ensemble=ensemble, progress=not args.quiet)
    print(f"fehkit validate: {args.folds}-fold cross-validation on {args.data} (stratified in feh_ref; every star "
          "predicted by an ensemble trained on the other folds)")
    _print_table_metrics(res)
    _write_table_results(args, res, "validate", f"fehkit [Fe/H], {args.folds}-fold cross-validation")
    print(f"wrote {args.out}: metrics.json, predictions.csv, report.html")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import time

    from fehkit.benchmark import run_benchmark, write_outputs
    from fehkit.files import check_output_folder, read_marker

    if args.n_stars < 50:
        raise UsageError(f"--n-stars {args.n_stars}: expected at least 50 (5-fold cross-validation needs stars)")
    # the demo may be run again into the folder it wrote before; any other existing folder needs --overwrite
    overwrite = args.overwrite or (read_marker(args.out) or {}).get("kind") == "demo"
    check_output_folder(args.out, overwrite)
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
    run = run_benchmark(args.n_stars, args.seed, ref_errors=errors, cannon=cannon, ablation=not args.no_ablation,
                        robustness=not args.no_robustness, progress=not args.quiet)
    write_outputs(run, args.out, overwrite=overwrite, command=args.command_line)
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
    if m.get("robustness"):
        print("robustness (test spectra with physics the analysis does not know; ensemble | classical):")
        for name, r in m["robustness"].items():
            if r.get("skipped"):
                print(f"  {name:16s} skipped: {r['skipped']}")
            elif r.get("mae") is not None:
                print(f"  {name:16s} n {r['n']:4d}  MAE {r['mae']:.4f} bias {r['bias']:+.4f} | "
                      f"MAE {r['mae_cog']:.4f} bias {r['bias_cog']:+.4f}")
    print(f"wrote {args.out}/metrics.json, predictions.csv, report.html, model/ in {time.perf_counter() - t0:.0f} s")
    return 0


def _ew(args: argparse.Namespace) -> int:
    from fehkit.ew import measure_ew
    from fehkit.examples import example_paths
    from fehkit.files import check_output_file
    from fehkit.io import read_apogee
    from fehkit.lines import load_linelist

    paths = list(args.files) + (example_paths() if args.examples else [])
    if not paths:
        raise UsageError("no input: expected FILE arguments or --examples")
    check_output_file(args.out)
    if args.backend == "torch":
        _check_device(args.device)
    lines = load_linelist(args.linelist) if args.linelist else None
    param_table = _load_params(args.params) if args.params else None
    batch = read_apogee(paths, kind=args.kind, rows=args.rows, on_error=args.on_error, progress=len(paths) >= 50)
    _report_skipped(args, batch)
    params = _match_params(param_table, args.params, batch.meta) if args.params else None
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


def _check_device(device: str | None) -> None:
    """Refuse a torch device that does not exist here, before any work."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r}: not a torch device; expected e.g. cpu, cuda or cuda:0") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise UsageError(f"--device {device}: this machine has {n} CUDA device(s); expected cpu"
                             + (f" or cuda:0..cuda:{n - 1}" if n else ""))


def _report_skipped(args: argparse.Namespace, batch: object) -> None:
    """Print each skipped file once (its warning is not repeated at the end)."""
    for _, reason in batch.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
        args.reported.add(" ".join(f"skipped {reason}".split()))


def _load_params(path: Path, extra: Sequence[str] = (), required: Sequence[str] = ()) -> pd.DataFrame:
    """Read and check a CSV of stellar parameters (before any spectrum is read).

    ``required`` columns must be there; every parameter column must hold numbers (empty cells allowed here).
    """
    try:
        table = pd.read_csv(path, comment="#")
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        raise InputTableError(f"{path}: cannot read the parameter CSV ({reason}); expected a CSV file with star_id "
                              "or file and teff, logg, vmic") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise InputTableError(f"{path}: no column {', '.join(missing)}; expected star_id or file, and "
                              f"{', '.join(required)}")
    wanted = [c for c in ("teff", "logg", "vmic", "feh") if c in table]
    if not wanted:
        raise InputTableError(f"{path}: no column teff, logg, vmic or feh; expected at least one of them")
    if "star_id" not in table and "file" not in table:
        raise InputTableError(f"{path}: expected a star_id or file column to match the spectra, found "
                              f"{list(table.columns)}")
    cols = wanted + [c for c in extra if c in table]
    for col in cols:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputTableError(f"{path}: column {col!r} holds {table[col].iloc[i]!r} (row {i + 1}); expected a "
                                  "number")
        table[col] = values.astype(float)
    from fehkit.features import check_param_values

    check_param_values(table, str(path))  # Teff, log g, vmic that no star has; two rows for one star
    return table[[c for c in ("star_id", "file") if c in table] + cols]


def _match_params(table: pd.DataFrame, path: Path, meta: pd.DataFrame, required: Sequence[str] = ()) -> pd.DataFrame:
    """One row of ``table`` per spectrum of ``meta``, matched on star_id, else on the file name."""
    cols = [c for c in table if c not in ("star_id", "file")]
    for key in ("star_id", "file"):
        if key in table and key in meta:
            def name(values: pd.Series, key: str = key) -> pd.Series:
                return values.astype(str) if key == "star_id" else values.astype(str).map(lambda f: Path(f).name)

            right = table.assign(**{key: name(table[key])})
            twice = right[key].duplicated(keep=False).to_numpy()
            if twice.any():
                first = right[key][twice].iloc[0]
                rows = ", ".join(str(i + 1) for i in np.flatnonzero(right[key].to_numpy() == first))
                raise InputTableError(f"{path}: {key} {first} has {int((right[key] == first).sum())} rows (rows "
                                      f"{rows}); expected one row per star")
            found = pd.DataFrame({key: name(meta[key])}).merge(right[[key, *cols]], on=key, how="left")[cols]
            for col in required:
                lacking = ~np.isfinite(found[col].to_numpy(float))
                if lacking.any():
                    i = int(np.flatnonzero(lacking)[0])
                    raise InputTableError(
                        f"{path}: no {col} for {int(lacking.sum())} of {len(found)} spectra (first: "
                        f"{meta[key].iloc[i]}, matched on {key}); expected a row with {', '.join(required)} for "
                        "every spectrum")
            return found
    raise InputTableError(f"{path}: expected a star_id or file column to match the spectra, found "
                          f"{list(table.columns)}")


def _simulate(args: argparse.Namespace) -> int:
    from fehkit.files import check_output_folder
    from fehkit.synth import make_benchmark, write_benchmark

    check_output_folder(args.out, args.overwrite)
    sim = make_benchmark(args.n, args.seed, split=args.split)
    write_benchmark(sim, args.out, overwrite=args.overwrite, html=not args.no_html,
                    about={"command": args.command_line, "seed": args.seed})
    t = sim.truth
    counts = t.split.value_counts().reindex(["train", "val", "test"], fill_value=0)
    print(f"SYNTHETIC benchmark: {len(t)} stars (seed {args.seed}); [Fe/H] {t.feh.min():.2f}..{t.feh.max():.2f} "
          f"({(t.feh < -2.5).mean():.0%} below -2.5); Teff {t.teff.min():.0f}..{t.teff.max():.0f} K; "
          f"S/N {t.snr.min():.0f}..{t.snr.max():.0f}; split " +
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    written = [f"{len(t)} apStar files", "truth.csv", "truth_ew.csv"] + ([] if args.no_html else ["simulate.html"])
    print(f"wrote to {args.out}: " + ", ".join(written))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fehkit.examples import example_paths
    from fehkit.files import atomic_folder, check_output_folder, write_table
    from fehkit.io import read_apogee
    from fehkit.lines import load_linelist

    paths = list(args.files) + (example_paths() if args.examples else [])
    if not paths:
        raise UsageError("no input: expected FILE arguments or --examples")
    check_output_folder(args.out, args.overwrite)
    batch = read_apogee(paths, kind=args.kind, rows=args.rows, on_error=args.on_error, progress=len(paths) >= 50)
    summary = batch.summary()
    print(_format_summary(summary))
    _report_skipped(args, batch)

    written = ["summary.csv"]
    with atomic_folder(args.out, kind="inspect", overwrite=args.overwrite,
                       about={"command": args.command_line}) as tmp:
        write_table(summary, tmp / "summary.csv")
        if not args.no_html:
            from fehkit.report.spectra import inspect_page

            inspect_page(batch, tmp / "inspect.html", lines=load_linelist(), max_plots=args.max_plots)
            written.append("inspect.html")
    print(f"wrote {args.out}: " + ", ".join(written))
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
        "override FEHKIT_CACHE and FEHKIT_DATA_URL. Exit status 1 when some files of 'fetch spectra --on-error "
        "skip' failed.",
    )
    what = p.add_subparsers(dest="fetch_command", metavar="WHAT", required=True)
    common = _ArgumentParser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache folder (default $FEHKIT_CACHE, else the OS cache folder)")
    common.add_argument("--mirror", help="mirror base url that replaces every file's host (default $FEHKIT_DATA_URL)")
    common.add_argument("--manifest", type=Path, help="another data manifest (default data_manifest.yaml)")
    common.add_argument("--retries", type=_COUNT, default=3, help="retries on temporary failures (default "
                        "%(default)s)")
    common.add_argument("--backoff", type=_NON_NEGATIVE, default=1.0,
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
    q.add_argument("--workers", type=_POSITIVE_COUNT, default=4, help="parallel downloads (default %(default)s)")
    q.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="fail, or report the failed files and keep the others (default %(default)s)")
    q.add_argument("--out", type=Path, help="write the table with url, path and fetch_status columns (CSV file)")
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
                raise UsageError(f"--field {item!r}: expected KEY=VALUE, e.g. telescope=apo25m")
            fields[key] = value
        path = fetch_product(args.name, manifest=manifest, cache=args.cache, mirror=args.mirror, progress=True,
                             **retry, **fields)
        print(path)
        return 0
    from fehkit.files import check_output_file, write_table

    if args.out:
        check_output_file(args.out)
    rows = fetch_spectra(args.table, kind=args.kind, cache=args.cache, mirror=args.mirror, manifest=manifest,
                         workers=args.workers, progress=not args.no_progress, on_error=args.on_error, **retry)
    status = rows["fetch_status"].str.split(":").str[0].value_counts()
    print(f"{len(rows)} rows: {status.get('downloaded', 0)} downloaded, {status.get('cached', 0)} already cached, "
          f"{status.get('failed', 0)} failed; cache {cache_dir(args.cache)}")
    for reason in rows.loc[rows["path"].isna(), "fetch_status"]:
        print(reason, file=sys.stderr)
    if args.out:
        write_table(rows, args.out)
        print(f"wrote {args.out}")
    return 0 if rows["path"].notna().all() else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
