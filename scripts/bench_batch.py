"""Throughput of fehkit.batch.run_catalog: spectra per second, in all and per worker, on N SYNTHETIC apStar files.

Simulates a few hundred EMP stars, writes them as apStar files once and links N files to them (each under its own
star id), trains a small model (or uses --model), then runs the catalogue on fehkit's LocalCluster
(fehkit.batch.local_cluster: --workers processes, one thread each) and prints JSON: wall time, spectra/s,
spectra/s per worker (spectra over the summed task time), the model-loading time per worker, and the same chunk
function's speed in this process without dask. Prints no judgement; compare runs made on the same machine.

    python scripts/bench_batch.py --n 2000 --workers 2 --chunk-size 100 --json bench-batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_catalog(root: Path, n: int, n_base: int, seed: int):
    """Simulate n_base stars, write them once, link n files to them; return (catalog.csv, simulation)."""
    from fehkit.io import write_apstar
    from fehkit.synth import make_benchmark

    sim = make_benchmark(n_base, seed=seed)
    batch = sim.batch.select(np.arange(n_base))
    batch.meta["star_id"] = ""  # each file's star id then comes from its name
    base = write_apstar(batch, root / "base", names=[f"apStar-base-{i:04d}.fits" for i in range(n_base)])
    (root / "files").mkdir()
    rows = []
    for j in range(n):
        name = f"files/apStar-2M{j:08d}.fits"
        try:
            os.link(base[j % n_base], root / name)
        except OSError:
            shutil.copyfile(base[j % n_base], root / name)
        t = sim.truth.iloc[j % n_base]
        rows.append({"path": name, "teff": t.teff_ref, "logg": t.logg_ref, "vmic": t.vmic_ref})
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)
    return root / "catalog.csv", sim


def train_small(sim, path: Path) -> Path:
    from fehkit.models import FeHEnsemble
    from fehkit.training import reference_params, spectra_features

    feats = spectra_features(sim.batch, reference_params(sim.truth))
    ens = FeHEnsemble(n_folds=3, rf={"n_estimators": 50}, xgb={"n_estimators": 50}, dnn={"max_epochs": 60},
                      label_error=0.05).fit(feats, sim.truth["feh_ref"].to_numpy(float))
    ens.save(path, card={"synthetic": True})
    return path


def serial_speed(catalog: Path, model: Path, n: int) -> float:
    """Spectra/s of the chunk function in this process (model loaded first): the baseline without dask."""
    from fehkit.batch import PARAM_COLUMNS, _model, _predict_chunk, model_fingerprint

    table = pd.read_csv(catalog).iloc[:n]
    for c in PARAM_COLUMNS:
        if c not in table:
            table[c] = np.nan
    ens = _model(str(model), model_fingerprint(model))  # as a worker loads it (the forest on one core)
    t0 = time.perf_counter()
    _predict_chunk(ens, [str(catalog.parent / p) for p in table["path"]], table[list(PARAM_COLUMNS)])
    return round(n / (time.perf_counter() - t0), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="files in the catalogue (default %(default)s)")
    parser.add_argument("--base", type=int, default=200, help="distinct simulated spectra (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=100, help="spectra per task (default %(default)s)")
    parser.add_argument("--model", type=Path, help="a model folder (default: train a small one on the simulation)")
    parser.add_argument("--serial", type=int, default=200, help="also time this many files in this process, "
                        "without dask (0: skip; default %(default)s)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    import distributed

    from fehkit.batch import local_cluster, run_catalog

    root = Path(tempfile.mkdtemp(prefix="fehkit-bench-batch-"))
    try:
        t0 = time.perf_counter()
        catalog, sim = make_catalog(root, args.n, min(args.base, args.n), args.seed)
        t_files = time.perf_counter() - t0
        model = args.model or train_small(sim, root / "model")
        t0 = time.perf_counter()
        with local_cluster(args.workers) as cluster, distributed.Client(cluster) as client:
            t_cluster = time.perf_counter() - t0
            run = run_catalog(catalog, model, client, out=root / "out", chunk_size=args.chunk_size, progress=False)
        info = run.info
        serial = serial_speed(catalog, model, min(args.serial, args.n)) if args.serial else None
        result = {
            "n": info["n"], "workers": info["workers"], "chunk_size": args.chunk_size, "chunks": info["n_chunks"],
            "seconds": round(info["seconds"], 3), "spectra_per_s": round(info["spectra_per_s"], 2),
            "spectra_per_s_per_worker": round(info["spectra_per_s_per_worker"], 2),
            "task_seconds": round(info["task_seconds"], 3),
            "model_load_seconds_per_worker": round(info["model_load_seconds"] / max(info["worker_processes"], 1), 3),
            "serial_spectra_per_s": serial, "n_errors": info["n_errors"], "cluster_start_seconds": round(t_cluster, 3),
            "write_files_seconds": round(t_files, 3), "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "synthetic": True,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # the LocalCluster's worker processes import this file again: no work at import
    sys.exit(main())
