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
import pandas as pd

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.continuum import normalize
from fehkit.ew import EWTable, measure_ew, window_pixels
from fehkit.ew.measure import expected_widths
from fehkit.ew.table import FLAG_FAILED as _FAILED
from fehkit.ew.table import FLAG_MASKED as _MASKED
from fehkit.ew.table import FLAG_OK as _OK
from fehkit.ew.table import FLAG_UPPER as _UPPER
from fehkit.lines import WINDOW_HALF_WIDTH_PIX, load_linelist
from fehkit.physics.broadening import R_LSF
from fehkit.spectra import SpectrumBatch
from fehkit.synth import make_benchmark


def curve_fit_baseline(
    batch: SpectrumBatch,
    lines: pd.DataFrame | None = None,
    *,
    rv_tolerance: float = 10.0,
    detection_sigma: float = 3.0,
    resolution: float = R_LSF,
    half_width: int = WINDOW_HALF_WIDTH_PIX,
) -> EWTable:
    """Measure EWs the naive way: one bounded ``scipy.optimize.curve_fit`` per line, in a Python loop.

    The same Voigt model on a local continuum level (free c0, EW, centre within ``rv_tolerance``, Gaussian
    width within 0.6-2.5x the expected one; damping tied), with ``scipy.special.voigt_profile`` and errors
    from the covariance curve_fit returns (``absolute_sigma=True``). No shared line shape, no outlier clipping,
    no blend tests: flags are only masked, fit_failed, upper_limit and ok. It is here to be compared with
    :func:`fehkit.ew.measure_ew`, not to be used.
    """
    from scipy.optimize import curve_fit
    from scipy.special import voigt_profile

    lines = (load_linelist() if lines is None else lines).reset_index(drop=True)
    if batch.flux_unit != "":
        batch = normalize(batch, lines=lines).batch
    n, nl = batch.n_spectra, len(lines)
    idx, in_window = window_pixels(batch.wave, lines, half_width)
    lam0 = lines["wave_vac"].to_numpy(float)
    sig_exp, gam = expected_widths(lam0, None, n, resolution)
    out = {k: np.full((n, nl), np.nan, np.float32) for k in ("ew_mA", "ew_err_mA", "rv_kms", "sigma_A", "continuum",
                                                             "chi2_red", "ew_err_fit_mA")}
    code = np.full((n, nl), _MASKED, np.uint8)
    n_pix = np.zeros((n, nl), np.int16)
    for i in range(n):
        for k in range(nl):
            sel = idx[k][in_window[k] & ~batch.mask[i, idx[k]]]
            n_pix[i, k] = sel.size
            if sel.size < 12:
                continue
            x = batch.wave[sel] - lam0[k]
            y = batch.flux[i, sel].astype(float)
            err = 1.0 / np.sqrt(batch.ivar[i, sel].astype(float))
            g, s0, dl_max = float(gam[i, k]), float(sig_exp[i, k]), lam0[k] * rv_tolerance / SPEED_OF_LIGHT_KMS

            def model(x: np.ndarray, c0: float, ew: float, dl: float, sig: float, g: float = g) -> np.ndarray:
                return c0 * (1.0 - ew * voigt_profile(x - dl, sig, g))

            try:
                p, cov = curve_fit(model, x, y, p0=(1.0, 0.02, 0.0, s0), sigma=err, absolute_sigma=True,
                                   bounds=([0.05, -1.0, -dl_max, 0.6 * s0], [20.0, 3.0, dl_max, 2.5 * s0]))
            except (RuntimeError, ValueError):
                code[i, k] = _FAILED
                continue
            e = float(np.sqrt(cov[1, 1])) if np.isfinite(cov[1, 1]) and cov[1, 1] > 0 else np.nan
            out["ew_mA"][i, k], out["ew_err_mA"][i, k], out["ew_err_fit_mA"][i, k] = p[1] * 1e3, e * 1e3, e * 1e3
            out["rv_kms"][i, k] = p[2] / lam0[k] * SPEED_OF_LIGHT_KMS
            out["sigma_A"][i, k], out["continuum"][i, k] = p[3], p[0]
            out["chi2_red"][i, k] = np.sum(((y - model(x, *p)) / err) ** 2) / max(sel.size - 4, 1)
            code[i, k] = _FAILED if not np.isfinite(e) else (_OK if p[1] >= detection_sigma * e else _UPPER)
    failed = code >= _FAILED
    for key in ("ew_mA", "ew_err_mA", "ew_err_fit_mA"):
        out[key][failed] = np.nan
    star_id = (batch.meta["star_id"].astype(str).to_numpy() if "star_id" in batch.meta
               else np.array([f"spectrum-{i}" for i in range(n)]))
    return EWTable(
        star_id=star_id, lines=lines, ew_err_mc_mA=np.full((n, nl), np.nan, np.float32),
        ew_upper_mA=np.maximum(out["ew_mA"], 0) + detection_sigma * out["ew_err_mA"], flag_code=code,
        reason_bits=np.where(code == _MASKED, 1, np.where(code == _FAILED, 2, 0)).astype(np.uint16),
        blend=np.zeros((n, nl), bool), gamma_A=gam, n_pix=n_pix, free_shape=np.ones((n, nl), bool),
        shared_rv_kms=np.zeros(n, np.float32), width_scale=np.ones(n, np.float32), n_shape_lines=np.zeros(n, int),
        detection_sigma=detection_sigma, info={"backend": "scipy curve_fit loop"}, **out)


def _best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


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
    t_norm, norm = _best_time(lambda: normalize(sim.batch), args.repeat)
    batch = norm.batch
    res: dict = {"synthetic": True, "n_spectra": args.n, "n_lines": int(sim.ew.shape[1]),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "processor": platform.processor() or platform.machine()},
                 "normalize_s": t_norm, "timings_s": {}, "spectra_per_s": {}, "accuracy": {}}

    runs = {"numpy": lambda: measure_ew(batch, mc_draws=0),
            "numpy_mc100": lambda: measure_ew(batch, mc_draws=100)}
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
        t, tables[name] = _best_time(fn, args.repeat if "mc" not in name else 1)
        res["timings_s"][name] = t
        res["spectra_per_s"][name] = args.n / t
        res["accuracy"][name] = _accuracy(tables[name], sim.ew)
    if "torch_cpu" in tables:
        d = np.abs(tables["torch_cpu"].ew_mA - tables["numpy"].ew_mA)
        res["torch_vs_numpy_max_abs_mA"] = float(np.nanmax(d))
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
        up = res.get("speedup_vs_curve_fit", {}).get(name, 1.0 if name == "curve_fit_loop" else float("nan"))
        print(f"{name:<18} {t:>9.3f} {args.n / t:>10.1f} {up:>8.1f}x {acc['mae_strong_mA']:>16.2f} "
              f"{acc['median_bias_strong_mA']:>+10.2f} {acc['pull_std_strong']:>9.2f}")
    if "common_strong_lines" in res:
        c = res["common_strong_lines"]
        print(f"same {c['n']} lines (true EW >= 20 mA, unflagged): MAE engine {c['mae_engine_mA']:.2f} mA, "
              f"curve_fit {c['mae_curve_fit_mA']:.2f} mA; median |engine - curve_fit| "
              f"{c['median_abs_engine_minus_curve_fit_mA']:.2f} mA")
    if "torch_vs_numpy_max_abs_mA" in res:
        print(f"torch vs numpy: max |dEW| {res['torch_vs_numpy_max_abs_mA']:.4f} mA")
    print(f"Monte Carlo / Jacobian error: median ratio {res['mc_vs_jacobian']['median_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
