"""Throughput of each stage of the [Fe/H] pipeline on SYNTHETIC spectra: spectra per second.

The stages are the ones ``fehkit predict`` runs: continuum normalization (:func:`fehkit.continuum.normalize`), EW
measurement (:func:`fehkit.ew.measure_ew`, no Monte Carlo draws), the features with the classical method
(:func:`fehkit.features.build_features`: the joint likelihood, its parameter error, the per-line median and the
second physics) and, with ``--model``, the ensemble's prediction. Each stage is timed on the same
``make_benchmark(n, seed)`` spectra (reference stellar parameters), best of ``--repeat`` runs, wall clock; on a
shared machine compare numbers measured in the same run only. Usage::

    python scripts/bench_stages.py [--n 400] [--seed 5] [--repeat 3] [--model DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from fehkit.continuum import normalize
from fehkit.ew import measure_ew
from fehkit.features import build_features
from fehkit.lines import load_linelist
from fehkit.physics.cog import CurveOfGrowth
from fehkit.synth import make_benchmark
from fehkit.training import predict_features, reference_params


def best_time(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Return the shortest wall-clock time of ``repeat`` calls (after one warm-up call) and the last result."""
    out = run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="synthetic spectra (default 400)")
    ap.add_argument("--seed", type=int, default=5, help="benchmark seed (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per stage; the best counts (default 3)")
    ap.add_argument("--model", help="a saved model directory: time its prediction too")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    load_linelist(), CurveOfGrowth.load(), CurveOfGrowth.load("sme")  # loading is not part of any stage
    sim = make_benchmark(args.n, seed=args.seed)
    params = reference_params(sim.truth)
    snr = sim.batch.meta["snr"].to_numpy(float)

    seconds: dict[str, float] = {}
    seconds["normalize"], norm = best_time(lambda: normalize(sim.batch).batch, args.repeat)
    seconds["measure_ew"], ew = best_time(
        lambda: measure_ew(norm, params=params[["teff", "logg", "vmic"]], mc_draws=0), args.repeat)
    seconds["build_features"], feats = best_time(lambda: build_features(ew, params, snr=snr), args.repeat)
    seconds["build_features (no feh_sys)"], _ = best_time(
        lambda: build_features(ew, params, snr=snr, systematic=False), args.repeat)
    if args.model:
        from fehkit.models.ensemble import FeHEnsemble

        ens = FeHEnsemble.load(args.model)
        seconds["predict"], _ = best_time(lambda: predict_features(ens, feats), args.repeat)
    main_stages = [k for k in seconds if "(" not in k]
    seconds["whole path"] = sum(seconds[k] for k in main_stages)

    print(f"{args.n} synthetic spectra (seed {args.seed}), best of {args.repeat}, {os.cpu_count()} CPUs")
    for stage, s in seconds.items():
        print(f"  {stage:28s} {args.n / s:9.0f} spectra/s   {s * 1e3:8.1f} ms")
    result = {"n": args.n, "seed": args.seed, "repeat": args.repeat,
              "spectra_per_s": {k: args.n / s for k, s in seconds.items()}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
