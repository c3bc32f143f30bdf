"""Latency of ``fehkit serve`` on loopback: one JSON spectrum, an uploaded file, a batch of 100 (SYNTHETIC spectra).

Starts ``fehkit serve --model MODEL`` (or uses a running one with --url), sends warm-up requests, then measures
from one client, one request at a time (keep-alive, bodies encoded beforehand, so that the client costs little):

* ``single``: POST /v1/feh with one JSON spectrum, --n times (p50/p95/p99 in ms, requests/s);
* ``upload``: POST /v1/feh with a gzipped apStar file (the packaged real DR17 dwarf), --n-upload times;
* ``batch``: POST /v1/feh/batch with --batch JSON spectra, --batch-reps times (s, spectra/s);
* ``start_s``: from starting ``fehkit serve`` to its first answer of /readyz (imports, model, warm-up);
* ``stages``: where one JSON spectrum's time goes, in this process, without HTTP (ms, p50 of --n-stages): parsing
  and checking the body, then the library's stages as the service calls them (``--no-stages`` skips it).

Every response is checked (status 200, the request's star ids back, in order). The spectra are SYNTHETIC
(fehkit.synth.make_benchmark) with their noisy reference Teff, log g and vmic. Prints a table and writes every
number, with the machine and its load average, to --json. docs/service.md reports a run.

    python scripts/bench_service.py --model fehkit-demo/model --json bench-service.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
from service_runner import (
    check_response,
    dump,
    machine,
    percentiles,
    start_server,
    stop_server,
    synthetic_requests,
    wait_ready,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="model folder to serve (fehkit train, or model/ of fehkit demo)")
    ap.add_argument("--url", help="a running service instead, e.g. http://127.0.0.1:8000")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of the started service (default 1)")
    ap.add_argument("--n", type=int, default=1000, help="single-spectrum requests (default 1000)")
    ap.add_argument("--n-upload", type=int, default=200, help="file uploads (default 200)")
    ap.add_argument("--batch", type=int, default=100, help="spectra per batch request (default 100)")
    ap.add_argument("--batch-reps", type=int, default=20, help="batch requests (default 20)")
    ap.add_argument("--warmup", type=int, default=50, help="requests before measuring (default 50)")
    ap.add_argument("--seed", type=int, default=5, help="seed of the synthetic spectra (default 5)")
    ap.add_argument("--n-stages", type=int, default=200, help="spectra timed stage by stage (default 200)")
    ap.add_argument("--no-stages", action="store_true", help="skip the stage-by-stage timing")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    if not (args.model or args.url):
        ap.error("give --model (start a service) or --url (a running one)")

    bodies = synthetic_requests(max(args.batch, 50), args.seed)
    singles = [json.dumps(b).encode() for b in bodies[:50]]
    batch_body = json.dumps({"spectra": bodies[:args.batch]}).encode()
    from fehkit.examples import example_paths

    upload = example_paths()[-1]
    upload_bytes = upload.read_bytes()
    form = {"teff": "5500", "logg": "4.5", "vmic": "1.0"}

    proc = None
    if args.url:
        url = args.url.rstrip("/")
        wait_ready(url)
    else:
        t0 = time.perf_counter()
        proc, url = start_server(args.model, workers=args.workers)
        start_s = time.perf_counter() - t0
    before = machine()
    out = {"what": "fehkit serve latency on loopback, one client, one request at a time (SYNTHETIC spectra)",
           "command": " ".join(sys.argv), "url": url, "workers": args.workers, "machine": before,
           "start_s": None if args.url else start_s}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            out["model"] = {k: client.get("/v1/model").json()[k] for k in ("model_version", "model_sha256",
                                                                           "synthetic")}
            headers = {"content-type": "application/json"}

            def single(i: int) -> float:
                t0 = time.perf_counter()
                r = client.post("/v1/feh", content=singles[i % len(singles)], headers=headers)
                dt = time.perf_counter() - t0
                check_response(r, [bodies[i % len(singles)]["star_id"]])
                return dt

            for i in range(args.warmup):
                single(i)
            t0 = time.perf_counter()
            times = [single(i) for i in range(args.n)]
            wall = time.perf_counter() - t0
            out["single"] = {**{k: v * 1e3 if k not in ("n",) else v for k, v in percentiles(times).items()},
                             "unit": "ms", "requests_per_s": args.n / wall}

            def up() -> float:
                t0 = time.perf_counter()
                r = client.post("/v1/feh", files={"file": (upload.name, upload_bytes)}, data=form)
                dt = time.perf_counter() - t0
                check_response(r, None)
                return dt

            for _ in range(5):
                up()
            t0 = time.perf_counter()
            times = [up() for _ in range(args.n_upload)]
            wall = time.perf_counter() - t0
            out["upload"] = {**{k: v * 1e3 if k != "n" else v for k, v in percentiles(times).items()},
                             "unit": "ms", "requests_per_s": args.n_upload / wall, "file": upload.name,
                             "bytes": len(upload_bytes)}

            ids = [b["star_id"] for b in bodies[:args.batch]]

            def batch() -> float:
                t0 = time.perf_counter()
                r = client.post("/v1/feh/batch", content=batch_body, headers=headers)
                dt = time.perf_counter() - t0
                check_response(r, ids, key="results")
                return dt

            for _ in range(2):
                batch()
            times = [batch() for _ in range(args.batch_reps)]
            p = percentiles(times)
            out["batch"] = {**p, "unit": "s", "spectra": args.batch, "spectra_per_s": args.batch / p["p50"]}
    finally:
        if proc is not None:
            stop_server(proc)
    out["machine_after"] = {"load_average": list(__import__("os").getloadavg())}
    if not args.no_stages and args.model:
        out["stages"] = _stages(args.model, singles, args.n_stages)
    dump(out, args.json)
    s, u, b = out["single"], out["upload"], out["batch"]
    print(f"model {out['model']['model_sha256'][:12]} (synthetic: {out['model']['synthetic']}), {args.workers} "
          f"worker(s), {before['cpus']} CPUs, load average {before['load_average'][0]:.2f}, "
          f"sum(range(10**6)) in {before['python_sum_1e6_ms']:.1f} ms")
    print("| request | n | p50 | p95 | p99 | throughput |")
    print("|---|---|---|---|---|---|")
    print(f"| one JSON spectrum | {s['n']} | {s['p50']:.1f} ms | {s['p95']:.1f} ms | {s['p99']:.1f} ms | "
          f"{s['requests_per_s']:.0f} req/s |")
    print(f"| one uploaded apStar file (.fits.gz, {u['bytes'] // 1024} KiB) | {u['n']} | {u['p50']:.1f} ms | "
          f"{u['p95']:.1f} ms | {u['p99']:.1f} ms | {u['requests_per_s']:.0f} req/s |")
    print(f"| batch of {args.batch} JSON spectra | {b['n']} | {b['p50']:.3f} s | {b['p95']:.3f} s | "
          f"{b['p99']:.3f} s | {b['spectra_per_s']:.0f} spectra/s |")
    if out["start_s"] is not None:
        print(f"start: {out['start_s']:.1f} s from fehkit serve to the first answer of /readyz")
    if "stages" in out:
        print("one spectrum, in process (p50, ms): " + ", ".join(f"{k} {v:.2f}" for k, v in out["stages"].items()))
    return 0


def _stages(model: Path, bodies: list[bytes], n: int) -> dict:
    """p50 (ms) of each step of one JSON spectrum in this process: the service's parsing, the library's stages."""
    import warnings

    import numpy as np

    from fehkit.continuum import normalize
    from fehkit.errors import FehkitWarning
    from fehkit.ew import measure_ew
    from fehkit.features import build_features
    from fehkit.service import _json_spectrum, _Predictor, _rows
    from fehkit.training import prediction_columns

    pred = _Predictor(Path(model))
    times: dict[str, list[float]] = {k: [] for k in ("parse", "continuum", "ew", "features", "predict", "total")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        for i in range(n + 20):
            body = bodies[i % len(bodies)]
            t = [time.perf_counter()]
            batch, params, _ = _json_spectrum(body)
            t.append(time.perf_counter())
            norm = normalize(batch).batch
            t.append(time.perf_counter())
            ew_params = {k: np.asarray(params[k]) for k in ("teff", "logg", "vmic")}  # as the library
            ew = measure_ew(norm, params=ew_params, mc_draws=0)
            t.append(time.perf_counter())
            snr = batch.meta_columns(["snr"]).get("snr")  # as the library reads it
            feats = build_features(ew, params, snr=snr)
            t.append(time.perf_counter())
            _rows(prediction_columns(pred.ensemble, feats, member_predictor=pred.members))
            t.append(time.perf_counter())
            if i >= 20:  # the first ones warm the caches
                for k, a, b in zip(times, t, t[1:], strict=False):
                    times[k].append(b - a)
                times["total"].append(t[-1] - t[0])
    return {k: float(np.percentile(v, 50) * 1e3) for k, v in times.items()}


if __name__ == "__main__":
    sys.exit(main())
