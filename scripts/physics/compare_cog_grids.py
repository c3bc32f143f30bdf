"""Compare the two packaged curve-of-growth grids, MOOG and SME, and print markdown tables (developer tool).

1. The SME/MOOG EW ratio over the nodes both grids computed (neither filled), all 30 lines, per [Fe/H].
2. The [Fe/H] difference it implies for the classical method: **synthetic** benchmark-like stars (the
   population of ``fehkit.synth.draw_population``, parameters inside the SME grid's domain), noiseless EWs from
   the SME grid, analysed with the joint likelihood on the MOOG grid (and the reverse); and
   :func:`fehkit.physics.joint.physics_systematic` on the same stars.
3. The filled nodes of each grid and the benchmark stars that touch them
   (``make_benchmark(1500, seed=11)``'s parameters: the same generator and seed).
4. With ``--before OLD.npz`` (an earlier build of the MOOG grid): the largest change at the nodes both builds
   computed, and, at the nodes the earlier build filled and this one computes, the new/old EW ratio and SME/MOOG.

Usage: ``python scripts/physics/compare_cog_grids.py [--n 400] [--before OLD.npz]`` (about a minute).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

from fehkit.physics.cog import CurveOfGrowth
from fehkit.physics.joint import joint_abundance, physics_systematic
from fehkit.synth import draw_population


def markdown(df: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    """A pandas table as a markdown table (floats with ``fmt``)."""
    cells = [[fmt.format(v) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in cells)


def node_ratio(moog: CurveOfGrowth, sme: CurveOfGrowth) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SME/MOOG EW ratio over the common, computed nodes, per [Fe/H]; and where only SME computed the node."""
    idx = [np.array([int(np.argmin(np.abs(getattr(moog, ax) - v))) for v in getattr(sme, ax)])
           for ax in ("teff", "logg", "feh", "vmic", "alpha_fe")]
    for ax, i in zip(("teff", "logg", "feh", "vmic", "alpha_fe"), idx, strict=True):
        if not np.allclose(getattr(moog, ax)[i], getattr(sme, ax)):
            raise SystemExit(f"the SME grid's {ax} nodes are not MOOG grid nodes")
    m = moog.log10_ew[np.ix_(*idx)]
    mf = moog.filled[np.ix_(*idx)]
    ok = ~(mf | sme.filled)
    rows = []
    for k, feh in enumerate(sme.feh):
        r = 10.0 ** (sme.log10_ew[:, :, k][ok[:, :, k]] - m[:, :, k][ok[:, :, k]]).astype(float)
        rows.append({"[Fe/H]": f"{feh:+.1f}", "nodes": int(ok[:, :, k].sum()), "median": np.median(r),
                     "p10": np.percentile(r, 10), "p90": np.percentile(r, 90)})
    r = 10.0 ** (sme.log10_ew[ok] - m[ok]).astype(float)
    rows.append({"[Fe/H]": "all", "nodes": int(ok.sum()), "median": np.median(r), "p10": np.percentile(r, 10),
                 "p90": np.percentile(r, 90)})
    # nodes MOOG filled and SME computed: SME/(MOOG's filled value) tells how good the filling was
    only = mf & ~sme.filled
    rest = []
    for (t, g), name in (((sme.teff <= 5400, sme.logg >= 3.0), "cool dwarfs (log g >= 3.5)"),
                         ((np.ones_like(sme.teff, bool), sme.logg < 3.0), "giants (log g <= 2.5)")):
        sel = only & t[:, None, None, None, None] & g[None, :, None, None, None]
        if sel.any():
            r = 10.0 ** (sme.log10_ew[sel] - m[sel]).astype(float)
            rest.append({"MOOG-filled nodes SME computed": name, "nodes": int(sel.sum()), "median": np.median(r),
                         "p10": np.percentile(r, 10), "p90": np.percentile(r, 90)})
    return pd.DataFrame(rows), pd.DataFrame(rest)


def _regions(cog: CurveOfGrowth) -> list[tuple[np.ndarray, str]]:
    """Masks (teff, logg, feh, vmic, alpha) of the two regions where nodes get filled."""
    t, g = cog.teff[:, None, None, None, None], cog.logg[None, :, None, None, None]
    shape = cog.filled.shape
    return [(np.broadcast_to((t <= 5400) & (g >= 3.0), shape), "cool dwarfs (log g >= 3)"),
            (np.broadcast_to(g < 3.0, shape), "giants (log g <= 2.5)")]


def before_after(moog: CurveOfGrowth, before: CurveOfGrowth, sme: CurveOfGrowth) -> tuple[str, pd.DataFrame]:
    """Compare the MOOG grid with an earlier build of it.

    Returns a line on the nodes both builds computed (largest |d log10 EW| and where it changed by more than
    1e-5 dex) and a table over the nodes the earlier build filled and this one computes: this/earlier EW ratio
    and, on the SME grid's nodes among them, SME/MOOG.
    """
    for ax in ("teff", "logg", "feh", "vmic", "alpha_fe"):
        if not np.array_equal(getattr(moog, ax), getattr(before, ax)):
            raise SystemExit(f"--before: a different grid ({ax} nodes)")
    both = ~(moog.filled | before.filled)
    d = np.abs(moog.log10_ew.astype(float) - before.log10_ew.astype(float)).max(axis=-1)
    moved = both & (d > 1e-5)
    tg = sorted({tuple(ix[:2]) for ix in np.argwhere(moved)})
    changed = ", ".join(f"{moog.teff[t]:g}/{moog.logg[g]:g} ({d[t, g][moved[t, g]].max():.1e})"
                        for t, g in tg) or "none"
    line = (f"- nodes both builds computed: {int(both.sum())}; max |d log10 EW| {d[both].max():.2e}; "
            f"{int(moved.sum())} nodes changed by more than 1e-5 dex (Teff/log g (max): {changed})\n"
            f"- nodes filled before: {int(before.filled.sum())}, now: {int(moog.filled.sum())}; filled before and "
            f"computed now: {int((before.filled & ~moog.filled).sum())}; computed before and filled now: "
            f"{int((~before.filled & moog.filled).sum())}")
    new = before.filled & ~moog.filled
    idx = [np.array([int(np.argmin(np.abs(getattr(moog, ax) - v))) for v in getattr(sme, ax)])
           for ax in ("teff", "logg", "feh", "vmic", "alpha_fe")]
    sub = np.zeros_like(new)
    sub[np.ix_(*idx)] = ~sme.filled
    sme_on_moog = np.full(moog.log10_ew.shape, np.nan)
    sme_on_moog[np.ix_(*idx)] = sme.log10_ew
    rows = []
    for region, name in _regions(moog):
        sel = new & region
        if not sel.any():
            continue
        r = 10.0 ** (moog.log10_ew[sel] - before.log10_ew[sel]).astype(float)
        row = {"newly computed nodes": name, "nodes": int(sel.sum()), "new/old-filled median": np.median(r),
               "p10": np.percentile(r, 10), "p90": np.percentile(r, 90)}
        both_sme = sel & sub
        if both_sme.any():
            q = 10.0 ** (sme_on_moog[both_sme] - moog.log10_ew[both_sme].astype(float))
            row |= {"SME nodes": int(both_sme.sum()), "SME/MOOG median": np.median(q),
                    "SME/MOOG p10": np.percentile(q, 10), "SME/MOOG p90": np.percentile(q, 90)}
        rows.append(row)
    return line, pd.DataFrame(rows)


def feh_shift(moog: CurveOfGrowth, sme: CurveOfGrowth, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """[Fe/H] from the MOOG grid on SME EWs (and the reverse), minus the truth, for synthetic stars."""
    pop = draw_population(4 * n, np.random.default_rng(seed))
    inside = ((pop.teff >= sme.teff[0]) & (pop.teff <= sme.teff[-1]) & (pop.logg >= sme.logg[0])
              & (pop.logg <= sme.logg[-1]) & (pop.vmic >= sme.vmic[0]) & (pop.vmic <= sme.vmic[-1])
              & ~moog.touches_filled(pop.teff, pop.logg, pop.feh, pop.vmic, pop.alpha_fe)
              & ~sme.touches_filled(pop.teff, pop.logg, pop.feh, pop.vmic, pop.alpha_fe))
    pop = pop[inside.to_numpy()].head(n).reset_index(drop=True)
    p = [pop[c].to_numpy() for c in ("teff", "logg", "vmic", "alpha_fe")]
    err = np.ones((len(pop), sme.n_lines))  # 1 mA: noiseless EWs, the shift is the physics alone
    use = np.ones_like(err, bool)
    out = pop[["teff", "logg", "feh"]].copy()
    ew_sme = sme.ew(p[0], p[1], pop.feh, p[2], p[3])
    ew_moog = moog.ew(p[0], p[1], pop.feh, p[2], p[3])
    out["moog_on_sme"] = joint_abundance(ew_sme, err, use, *p, cog=moog)["feh_cog"].to_numpy() - pop.feh
    out["sme_on_moog"] = joint_abundance(ew_moog, err, use, *p, cog=sme)["feh_cog"].to_numpy() - pop.feh
    out["feh_sys"] = physics_systematic(ew_sme, err, use, *p)["feh_sys"].to_numpy()
    bins = [-4.5, -3.5, -2.5, -1.5, -1.0]
    out["bin"] = pd.cut(out.feh, bins).astype(str)
    rows = []
    for b, g in [*out.groupby("bin", sort=False), ("all", out)]:
        rows.append({"[Fe/H] bin": b, "stars": len(g), "MOOG grid on SME EWs (median)": g.moog_on_sme.median(),
                     "10-90%": f"{g.moog_on_sme.quantile(0.1):+.3f}..{g.moog_on_sme.quantile(0.9):+.3f}",
                     "SME grid on MOOG EWs (median)": g.sme_on_moog.median(),
                     "feh_sys median": g.feh_sys.median()})
    return pd.DataFrame(rows).sort_values("[Fe/H] bin"), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--before", default=None, help="an earlier build of the MOOG grid (cog_fe1.npz) to compare with")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    moog, sme = CurveOfGrowth.load("moog"), CurveOfGrowth.load("sme")
    print("## SME/MOOG EW ratio over common computed nodes\n")
    common, only_sme = node_ratio(moog, sme)
    print(markdown(common))
    print("\n## SME / MOOG's filled value, at nodes MOOG filled and SME computed\n")
    print(markdown(only_sme))
    print("\n## [Fe/H] shift, synthetic benchmark-like stars, noiseless EWs\n")
    tab, _ = feh_shift(moog, sme, args.n, args.seed)
    print(markdown(tab, "{:+.3f}"))
    print("\n## Filled nodes and the benchmark (make_benchmark(1500, seed=11) parameters)\n")
    pop = draw_population(1500, np.random.default_rng(11))
    for name, cog in (("moog", moog), ("sme", sme)):
        t = cog.touches_filled(pop.teff, pop.logg, pop.feh, pop.vmic, pop.alpha_fe)
        print(f"- {name}: {int(cog.filled.sum())} of {cog.filled.size} nodes filled ({cog.filled.mean():.1%}); "
              f"benchmark stars touching them: {int(t.sum())} of {len(pop)} ({t.mean():.1%})")
    print("\n### MOOG grid, [alpha/Fe] = +0.4\n")
    f = moog.filled_nodes()
    print(markdown(f[f.alpha_fe == 0.4].drop(columns="alpha_fe"), "{:g}"))
    print("\n### MOOG grid, [alpha/Fe] = 0.0\n")
    print(markdown(f[f.alpha_fe == 0.0].drop(columns="alpha_fe"), "{:g}"))
    print("\n### SME grid\n")
    print(markdown(sme.filled_nodes(), "{:g}"))
    if args.before:
        print(f"\n## Against the earlier MOOG build {args.before}\n")
        line, tab = before_after(moog, CurveOfGrowth.load(args.before), sme)
        print(line + "\n")
        print(markdown(tab))


if __name__ == "__main__":
    main()
