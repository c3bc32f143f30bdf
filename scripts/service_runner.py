"""Helpers of the service scripts (bench_service.py, load_service.py): start ``fehkit serve``, make requests.

Not a benchmark itself. The spectra are SYNTHETIC (``fehkit.synth.make_benchmark``) with their noisy reference
parameters, as an observer would have them.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | Path, workers: int = 1, port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None,
                 timeout: float = 180.0, root: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``fehkit serve`` in a subprocess on loopback; return it and its base URL once /readyz answers.

    The server runs the fehkit in the folder ``root`` (default: the one this process imports): ``python -m`` puts
    its working folder first on the module path (before ``PYTHONPATH``), so it starts in ``root``.
    """
    import fehkit

    root = root or Path(fehkit.__file__).resolve().parents[1]
    port = port or free_port()
    cmd = [sys.executable, "-m", "fehkit", "serve", "--model", str(Path(model).resolve()), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", *(extra or [])]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=root)
    proc.log_file = out  # closed by stop_server
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout)
    return proc, url


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"fehkit serve exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def fehkit_in(root: Path) -> str:
    """Return the file of the fehkit package that ``python -m`` started in ``root`` imports."""
    out = subprocess.run([sys.executable, "-c", "import fehkit; print(fehkit.__file__)"], cwd=root, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def check_response(r: httpx.Response, ids: list[str] | None, key: str | None = None) -> None:
    """Raise unless ``r`` is a 200 whose star ids (``r.json()[key]``'s for a batch) are ``ids``, in order."""
    if r.status_code != 200:
        raise RuntimeError(f"status {r.status_code}: {r.text[:300]}")
    if ids is None:
        return
    data = r.json()
    got = [x["star_id"] for x in data[key]] if key else [data["star_id"]]
    if got != ids:
        raise RuntimeError(f"star ids {got[:3]}... for a request of {ids[:3]}...: a mixed-up response")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = getattr(proc, "log_file", None)
    if log not in (None, subprocess.DEVNULL):
        log.close()


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The uvicorn worker processes of a ``fehkit serve --workers N`` (N > 1) started by :func:`start_server`."""
    pids = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            pids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:  # not multiprocessing's resource tracker
            out.append(pid)
    return sorted(out)


def busiest(pids: list[int]) -> int:
    """The worker holding the most sockets (client connections): the one whose death clients notice."""
    def sockets(pid: int) -> int:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            return -1
        n = 0
        for fd in fds:
            try:
                n += os.readlink(fd).startswith("socket:")
            except OSError:
                pass
        return n

    return max(pids, key=sockets)


def synthetic_requests(n: int, seed: int) -> list[dict]:
    """``n`` SYNTHETIC spectra as JSON request bodies (fehkit.service.spectrum_payload), reference parameters."""
    import warnings

    from fehkit.errors import FehkitWarning
    from fehkit.service import spectrum_payload
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FehkitWarning)
        sim = make_benchmark(n, seed=seed)
    params = reference_params(sim.truth)
    return [spectrum_payload(sim.batch, i, params.iloc[i]) for i in range(n)]


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # how fast this core runs plain Python, to compare machines: the latency of one spectrum is mostly Python
    info["python_sum_1e6_ms"] = min(timeit.repeat("sum(range(10**6))", number=1, repeat=5)) * 1e3
    return info


def percentiles(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray(values, float)
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "p99": float(np.percentile(v, 99)), "mean": float(v.mean()), "max": float(v.max())}


def dump(obj: dict, path: Path | None) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    if path is None:
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
