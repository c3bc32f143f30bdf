"""Load test of ``fehkit serve``: many concurrent clients, every response checked (SYNTHETIC spectra).

Starts ``fehkit serve --model MODEL --workers W`` on loopback (or uses --url), computes the reference answer of
each of --unique synthetic spectra with one request each, then lets --clients concurrent clients (asyncio, one
connection each) send --requests single-spectrum JSON requests in all. Each request carries its own star id
(``L<request>-S<spectrum>``); each response must come back with status 200, that star id, and the reference
``feh``, ``feh_err``, ``feh_upper`` and ``flag`` of that spectrum (to 1e-5 dex: requests answered together share
one batch, whose MLP float32 products may round differently). Anything else counts as an error, a lost or a
mixed-up response. With --kill-after S, the worker holding the most connections is killed (SIGKILL) S seconds
into the load: its requests in flight fail, the service must keep answering, and uvicorn must start a new worker.

    python scripts/load_service.py --model fehkit-demo/model --workers 2 --clients 50 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from service_runner import (
    busiest,
    dump,
    machine,
    percentiles,
    start_server,
    stop_server,
    synthetic_requests,
    wait_ready,
    worker_pids,
)

KEYS = ("feh", "feh_err", "feh_upper")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="model folder to serve")
    ap.add_argument("--url", help="a running service instead (no --kill-after then)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the started service (default 2)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    ap.add_argument("--requests", type=int, default=5000, help="requests in all (default 5000)")
    ap.add_argument("--unique", type=int, default=20, help="distinct synthetic spectra (default 20)")
    ap.add_argument("--seed", type=int, default=9, help="seed of the synthetic spectra (default 9)")
    ap.add_argument("--kill-after", type=float, help="SIGKILL one worker this many seconds into the load")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    if not (args.model or args.url):
        ap.error("give --model (start a service) or --url (a running one)")
    if args.kill_after is not None and (args.url or args.workers < 2):
        ap.error("--kill-after needs a service started here with --workers 2 or more")

    proc = None
    if args.url:
        url = args.url.rstrip("/")
        wait_ready(url)
    else:
        proc, url = start_server(args.model, workers=args.workers)
    try:
        res = asyncio.run(_run(url, args, proc))
    finally:
        if proc is not None:
            stop_server(proc)
    dump(res, args.json)
    lat = res["latency_ms"]
    print(f"{res['requests']} requests from {args.clients} clients on {args.workers} worker(s): "
          f"{res['ok']} ok, {res['errors']} errors ({res['failed_connections']} failed connections, "
          f"{res['wrong_status']} wrong status, {res['mixed_up']} mixed up, {res['lost']} lost) in "
          f"{res['wall_s']:.1f} s: {res['requests_per_s']:.0f} requests/s; latency p50 {lat['p50']:.0f} ms, "
          f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    if res.get("kill"):
        k = res["kill"]
        print(f"killed worker {k['pid']} ({k['connections']} sockets) at {k['at_s']:.1f} s with {k['in_flight']} "
              f"requests in flight in all; workers before {k['workers_before']}, after {k['workers_after']} "
              f"({k.get('replaced_after_s', float('nan')):.1f} s later); failures {res['errors']}, of them sent after "
              f"the kill {k['failed_sent_after_kill']}")
    k = res.get("kill")
    fine = res["errors"] == 0 or (k and res["errors"] <= k["in_flight"] and k["failed_sent_after_kill"] == 0)
    return 0 if fine else 1


async def _run(url: str, args: argparse.Namespace, proc: object) -> dict:
    spectra = synthetic_requests(args.unique, args.seed)
    templates = []
    for body in spectra:
        text = json.dumps({**body, "star_id": "@ID@"}).encode()
        templates.append(text)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        reference = []
        for j, t in enumerate(templates):  # one answer per spectrum, alone
            r = await c.post("/v1/feh", content=t.replace(b"@ID@", f"REF-S{j:03d}".encode()), headers=headers)
            r.raise_for_status()
            reference.append(r.json())
    counts = {"ok": 0, "failed_connections": 0, "wrong_status": 0, "mixed_up": 0}
    latencies: list[float] = []
    next_request = iter(range(args.requests))
    in_flight = {"n": 0}
    failed_starts: list[float] = []
    done = set()
    kill: dict = {}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)) as c:
            for k in next_request:
                j = k % len(templates)
                sid = f"L{k:06d}-S{j:03d}"
                in_flight["n"] += 1
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/feh", content=templates[j].replace(b"@ID@", sid.encode()),
                                     headers=headers)
                except httpx.HTTPError:
                    counts["failed_connections"] += 1
                    failed_starts.append(t0 - t_start)
                    done.add(k)
                    continue
                finally:
                    in_flight["n"] -= 1
                latencies.append(time.perf_counter() - t0)
                done.add(k)
                if r.status_code != 200:
                    counts["wrong_status"] += 1
                    continue
                got = r.json()
                if got.get("star_id") != sid or not _same(got, reference[j]):
                    counts["mixed_up"] += 1
                    continue
                counts["ok"] += 1

    async def killer() -> None:
        await asyncio.sleep(args.kill_after)
        before = worker_pids(proc)
        victim = busiest(before)
        kill.update(pid=victim, at_s=time.perf_counter() - t_start, in_flight=in_flight["n"],
                    connections=_sockets(victim), workers_before=before)
        os.kill(victim, signal.SIGKILL)
        for _ in range(600):  # uvicorn's supervisor starts a replacement (it is ready once it has warmed up)
            await asyncio.sleep(0.5)
            now = worker_pids(proc)
            if len(now) == len(before) and victim not in now:
                kill["workers_after"] = now
                kill["replaced_after_s"] = time.perf_counter() - t_start - kill["at_s"]
                return
        kill["workers_after"] = worker_pids(proc)

    t_start = time.perf_counter()
    tasks = [client() for _ in range(args.clients)]
    if args.kill_after is not None:
        tasks.append(killer())
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    errors = counts["failed_connections"] + counts["wrong_status"] + counts["mixed_up"]
    lost = args.requests - len(done)
    lat = {k: (v * 1e3 if k != "n" else v) for k, v in percentiles(latencies).items()} if latencies else {}
    if kill:  # a request that failed must have been sent before the kill (0.5 s: the kill itself takes a moment)
        kill["failed_sent_after_kill"] = sum(t > kill["at_s"] + 0.5 for t in failed_starts)
    return {"what": "fehkit serve load test on loopback (SYNTHETIC spectra), every response checked",
            "command": " ".join(sys.argv), "machine": machine(), "workers": args.workers, "clients": args.clients,
            "requests": args.requests, "unique_spectra": args.unique, **counts, "lost": lost,
            "errors": errors + lost, "wall_s": wall, "requests_per_s": args.requests / wall,
            "latency_ms": lat, "kill": kill or None}


def _sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return n


def _same(got: dict, ref: dict) -> bool:
    if got.get("flag") != ref.get("flag"):
        return False
    for key in KEYS:
        a, b = got.get(key), ref.get(key)
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=0, abs_tol=1e-5)):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
