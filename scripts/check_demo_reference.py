"""Does the fast path change the demo's accuracy? ``fehkit demo`` run with each engine, metrics.json compared.

The compiled CPU kernels (numba: continuum, EW fits, classical likelihood) compute in float64 and claim the
NumPy reference's numbers. This runs ``fehkit demo`` (SYNTHETIC benchmark, the same seed) three times, each in a
fresh process, and compares the metrics.json files number by number:

* ``compiled``: the default, the compiled kernels;
* ``reference64``: the NumPy code (``FEHKIT_NUMBA=0``) with every EW fit in float64
  (``fehkit.ew.solver.ArrayBackend.float64``): the reference the kernels are held to;
* ``numpy32`` (unless ``--no-numpy32``): the NumPy code as it runs without numba, EW fits in float32 first, then
  polished in float64: what the demo computed before the kernels existed.

Prints, for each pair against ``compiled``, how many numbers differ and the largest difference among the dex-valued
keys (MAE, bias, scatter of the members, the ensemble and every bin), and writes the comparison to --json.
Exit status 1 when ``reference64`` differs from ``compiled`` by more than --tolerance dex anywhere.

    python scripts/check_demo_reference.py --out demo-reference --json demo-reference.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

#: Keys whose values are in dex (the accuracy numbers); other keys are counts, fractions, ratios or statistics.
DEX_KEY = re.compile(r"/(mae|bias|scatter)(_[a-z]+)?$")

RUNNERS = {
    "compiled": ({}, "from fehkit.cli import main"),
    "reference64": ({"FEHKIT_NUMBA": "0"}, "from fehkit.ew.solver import ArrayBackend; ArrayBackend.float64 = True; "
                                           "from fehkit.cli import main"),
    "numpy32": ({"FEHKIT_NUMBA": "0"}, "from fehkit.cli import main"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the demo runs (one subfolder each)")
    ap.add_argument("--seed", type=int, default=11, help="the demo's seed (default 11, fehkit demo's own)")
    ap.add_argument("--tolerance", type=float, default=0.001, help="dex allowed between compiled and reference64")
    ap.add_argument("--no-numpy32", action="store_true", help="skip the float32 NumPy run")
    ap.add_argument("--json", type=Path, help="write the comparison here")
    args = ap.parse_args()

    names = [n for n in RUNNERS if not (args.no_numpy32 and n == "numpy32")]
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for name in names:
        env, prelude = RUNNERS[name]
        out = args.out / name
        demo = ["demo", "--quiet", "--out", str(out), "--seed", str(args.seed)]
        code = f"import sys; {prelude}; sys.exit(main({demo!r}))"
        print(f"{name}: fehkit demo --out {out} --seed {args.seed} ({env or 'default environment'})", flush=True)
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                       stdout=subprocess.DEVNULL)
        metrics[name] = json.loads((out / "metrics.json").read_text())

    report = {"what": "fehkit demo's metrics.json with each engine, against the compiled kernels (SYNTHETIC)",
              "command": " ".join(sys.argv), "seed": args.seed, "tolerance_dex": args.tolerance, "pairs": {}}
    for name in names[1:]:
        diffs = _differences(metrics["compiled"], metrics[name])
        dex = [d for d in diffs if DEX_KEY.search(d[0])]
        worst = max(dex, key=lambda d: d[3], default=None)
        report["pairs"][name] = {
            "numbers_compared": _count(metrics["compiled"]), "numbers_differing": len(diffs),
            "dex_keys_differing": len(dex), "dex_keys_over_tolerance": sum(d[3] > args.tolerance for d in dex),
            "max_dex_difference": worst[3] if worst else 0.0, "max_dex_key": worst[0] if worst else None,
            "headline": {m: {k: [metrics["compiled"]["models"][m][k], metrics[name]["models"][m][k]]
                             for k in ("mae", "bias", "scatter")} for m in metrics["compiled"]["models"]},
        }
        r = report["pairs"][name]
        print(f"compiled vs {name}: {r['numbers_differing']} of {r['numbers_compared']} numbers differ; dex keys: "
              f"{r['dex_keys_differing']} differ, {r['dex_keys_over_tolerance']} by more than {args.tolerance}; "
              f"largest {r['max_dex_difference']:.6f} ({r['max_dex_key']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["pairs"]["reference64"]["dex_keys_over_tolerance"] else 0


def _leaves(obj: object, path: str = "") -> dict[str, float]:
    """Every number of a metrics.json (timings left out), by its path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() if key != "timings_s"
                for k, v in _leaves(val, f"{path}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _leaves(val, f"{path}[{i}]").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {path: float(obj)}
    return {}


def _count(obj: object) -> int:
    return len(_leaves(obj))


def _differences(a: object, b: object) -> list[tuple[str, float, float, float]]:
    """(path, a, b, |a - b|) of the numbers that differ (NaN equal to NaN)."""
    la, lb = _leaves(a), _leaves(b)
    out = []
    for k, x in la.items():
        y = lb.get(k)
        if y is None or (math.isnan(x) and math.isnan(y)) or x == y:
            continue
        out.append((k, x, y, abs(x - y)))
    return out


if __name__ == "__main__":
    sys.exit(main())
