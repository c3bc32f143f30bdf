"""Build fehkit's second curve-of-growth grid with SME (pysme-astro) on the MOOG grid's atmospheres.

Developer-only (never run in CI). Writes ``fehkit/physics/data/cog_fe1_sme.npz``: log10 EW (mA) of the 30
packaged Fe I lines computed with SME (Valenti & Piskunov 1996, A&AS 118, 595; Piskunov & Valenti 2017,
A&A 597, A16) through its Python front end PySME (Wehrhahn, Piskunov & Ryabchikova 2023, A&A 671, A171;
``pysme-astro`` 1.2.0 on PyPI, which bundles the compiled SME library), on a sub-grid of the MOOG grid's
axes, in the format :class:`fehkit.physics.CurveOfGrowth` reads. The atmospheres are the MOOG grid's:
atmosnet 1.0.1 with the same log10 correction and the same test for unusable structures (the function
``atmosphere`` of ``build_physics_grid.py`` is imported, not copied; a cut model must reach Rosseland tau 10,
``TAU_CUT_SME``, as in the MOOG grid), and the same abundances (Fe = 7.50 +
[Fe/H], O Ne Mg Si S Ar Ca Ti at solar + [Fe/H] + [alpha/Fe], all other metals scaled by [Fe/H]).

Run it in its own virtual environment (atmosnet 1.0.1 needs numpy<2.3, scipy<1.14)::

    python -m venv /tmp/smeenv
    /tmp/smeenv/bin/pip install pysme-astro==1.2.0 atmosnet==1.0.1 "numpy<2.3" "scipy<1.14" pandas
    HOME=/tmp/smehome /tmp/smeenv/bin/python scripts/physics/build_sme_grid.py --scratch /tmp/sme_nodes.jsonl

(``make physics-grid-sme`` does this.) PySME writes its configuration to ``~/.sme`` at first import: point
``HOME`` at a scratch folder. Each node is appended to the ``--scratch`` file as soon as it is computed; a
re-run skips the nodes already there, so an interrupted build resumes. SME and atmosnet are deterministic.

SME settings: two syntheses per node (``GROUPS``), each with one 8 A segment per line of its group (``wran`` =
line +- 4 A, air wavelengths; lines of a group are >= 28 A apart; the EWs equal those of 30 single-line
syntheses to 1e-5), ``accwi = accrt = 1e-5`` (SME's default ``accwi`` puts a handful of wavelength points
on a weak line and overestimates its EW many times over), no broadening (``vmac = vsini = 0``, ``ipres = 0``),
van der Waals, Stark and radiative widths left at 0 so that SME uses its own approximations (Unsold for van
der Waals), continuum-normalized; EW = trapezoid of (1 - F/Fc) over the segment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
LINELIST = REPO / "fehkit" / "linelists" / "fe1_hband.csv"
OUT = REPO / "fehkit" / "physics" / "data" / "cog_fe1_sme.npz"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_physics_grid as moog  # noqa: E402  (the MOOG build: atmospheres and filling rules)

# ---- grid definition: a sub-grid of the MOOG grid's axes, over the EMP domain ----------------------
TEFF = np.arange(4200.0, 6601.0, 600.0)           # 5 nodes
LOGG = np.arange(0.5, 4.51, 1.0)                  # 5 nodes
FEH = np.arange(-4.5, -0.49, 0.5)                 # 9 nodes (below -4 the lines are linear: EW ~ N(Fe))
VMIC = np.array([1.0, 2.0, 3.0])
ALPHA = np.array([0.4])
HALF_WINDOW = 4.0  # A, each line's segment is line +- HALF_WINDOW
#: lines are synthesized in two interleaved groups (even and odd rows of the list, >= 28 A apart within a
#: group) so that no segment sees the wing of a neighbouring packaged line
GROUPS = 2
#: SME's EW of a line integrated over +-4 A carries a numerical floor of ~0.005 mA (the ratio EW(-4.5)/EW(-4) of
#: the same line, which must be 10**-0.5 on the linear part, scatters up to 2x below 0.02 mA). Below [Fe/H] = -4
#: the structure is the -4 one and the lines are on the linear part, so an EW under this value there is replaced
#: by EW(-4) x 10**([Fe/H] + 4), as the MOOG grid's reader extends the curve below its lowest node.
WEAK_FLOOR_MA = 0.05
#: A model whose column mass or pressure turns non-monotonic is cut above that layer if the cut model still reaches
#: this Rosseland tau (the MOOG grid uses the same; it was first built with 30). Cutting usable models at tau 10
#: changed SME's EWs by < 5e-5; it makes usable the giants whose glitch lies at tau 10-19 (4200 K / log g 0.5,
#: 4800 K / 0.5 at [Fe/H] -3..-0.5).
TAU_CUT_SME = 10.0
K_B, AMU = 1.380649e-16, 1.6605e-24
SOLAR_ALPHA_SYMBOLS = {"O": 8.69, "Ne": 7.93, "Mg": 7.60, "Si": 7.51, "S": 7.12, "Ar": 6.40, "Ca": 6.34,
                       "Ti": 4.95}


def sme_ews(d: np.ndarray, teff: float, logg: float, feh: float, vmic: float, alpha: float,
            ll: pd.DataFrame) -> np.ndarray:
    """EW (mA) of every line of ``ll`` with SME, on the atmosphere structure ``d`` (RHOX, T, P, Ne, ...)."""
    from pysme.abund import Abund
    from pysme.atmosphere.atmosphere import Atmosphere
    from pysme.linelist.linelist import LineList
    from pysme.sme import SME_Structure
    from pysme.synthesize import synthesize_spectrum

    rhox, temp, pgas, xne = d[:, 0], d[:, 1], d[:, 2], d[:, 3]
    xna = pgas / (K_B * temp) - xne
    ew = np.full(len(ll), np.nan)
    for g in range(GROUPS):
        rows = ll.iloc[g::GROUPS].sort_values("wave_air")
        atmo = Atmosphere(teff=teff, logg=logg, vturb=vmic, method="embedded", geom="PP", depth="RHOX",
                          interp="RHOX", rhox=rhox, temp=temp, xne=xne, xna=xna, rho=xna * 1.26 * AMU, monh=feh,
                          abund="asplund2009")
        ab = Abund(monh=feh, pattern="asplund2009")
        for el, a in SOLAR_ALPHA_SYMBOLS.items():
            ab.A[el] = a + feh + alpha
        sme = SME_Structure()
        sme.teff, sme.logg, sme.monh, sme.vmic, sme.vmac, sme.vsini = teff, logg, feh, vmic, 0.0, 0.0
        sme.abund, sme.atmo = ab, atmo
        n = len(rows)
        sme.linelist = LineList(pd.DataFrame(dict(
            species=["Fe 1"] * n, wlcent=rows["wave_air"].to_numpy(float), excit=rows["chi"].to_numpy(float),
            gflog=rows["loggf"].to_numpy(float), gamrad=np.zeros(n), gamqst=np.zeros(n), gamvw=np.zeros(n),
            atom_number=np.full(n, 26.0), ionization=np.ones(n))), lineformat="short", medium="air")
        sme.wran = [[w - HALF_WINDOW, w + HALF_WINDOW] for w in rows["wave_air"]]
        sme.accwi = sme.accrt = 1e-5
        sme.normalize_by_continuum = True
        sme.vrad_flag = sme.cscale_flag = "none"
        sme.ipres = 0
        sme = synthesize_spectrum(sme)
        for seg, idx in enumerate(rows.index):
            ew[idx] = np.trapezoid(1.0 - np.asarray(sme.synth[seg]), np.asarray(sme.wave[seg])) * 1e3
    return ew


def node_key(*vals: float) -> str:
    return ",".join(f"{v:g}" for v in vals)


def read_scratch(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for s in path.read_text().splitlines():
            try:
                r = json.loads(s)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            done[r["key"]] = r
    return done


def compute(scratch: Path, ll: pd.DataFrame, retry_filled: bool = False) -> None:
    done = read_scratch(scratch)
    if retry_filled:  # recompute the nodes that have no EWs (e.g. with a shallower --tau-cut)
        done = {k: r for k, r in done.items() if r["status"] == "ok"}
    # one vmic after the other (atmospheres are cheap to recompute), so that a partial run is a usable grid
    todo = [(v, t, g, f, a) for v in VMIC for t in TEFF for g in LOGG for f in FEH for a in ALPHA
            if node_key(t, g, f, v, a) not in done]
    n_nodes = len(TEFF) * len(LOGG) * len(FEH) * len(VMIC) * len(ALPHA)
    print(f"{n_nodes} nodes, {len(done)} in {scratch}, {len(todo)} to do", flush=True)
    t0 = time.time()
    with scratch.open("a") as fh:
        for k, (vmic, teff, logg, feh, alpha) in enumerate(todo):
            d = moog.atmosphere(teff, logg, feh, alpha)  # the MOOG grid's structure ([M/H] floored at -4)
            key = node_key(teff, logg, feh, vmic, alpha)
            t1 = time.time()
            rec: dict = {"key": key, "ew": None}
            if d is None:
                rec["status"] = "no usable atmosphere"
            else:
                try:
                    ew = sme_ews(d, teff, logg, feh, vmic, alpha, ll)
                except Exception as exc:  # noqa: BLE001  (any SME failure: the node is filled)
                    rec["status"] = f"SME failed: {type(exc).__name__}: {exc}"[:300]
                else:
                    ok = np.all(np.isfinite(ew) & (ew > 0))
                    rec["status"] = "ok" if ok else "SME returned non-positive EWs"
                    rec["ew"] = [float(x) for x in ew]
            rec["seconds"] = round(time.time() - t1, 2)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[key] = rec
            print(f"  {key}: {rec['status']}, {rec['seconds']} s"
                  + (f", EW[0] = {rec['ew'][0]:.4f} mA" if rec["ew"] else ""), flush=True)
            if (k + 1) % 10 == 0:
                print(f"node {k + 1}/{len(todo)}, {time.time() - t0:.0f} s", flush=True)


def assemble(scratch: Path, ll: pd.DataFrame) -> tuple[dict, dict]:
    done = read_scratch(scratch)
    shape = (len(TEFF), len(LOGG), len(FEH), len(VMIC), len(ALPHA))
    ew = np.full((*shape, len(ll)), np.nan)
    seconds = []
    missing = []
    stats: dict = {}
    for idx in np.ndindex(*shape):
        vals = (TEFF[idx[0]], LOGG[idx[1]], FEH[idx[2]], VMIC[idx[3]], ALPHA[idx[4]])
        r = done.get(node_key(*vals))
        if r is None:
            missing.append(vals)
            continue
        if r["status"] == "ok":
            ew[idx] = r["ew"]
            seconds.append(r["seconds"])
    if missing:
        raise SystemExit(f"{len(missing)} nodes not computed yet (e.g. {missing[0]}); run without --assemble")
    bad = ~np.all(np.isfinite(ew) & (ew > 0), axis=-1)
    k4 = int(np.argmin(np.abs(FEH - moog.MH_FLOOR)))
    n_linear = 0
    for k in np.flatnonzero(FEH < moog.MH_FLOOR - 1e-9):
        linear = ew[:, :, k4] * 10.0 ** (FEH[k] - FEH[k4])
        weak = ew[:, :, k] < WEAK_FLOOR_MA
        n_linear += int(np.sum(weak & np.isfinite(linear)))
        ew[:, :, k] = np.where(weak, linear, ew[:, :, k])
    stats["weak_lines_set_linear"] = n_linear
    # fill as the MOOG grid is filled (its fill_grid reads the log g axis from its module)
    moog.LOGG = LOGG
    logew = moog.fill_grid(np.log10(np.where(bad[..., None], np.nan, ew)), bad)
    arrays = {"teff": TEFF, "logg": LOGG, "feh": FEH, "vmic": VMIC, "alpha_fe": ALPHA,
              "log10_ew": logew.astype(np.float32), "filled": bad,
              "wave_air": ll["wave_air"].to_numpy(float), "wave_vac": ll["wave_vac"].to_numpy(float)}
    stats.update({"seconds_per_node_median": float(np.median(seconds)) if seconds else None,
                  "seconds_total": round(float(np.sum(seconds)))})
    return arrays, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/fehkit_sme_nodes.jsonl"),
                    help="JSON lines file of computed nodes (resumable)")
    ap.add_argument("--assemble", action="store_true", help="only write the .npz from the scratch file")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--vmic", default=None,
                    help="comma-separated subset of the vmic nodes to ship (e.g. 1,2 when a run was cut short)")
    ap.add_argument("--tau-cut", type=float, default=TAU_CUT_SME,
                    help="deepest Rosseland tau a model cut above a non-monotonic layer must still reach "
                         f"(default {TAU_CUT_SME:g}; the MOOG grid's default: {moog.TAU_CUT_MIN:g})")
    ap.add_argument("--retry-filled", action="store_true", help="recompute the nodes without EWs in --scratch")
    args = ap.parse_args()
    moog.TAU_CUT_MIN = args.tau_cut
    if args.vmic:
        global VMIC
        VMIC = np.array([float(v) for v in args.vmic.split(",")])
    logging.disable(logging.INFO)  # PySME logs every synthesis
    import atmosnet
    import pysme

    ll = pd.read_csv(LINELIST, comment="#")
    if not args.assemble:
        compute(args.scratch, ll, args.retry_filled)
    arrays, stats = assemble(args.scratch, ll)
    meta = {
        "tool": "scripts/physics/build_sme_grid.py",
        "code": f"SME via pysme-astro {pysme.__version__} (PyPI; bundled SME library)",
        "atmosnet": f"atmosnet {atmosnet.__version__} (log10 bug corrected, as for the MOOG grid)",
        "linelist_sha256": hashlib.sha256(LINELIST.read_bytes()).hexdigest(),
        "quantity": "log10 EW (mA), SME synthesis, EW = trapezoid of 1 - F/Fc over line +- 4 A (air)",
        "settings": {"accwi": 1e-5, "accrt": 1e-5, "wran_half_width_A": HALF_WINDOW, "geom": "PP",
                     "depth": "RHOX", "abund_pattern": "asplund2009", "gamrad_gamqst_gamvw": 0,
                     "vmac": 0, "vsini": 0, "ipres": 0, "normalize_by_continuum": True,
                     "line_groups": GROUPS},
        "solar_fe": 7.50,
        "alpha_elements": "O Ne Mg Si S Ar Ca Ti at solar + [Fe/H] + [alpha/Fe]; other metals scaled by [Fe/H]",
        "mh_floor": "atmosnet stops at [M/H]=-4: below it the -4 structure is used with abundances scaled to [Fe/H]",
        "filled": "nodes without a usable atmosphere (the MOOG build's test) or where SME failed are filled as in "
                  "the MOOG grid (along Teff for log g >= 3, then along log g); see 'filled'",
        "damping": "SME defaults for zero widths (Unsold van der Waals)",
        "tau_cut_min": moog.TAU_CUT_MIN,
        "weak_lines": f"below [Fe/H] = {moog.MH_FLOOR:g}, EWs under {WEAK_FLOOR_MA} mA (SME's numerical floor is "
                      f"~0.005 mA) are set to EW({moog.MH_FLOOR:g}) x 10**([Fe/H] - ({moog.MH_FLOOR:g})), the linear "
                      "part of the curve of growth",
        **stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta, indent=1, sort_keys=True)), **arrays)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.3f} MB), {int(arrays['filled'].sum())} filled nodes")


if __name__ == "__main__":
    main()
