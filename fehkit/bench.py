"""``fehkit bench``: how fast fehkit runs here, stage by stage and end to end, against baselines in the same run.

Everything is measured on the same SYNTHETIC spectra (:func:`fehkit.synth.make_benchmark`), so the numbers are
about speed, not accuracy on real stars. One run gives:

* spectra per second of each stage -- ``normalize`` (continuum), ``ew`` (the batched Voigt fits), ``features``
  (the feature table with the classical joint-likelihood method), ``predict`` (the three members, fusion, errors
  and flags) -- and of :func:`fehkit.infer.infer` end to end, in memory;
* files per second from apStar files on disk (written to a temporary folder first, read with threads);
* the baselines on (a subset of) the same spectra: the naive per-line ``scipy.optimize.curve_fit`` loop
  (:func:`fehkit.baselines.curve_fit.curve_fit_baseline`) with its EW accuracy beside the engine's, and The
  Cannon's test step (trained on a separate synthetic set) when the ``thecannon`` package is installed;
* the EW agreement between the engine on the chosen device and the numpy engine (the reference implementation),
  and the process's peak resident memory.

Speed is a property of the machine: compare ratios (``speedup_vs_baseline``), which hold from one machine to the
next far better than spectra per second do.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fehkit.errors import FehkitWarning

__all__ = ["best_time", "run_bench"]


#: Timed runs of each stage and of the whole path; the best counts.
REPEAT = 2


def best_time(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Return the best wall time of ``repeat`` calls of ``fn`` and the last result."""
    best, out = np.inf, None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB; ``ru_maxrss`` is kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _quick_model(seed: int) -> Any:
    """Train a model with the default settings on a 1,500-star SYNTHETIC benchmark (as ``fehkit demo`` does)."""
    from fehkit.models.ensemble import FeHEnsemble
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params, spectra_features

    sim = make_benchmark(1500, seed=seed)
    truth = sim.truth
    feats = spectra_features(sim.batch, reference_params(truth))
    return FeHEnsemble(label_error=0.05, seed=seed).fit(feats, truth["feh_ref"].to_numpy(float))


def run_bench(n: int = 2000, *, device: str = "auto", model: Any = None, seed: int = 7, baseline_n: int = 40,
              cannon: bool = True, files: bool = True, batch_size: int | None = None,
              stream: int = 0, progress: bool = False, engine: str = "auto") -> dict:
    """Measure fehkit's speed on ``n`` synthetic spectra; return the numbers (the ``--json`` content).

    Parameters
    ----------
    n : int
        Spectra to run through every stage.
    device : str
        Where :func:`fehkit.infer.infer` runs (``"auto"``, ``"cpu"``, ``"cuda"``).
    model : FeHEnsemble or path, optional
        The model to predict with; default a model trained here with the default settings (takes a minute).
    seed : int
        Seeds the synthetic spectra.
    baseline_n : int
        Spectra (of the same ``n``) the slow baselines run on.
    cannon, files : bool
        Also time The Cannon's test step / reading apStar files from disk.
    batch_size : int, optional
        Spectra per chunk of :func:`~fehkit.infer.infer` (default: all ``n`` in one chunk; 2,048 when streaming).
    stream : int
        Also stream this many spectra through :func:`~fehkit.infer.infer_chunks`, simulated a chunk at a time
        (never all in memory): ``stream_spectra_per_s`` (inference only) and the peak memory with it.
    engine : {"auto", "torch", "numpy"}
        The engine of :func:`~fehkit.infer.infer` (torch on a GPU, NumPy and the compiled kernels on the CPU by
        default); every stage is timed with it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)  # grid-edge notes of simulated stars are not the subject here
        return _run(n, device=device, model=model, seed=seed, baseline_n=baseline_n, cannon=cannon, files=files,
                    batch_size=batch_size, stream=stream, progress=progress, engine=engine)


def _run(n: int, *, device: str, model: Any, seed: int, baseline_n: int, cannon: bool, files: bool,
         batch_size: int | None, stream: int, progress: bool, engine: str) -> dict:
    """:func:`run_bench` itself (which holds the warning filter around it)."""
    from fehkit.baselines.curve_fit import curve_fit_baseline
    from fehkit.continuum import normalize
    from fehkit.ew import kernels as ew_kernels
    from fehkit.ew import measure_ew
    from fehkit.ew.solver import ArrayBackend
    from fehkit.features import build_features
    from fehkit.flags import is_ok
    from fehkit.infer import _Runner, infer, resolve_device
    from fehkit.io import write_apstar
    from fehkit.models.ensemble import FeHEnsemble
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params

    dev = resolve_device(device)
    t_model = time.perf_counter()
    ens = _quick_model(seed + 1) if model is None else (
        model if isinstance(model, FeHEnsemble) else FeHEnsemble.load(model, device=str(dev)))
    t_model = time.perf_counter() - t_model
    sim = make_benchmark(n, seed=seed)
    params = reference_params(sim.truth)
    runner = _Runner(ens, str(dev), None, "auto", engine)  # the members and engine infer(trees="auto") uses here
    members, backend = runner.members, runner.ew_backend
    on = str(dev) if backend == "torch" else None  # the torch engine: every stage as tensor operations on dev
    snr = sim.batch.meta["snr"].to_numpy(float)

    # warm up (imports, torch kernels, caches) on a few spectra
    infer(sim.batch.select(np.arange(min(n, 8))), ens, params.iloc[:min(n, 8)], device=str(dev), progress=False,
          engine=engine)

    # best of two runs: the first call of a compiled kernel on a new array size or layout can still load code
    stages: dict[str, dict] = {}
    t, norm = best_time(lambda: normalize(sim.batch, device=on).batch, REPEAT)
    stages["normalize"] = {"seconds": t}

    def ew_stage() -> Any:
        out = measure_ew(norm, params=params[["teff", "logg", "vmic"]], backend=backend, device=str(dev), mc_draws=0,
                         float64=runner.float64)
        _sync(dev)
        return out

    t, ew = best_time(ew_stage, REPEAT)
    stages["ew"] = {"seconds": t}
    t, feats = best_time(lambda: build_features(ew, params, snr=snr, device=on), REPEAT)
    stages["features"] = {"seconds": t}
    t, _ = best_time(lambda: ens.predict(feats, member_predictor=members), REPEAT)
    stages["predict"] = {"seconds": t}
    for s in stages.values():
        s["spectra_per_s"] = n / s["seconds"]

    t_e2e, pred = best_time(lambda: infer(sim.batch, ens, params, device=str(dev), batch_size=batch_size or n,
                                       progress=progress, engine=engine), REPEAT)
    res: dict[str, Any] = {
        "synthetic": True,
        "device": str(dev),
        "engine": "torch" if on else "numpy",
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor()
                                                                                     or platform.machine()),
        "n": n,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "model_seconds": t_model if model is None else None,
        "stages": stages,
        "end_to_end_seconds": t_e2e,
        "end_to_end_spectra_per_s": n / t_e2e,
        "ms_per_spectrum": 1e3 * t_e2e / n,
        "n_flag_ok": int(is_ok(pred["flag"]).sum()),
    }

    # the EW engine that ran (torch on a GPU, the compiled kernels on a CPU with numba) against the numpy engine in
    # float64 (the reference: what the compiled kernels compute), and against the default numpy engine, whose first
    # fits run in float32
    compiled = backend == "numpy" and ew_kernels.ENABLED
    res["ew_engine"] = "compiled kernels (numba, float64)" if compiled else f"{backend} on {dev}"
    res["ew_reference"] = "numpy engine, float64 fits"
    saved = ew_kernels.ENABLED, ArrayBackend.float64
    try:
        ew_kernels.ENABLED = False
        for key, double in (("ew_agreement_mA", True), ("ew_agreement_float32_numpy_mA", False)):
            ArrayBackend.float64 = double
            ref = measure_ew(norm, params=params[["teff", "logg", "vmic"]], mc_draws=0)
            diff = np.abs(ew.ew_mA - ref.ew_mA)
            res[key] = float(np.nanmax(diff))
            res[key.replace("_mA", "_p99_mA")] = float(np.nanpercentile(diff, 99))
    finally:
        ew_kernels.ENABLED, ArrayBackend.float64 = saved

    # the naive per-line fit on the first baseline_n spectra, and the engine on the same ones
    m = max(1, min(n, int(baseline_n)))
    sub = norm.select(np.arange(m))
    t_base, base = best_time(lambda: curve_fit_baseline(sub))
    res["baseline"] = "scipy.optimize.curve_fit, one fit per line and spectrum (Python loops)"
    res["baseline_n"] = m
    res["baseline_spectra_per_s"] = m / t_base
    res["speedup_vs_baseline"] = stages["ew"]["spectra_per_s"] / res["baseline_spectra_per_s"]
    true_ew = sim.ew[:m]
    measured = ew.ew_mA[:m]
    strong = (true_ew >= 20) & np.isfinite(base.ew_mA) & np.isfinite(measured) & ~ew.blend[:m]
    res["ew_accuracy_strong_lines"] = {
        "n_lines": int(strong.sum()),
        "mae_engine_mA": float(np.mean(np.abs(measured - true_ew)[strong])) if strong.any() else None,
        "mae_baseline_mA": float(np.mean(np.abs(base.ew_mA - true_ew)[strong])) if strong.any() else None,
    }

    if cannon:
        res.update(_cannon_speed(norm, seed))
        if res.get("cannon_spectra_per_s"):
            res["speedup_vs_cannon"] = res["end_to_end_spectra_per_s"] / res["cannon_spectra_per_s"]

    if files:
        with tempfile.TemporaryDirectory(prefix="fehkit-bench-") as tmp:
            t_write = time.perf_counter()
            paths = write_apstar(sim.batch, tmp)
            t_write = time.perf_counter() - t_write
            t_files, _ = best_time(lambda: infer(paths, ens, params, device=str(dev), engine=engine,
                                                 batch_size=batch_size or 250, progress=progress))
            from fehkit.io import read_apogee

            t_read, _ = best_time(lambda: read_apogee(paths))
        res["files_per_s"] = n / t_files
        res["files_read_only_per_s"] = n / t_read
        res["files_write_seconds"] = t_write
    if stream:
        res.update(_stream(ens, dev, int(stream), batch_size or 2048, seed, progress, engine))
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


def _stream(ens: Any, dev: torch.device, total: int, chunk: int, seed: int, progress: bool, engine: str) -> dict:
    """Stream ``total`` simulated spectra through infer_chunks, a chunk at a time; time the inference alone."""
    from fehkit.infer import infer_chunks
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params

    spent = {"simulate": 0.0}

    def chunks() -> Any:
        for k, start in enumerate(range(0, total, chunk)):
            t0 = time.perf_counter()
            sim = make_benchmark(min(chunk, total - start), seed=seed + 1000 + k)
            spent["simulate"] += time.perf_counter() - t0
            yield sim.batch, reference_params(sim.truth)

    rows, t0 = 0, time.perf_counter()
    for table in infer_chunks(chunks(), ens, device=str(dev), progress=progress, total=total, engine=engine):
        rows += len(table)
    wall = time.perf_counter() - t0
    return {"stream_n": rows, "stream_chunk": chunk, "stream_seconds": wall - spent["simulate"],
            "stream_simulate_seconds": spent["simulate"],
            "stream_spectra_per_s": rows / max(wall - spent["simulate"], 1e-9),
            "stream_peak_rss_mb": _peak_rss_mb()}


def _cannon_speed(norm: Any, seed: int) -> dict:
    """Time The Cannon's test step on the same normalized spectra (trained on 300 other synthetic stars)."""
    try:
        from fehkit.baselines import fit_cannon, predict_cannon
        from fehkit.continuum import normalize
        from fehkit.synth import make_benchmark

        train = make_benchmark(300, seed=seed + 2)
        labels = train.truth[["teff", "logg", "feh"]].reset_index(drop=True)
        peer = fit_cannon(normalize(train.batch).batch, labels)
    except ImportError as err:
        return {"cannon_spectra_per_s": None, "cannon_note": f"not measured: {err}"}
    t, _ = best_time(lambda: predict_cannon(peer, norm))
    return {"cannon_spectra_per_s": norm.n_spectra / t}


def summary(res: dict) -> str:
    """Return the bench result as a few lines of text."""
    lines = [f"SYNTHETIC spectra: {res['n']} on {res['device']} ({res['device_name']}, {res['cpus']} CPUs), "
             f"{res.get('engine', 'numpy')} engine"]
    for name, s in res["stages"].items():
        lines.append(f"  {name:<10} {s['spectra_per_s']:>10.0f} spectra/s")
    lines.append(f"  {'end to end':<10} {res['end_to_end_spectra_per_s']:>10.0f} spectra/s "
                 f"({res['ms_per_spectrum']:.2f} ms a spectrum)")
    if "files_per_s" in res:
        lines.append(f"  {'files':<10} {res['files_per_s']:>10.0f} files/s (reading alone "
                     f"{res['files_read_only_per_s']:.0f}/s)")
    acc = res["ew_accuracy_strong_lines"]
    lines.append(f"  EW fits {res['speedup_vs_baseline']:.0f}x the per-line curve_fit loop "
                 f"({res['baseline_spectra_per_s']:.1f} spectra/s); MAE on strong lines engine "
                 f"{acc['mae_engine_mA']:.2f} mA, curve_fit {acc['mae_baseline_mA']:.2f} mA")
    if res.get("cannon_spectra_per_s"):
        lines.append(f"  The Cannon's test step {res['cannon_spectra_per_s']:.0f} spectra/s: fehkit end to end is "
                     f"{res['speedup_vs_cannon']:.1f}x that")
    if "stream_n" in res:
        lines.append(f"  streamed {res['stream_n']} spectra in chunks of {res['stream_chunk']}: "
                     f"{res['stream_spectra_per_s']:.0f} spectra/s (simulating them took another "
                     f"{res['stream_simulate_seconds']:.0f} s)")
    lines.append(f"  peak memory {res['peak_rss_mb']:.0f} MB; EW engine vs the float64 numpy engine "
                 f"{res['ew_agreement_mA']:.2g} mA")
    lines.append(f"  EW engine vs the float32 numpy engine: {res['ew_agreement_float32_numpy_mA']:.4f} mA at most, "
                 f"{res['ew_agreement_float32_numpy_p99_mA']:.4f} mA at the 99th percentile")
    return "\n".join(lines)


def write_json(res: dict, path: str | os.PathLike[str]) -> Path:
    """Write the result as JSON (temporary file, then rename)."""
    import json

    from fehkit.files import atomic_output, jsonable

    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(jsonable(res), indent=2) + "\n")
    return Path(path)
