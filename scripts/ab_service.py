"""Two versions of ``fehkit serve`` side by side: one JSON spectrum's latency, A and B in turn (SYNTHETIC spectra).

On a machine whose speed drifts from one minute to the next, two benchmark runs made one after the other compare
the minutes as much as the code. This starts both servers at once, each from its own source folder (``--a``, e.g.
a ``git worktree`` of an older commit, and ``--b``, default this repository, both run by this Python), and sends
one client's requests to them in turn, blocks of ``--block`` requests, so that both see the same minutes. Every
response is checked (status 200, the request's star id back). Prints p10/p50/p90 per server and writes them, with
the fehkit each server imports and the machine, to --json.

    git worktree add /tmp/old <commit>
    python scripts/ab_service.py --model fehkit-demo/model --a /tmp/old --json ab.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
import numpy as np
from service_runner import check_response, dump, fehkit_in, machine, start_server, stop_server, synthetic_requests

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model folder both servers load")
    ap.add_argument("--a", type=Path, required=True, help="source folder of version A (holds fehkit/)")
    ap.add_argument("--b", type=Path, default=REPO, help="source folder of version B (default this repository)")
    ap.add_argument("--blocks", type=int, default=16, help="blocks of requests, A and B in turn (default 16)")
    ap.add_argument("--block", type=int, default=40, help="requests per block (default 40)")
    ap.add_argument("--warmup", type=int, default=30, help="requests to each server before measuring (default 30)")
    ap.add_argument("--seed", type=int, default=5, help="seed of the synthetic spectra (default 5)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()

    roots = {"a": args.a.resolve(), "b": args.b.resolve()}
    bodies = synthetic_requests(20, args.seed)
    raw = [json.dumps(b).encode() for b in bodies]
    out = {"what": "fehkit serve, two versions side by side, one JSON spectrum, one client (SYNTHETIC spectra)",
           "machine": machine(), "blocks": args.blocks, "block": args.block,
           "servers": {k: {"root": str(r), "fehkit": fehkit_in(r)} for k, r in roots.items()}}
    procs, clients = {}, {}
    times: dict[str, list[float]] = {"a": [], "b": []}
    headers = {"content-type": "application/json"}
    try:
        for k, root in roots.items():
            procs[k], url = start_server(args.model, root=root)
            clients[k] = httpx.Client(base_url=url, timeout=60)

        def one(k: str, i: int) -> float:
            t0 = time.perf_counter()
            r = clients[k].post("/v1/feh", content=raw[i % len(raw)], headers=headers)
            dt = time.perf_counter() - t0
            try:
                check_response(r, [bodies[i % len(raw)]["star_id"]])
            except RuntimeError as err:
                raise RuntimeError(f"server {k}: {err}") from None
            return dt

        for k in roots:
            for i in range(args.warmup):
                one(k, i)
        for blk in range(args.blocks):
            k = "ab"[blk % 2]
            times[k] += [one(k, i) for i in range(args.block)]
    finally:
        for c in clients.values():
            c.close()
        for p in procs.values():
            stop_server(p)
    for k in roots:
        v = np.asarray(times[k]) * 1e3
        out["servers"][k].update({"n": int(v.size), "p10_ms": float(np.percentile(v, 10)),
                                  "p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90))})
        s = out["servers"][k]
        print(f"{k}: {s['fehkit']}: p10 {s['p10_ms']:.2f} ms, p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms "
              f"({s['n']} requests)")
    dump(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
