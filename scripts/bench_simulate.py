"""Benchmark fehkit.synth: spectra per second of the batched simulator, against a one-star-at-a-time loop.

    python scripts/bench_simulate.py [--n 1500] [--json bench-simulate.json]

The target is >= 500 spectra/s on a 2-core machine, so that the 1,500-star default benchmark builds in
seconds. The baseline in the same run calls simulate() once per star (no batching), on a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from fehkit.physics import BackgroundLibrary, CurveOfGrowth
from fehkit.synth import draw_population, make_benchmark, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--n-loop", type=int, default=100, help="stars for the one-at-a-time baseline")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cog, lib = CurveOfGrowth.load(), BackgroundLibrary.load()  # loading is not part of the timing
    simulate({"teff": [4800.0], "logg": [1.5], "feh": [-2.0], "vmic": [1.8]}, seed=0, cog=cog, library=lib)
    pop = draw_population(args.n, np.random.default_rng(0)).drop(columns="population")

    times = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        simulate(pop, seed=r, cog=cog, library=lib)
        times.append(time.perf_counter() - t0)
    batched = args.n / min(times)

    t0 = time.perf_counter()
    for i in range(args.n_loop):
        simulate(pop.iloc[[i]], seed=i, cog=cog, library=lib)
    loop = args.n_loop / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    make_benchmark(args.n, seed=0)
    bench_s = time.perf_counter() - t0

    result = {
        "what": "fehkit.synth.simulate, SYNTHETIC spectra (8575 px, 30 Fe I lines, background, masks, noise)",
        "n": args.n, "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "batched_spectra_per_s": round(batched, 1),
        "one_at_a_time_spectra_per_s": round(loop, 1),
        "speedup": round(batched / loop, 1),
        "make_benchmark_seconds": round(bench_s, 2),
        "target_spectra_per_s": 500,
        "meets_target": bool(batched >= 500),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
