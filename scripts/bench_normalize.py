"""Time fehkit.normalize call after call on the same SYNTHETIC spectra, with the CPU time split into user and system.

Shows where `fehkit bench`'s normalize figure moves from run to run: the user time of a call stays the same, while
the system time (the operating system handing the process fresh memory pages for the call's output arrays) comes
and goes.

    python scripts/bench_normalize.py --n 2000 --repeat 10
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fehkit.continuum import normalize
from fehkit.synth import make_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="spectra (default 2000)")
    ap.add_argument("--repeat", type=int, default=10, help="calls to time (default 10)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    batch = make_benchmark(args.n, args.seed).batch
    normalize(batch.select(np.arange(min(args.n, 20))))  # compile / load the kernels
    print(f"SYNTHETIC spectra: {args.n}, {os.cpu_count()} CPUs, FEHKIT_THREADS={os.environ.get('FEHKIT_THREADS', '')}")
    print("call  spectra/s  user s  system s")
    for i in range(args.repeat):
        t0, c0 = time.perf_counter(), os.times()
        normalize(batch)
        t1, c1 = time.perf_counter(), os.times()
        print(f"{i:4d}  {args.n / (t1 - t0):9.0f}  {c1.user - c0.user:6.2f}  {c1.system - c0.system:8.2f}")


if __name__ == "__main__":
    main()
