"""The ``fehkit`` command.

``fehkit simulate`` writes a synthetic benchmark (apStar-format files, truth.csv) made by :mod:`fehkit.synth`.

``fehkit inspect`` reads APOGEE spectrum files (or the packaged real examples), prints one line per spectrum
(id, S/N, visits, wavelength range, masked fraction, chip gaps) and writes ``summary.csv`` and an HTML page with
a plot of each spectrum. Errors a user can cause are printed as one line naming the file and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

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
    return parser


def _inspect(args: argparse.Namespace) -> int:
    from fehkit.examples import example_paths
    from fehkit.io import atomic_output, read_apogee
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
        from fehkit.report import inspect_page

        written.append(inspect_page(batch, args.out / "inspect.html", lines=load_linelist(), max_plots=args.max_plots))
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


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
        from fehkit.report import realism_page

        written.append(realism_page(sim, args.out / "simulate.html"))
    print(f"wrote to {args.out}: " + ", ".join(str(w) for w in written))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fehkit.examples import example_paths
    from fehkit.io import atomic_output, read_apogee
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
        from fehkit.report import inspect_page

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
