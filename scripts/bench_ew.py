"""Benchmark the batched EW engine against the naive per-line scipy curve_fit loop (SYNTHETIC spectra).

Both measure the same continuum-normalized spectra of a synthetic EMP benchmark; the script times each (best of
``--repeat`` runs for the fast ones, one run of the slow loop) and compares their accuracy on the lines of known EW.
Speed is reported as a ratio against the curve_fit loop measured in the same run, so the numbers mean the same on
any machine. Usage::

    python scripts/bench_ew.py [--n 200] [--seed 7] [--json bench_ew.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from fehkit.baselines.curve_fit import curve_fit_baseline
from fehkit.bench import best_time
from fehkit.continuum import normalize
from fehkit.ew import kernels, measure_ew
from fehkit.synth import make_benchmark


def _accuracy(table, true_ew: np.ndarray) -> dict:
    usable = np.isfinite(table.ew_mA) & ~table.blend
    strong = usable & (true_ew >= 20)
    diff = table.ew_mA - true_ew
    pull = diff / table.ew_err_mA
    return {"n_strong": int(strong.sum()), "mae_strong_mA": float(np.mean(np.abs(diff[strong]))),
            "median_bias_strong_mA": float(np.median(diff[strong])),
            "pull_std_strong": float(np.std(pull[strong])),
            "n_usable": int(usable.sum()), "median_bias_all_mA": float(np.median(diff[usable]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="spectra (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--no-baseline", action="store_true", help="skip the slow curve_fit loop")
    args = ap.parse_args()

    sim = make_benchmark(args.n, seed=args.seed)
    t_norm, norm = best_time(lambda: normalize(sim.batch), args.repeat)
    batch = norm.batch
    res: dict = {"synthetic": True, "n_spectra": args.n, "n_lines": int(sim.ew.shape[1]),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "processor": platform.processor() or platform.machine()},
                 "normalize_s": t_norm, "timings_s": {}, "spectra_per_s": {}, "accuracy": {}}

    def numpy_reference() -> object:
        """The numpy path itself, without the compiled kernels numba gives the numpy backend."""
        enabled, kernels.ENABLED = kernels.ENABLED, False
        try:
            return measure_ew(batch, mc_draws=0)
        finally:
            kernels.ENABLED = enabled

    runs = {"numpy": lambda: measure_ew(batch, mc_draws=0),
            "numpy_mc100": lambda: measure_ew(batch, mc_draws=100)}
    if kernels.ENABLED:
        runs["numpy_no_numba"] = numpy_reference
        measure_ew(batch.select(np.arange(min(5, args.n))), mc_draws=0)                  # compile or load the kernels
    try:
        import torch

        runs["torch_cpu"] = lambda: measure_ew(batch, backend="torch", device="cpu", mc_draws=0)
        if torch.cuda.is_available():
            runs["torch_cuda"] = lambda: measure_ew(batch, backend="torch", device="cuda", mc_draws=0)
            runs["torch_cuda_mc100"] = lambda: measure_ew(batch, backend="torch", device="cuda", mc_draws=100)
        measure_ew(batch.select(np.arange(min(5, args.n))), backend="torch", mc_draws=0)   # warm up
    except ImportError:
        pass
    tables = {}
    for name, fn in runs.items():
        t, tables[name] = best_time(fn, args.repeat if "mc" not in name else 1)
        res["timings_s"][name] = t
        res["spectra_per_s"][name] = args.n / t
        res["accuracy"][name] = _accuracy(tables[name], sim.ew)
    if "torch_cpu" in tables:
        d = np.abs(tables["torch_cpu"].ew_mA - tables["numpy"].ew_mA)
        res["torch_vs_numpy_max_abs_mA"] = float(np.nanmax(d))
    if "numpy_no_numba" in tables:
        d = np.abs(tables["numpy_no_numba"].ew_mA - tables["numpy"].ew_mA)
        res["numba_vs_numpy_max_abs_mA"] = float(np.nanmax(d))
    res["mc_vs_jacobian"] = tables["numpy_mc100"].error_agreement()

    if not args.no_baseline:
        t0 = time.perf_counter()
        base = curve_fit_baseline(batch)
        t = time.perf_counter() - t0
        res["timings_s"]["curve_fit_loop"] = t
        res["spectra_per_s"]["curve_fit_loop"] = args.n / t
        res["accuracy"]["curve_fit_loop"] = _accuracy(base, sim.ew)
        # the same lines for both: strong, unflagged by the engine, with a finite EW from both
        common = (sim.ew >= 20) & np.isfinite(base.ew_mA) & np.isfinite(tables["numpy"].ew_mA) & ~tables["numpy"].blend
        res["common_strong_lines"] = {
            "n": int(common.sum()),
            "mae_engine_mA": float(np.mean(np.abs(tables["numpy"].ew_mA - sim.ew)[common])),
            "mae_curve_fit_mA": float(np.mean(np.abs(base.ew_mA - sim.ew)[common])),
            "median_abs_engine_minus_curve_fit_mA": float(
                np.median(np.abs(tables["numpy"].ew_mA - base.ew_mA)[common])),
        }
        res["speedup_vs_curve_fit"] = {k: t / v for k, v in res["timings_s"].items() if k != "curve_fit_loop"}

    print(f"SYNTHETIC benchmark: {args.n} spectra x {res['n_lines']} Fe I lines; normalize {t_norm:.2f} s")
    print(f"{'method':<18} {'time (s)':>9} {'spectra/s':>10} {'speed-up':>9} {'MAE EW>=20 (mA)':>16} "
          f"{'bias (mA)':>10} {'pull std':>9}")
    for name, t in res["timings_s"].items():
        acc = res["accuracy"][name]
        up = res.get("speedup_vs_curve_fit", {}).get(name, 1.0 if name == "curve_fit_loop" else None)
        up_text = "-" if up is None else f"{up:.1f}x"  # "-": no baseline was run
        print(f"{name:<18} {t:>9.3f} {args.n / t:>10.1f} {up_text:>9} {acc['mae_strong_mA']:>16.2f} "
              f"{acc['median_bias_strong_mA']:>+10.2f} {acc['pull_std_strong']:>9.2f}")
    if "common_strong_lines" in res:
        c = res["common_strong_lines"]
        print(f"same {c['n']} lines (true EW >= 20 mA, unflagged): MAE engine {c['mae_engine_mA']:.2f} mA, "
              f"curve_fit {c['mae_curve_fit_mA']:.2f} mA; median |engine - curve_fit| "
              f"{c['median_abs_engine_minus_curve_fit_mA']:.2f} mA")
    if "torch_vs_numpy_max_abs_mA" in res:
        print(f"torch vs numpy: max |dEW| {res['torch_vs_numpy_max_abs_mA']:.4f} mA")
    if "numba_vs_numpy_max_abs_mA" in res:
        print(f"numpy with numba kernels vs without: max |dEW| {res['numba_vs_numpy_max_abs_mA']:.4f} mA")
    print(f"Monte Carlo / Jacobian error: median ratio {res['mc_vs_jacobian']['median_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
