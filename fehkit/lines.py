"""The Fe I line list: which absorption lines fehkit measures, with their atomic data and fit windows.

An iron line's equivalent width (EW) counts the absorbers in the lower level of its transition. In the
weak-line regime it grows as ``gf * 10**(-theta * chi) * N(Fe)`` with ``theta = 5040 / Teff``, so the
oscillator strength (log gf) and excitation potential (chi) of each line, with a model atmosphere, turn a
measured EW into an iron abundance. The APOGEE H band holds only high-excitation Fe I lines (chi ~5.3-6.4 eV)
that fade fast with metallicity, and Fe II is essentially absent there, so the packaged list holds the ~30
strongest clean Fe I lines, each with a fit window of +-20 apStar pixels (vacuum, rest-frame wavelengths).

``scripts/build_linelist.py`` builds the packaged list; ``fehkit/linelists/README.md`` says how and from what.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fehkit.errors import FehkitWarning, LineListError
from fehkit.spectra import APSTAR_CDELT1, APSTAR_CRVAL1, APSTAR_NPIX, chip_of

#: File name of the packaged line list inside ``fehkit/linelists``.
DEFAULT_LINELIST = "fe1_hband.csv"

#: Columns every line list must have: vacuum wavelength (A), species ("Fe I"), chi (eV), log gf and the fit
#: window (vacuum A).
REQUIRED_COLUMNS: tuple[str, ...] = ("wave_vac", "species", "chi", "loggf", "window_lo", "window_hi")

#: Columns the packaged list also carries. :func:`load_linelist` fills them in for a user list that lacks
#: them: ``wave_air`` NaN, ``strength`` computed, ``chip`` from the window, ``source`` the file name and
#: ``blend_note`` empty.
OPTIONAL_COLUMNS: tuple[str, ...] = ("wave_air", "strength", "chip", "source", "blend_note")

#: Column order of a loaded line list (extra columns of a user list follow them).
COLUMNS: tuple[str, ...] = (
    "wave_vac",
    "wave_air",
    "species",
    "chi",
    "loggf",
    "strength",
    "window_lo",
    "window_hi",
    "chip",
    "source",
    "blend_note",
)

#: Species fehkit can turn into an iron abundance.
SPECIES: tuple[str, ...] = ("Fe I", "Fe II")

#: Half width of a fit window in apStar pixels. 20 pixels (~4.4 A, ~83 km/s) on each side hold the line
#: (FWHM ~3 pixels at R = 22,500) and enough continuum on both sides to fit it.
WINDOW_HALF_WIDTH_PIX = 20

#: Distance (A) that every fit window of the packaged list keeps from the edges of
#: :data:`fehkit.spectra.CHIPS`. apStar spectra are shifted to the star's rest frame, so the detector edges
#: move by ~0.05 A per km/s of radial velocity: 8 A keeps each window on its detector for |RV| up to
#: ~150 km/s. Halo giants can be faster; a window near an edge then loses pixels, which the EW stage sees as
#: masked pixels.
CHIP_MARGIN_A = 8.0

#: Temperature (K) of the strength index: a metal-poor red giant like the ones fehkit targets.
STRENGTH_TEFF = 4800.0

_NUMERIC_COLUMNS = ("wave_vac", "wave_air", "chi", "loggf", "strength", "window_lo", "window_hi")
# Physically sensible ranges, wide enough for any atomic line list, narrow enough to catch swapped columns
# (an air wavelength in the chi column, an EW in the log gf column).
_RANGES: dict[str, tuple[float, float]] = {"chi": (0.0, 15.0), "loggf": (-12.0, 4.0)}


def load_linelist(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read and check a line list: the packaged Fe I H-band list, or a CSV of your own.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A CSV file with at least the columns of :data:`REQUIRED_COLUMNS` (extra columns are kept).
        Default: the packaged ``fehkit/linelists/fe1_hband.csv``.

    Returns
    -------
    lines : pandas.DataFrame
        One row per line, sorted by ``wave_vac``, with the columns ``wave_vac``, ``wave_air`` (A),
        ``species``, ``chi`` (eV), ``loggf``, ``strength`` (dex, :func:`line_strength`), ``window_lo``,
        ``window_hi`` (vacuum A), ``chip``, ``source`` and ``blend_note``, then any extra columns.

    Raises
    ------
    LineListError
        If the file cannot be read, lacks a required column, or holds a value fehkit cannot use (a
        non-numeric or out-of-range number, an unknown species, a duplicated line, a window that does not
        contain its line). The message names the file, the column, what was found and what was expected.

    Warns
    -----
    FehkitWarning
        For lines whose fit window does not lie on one APOGEE detector (they cannot be measured).

    Examples
    --------
    >>> lines = load_linelist()
    >>> len(lines), sorted(set(lines["species"]))
    (30, ['Fe I'])
    >>> row = lines.iloc[0]
    >>> bool(row.window_lo < row.wave_vac < row.window_hi), row.chip
    (True, 'blue')
    """
    if path is None:
        resource = resources.files("fehkit").joinpath("linelists", DEFAULT_LINELIST)
        name = str(resource)
        try:
            with resource.open("r", encoding="utf-8") as fh:
                raw = _read_csv(fh, name)
        except FileNotFoundError as err:  # a broken installation, not a user error
            raise LineListError(f"{name}: packaged line list not found; reinstall fehkit") from err
    else:
        name = os.fspath(path)
        if not Path(name).is_file():
            raise LineListError(f"{name}: line list not found; expected a CSV file")
        raw = _read_csv(name, name)
    return _validate(raw, name)


@lru_cache(maxsize=1)
def packaged_linelist() -> pd.DataFrame:
    """Return the packaged line list, read and checked once per process (~10 ms); shared: pandas copies on write."""
    return load_linelist()


@lru_cache(maxsize=1)
def packaged_line_waves() -> np.ndarray:
    """Return the packaged line list's vacuum wavelengths (A), as an array read once; read-only (shared)."""
    waves = packaged_linelist()["wave_vac"].to_numpy(float, copy=True)
    waves.flags.writeable = False
    return waves


def air_to_vacuum(wave_air: Any) -> Any:
    """Convert air wavelengths to vacuum wavelengths (Angstrom), as APOGEE spectra need.

    Laboratory line lists such as linemake's give wavelengths in (standard) air; APOGEE's are in vacuum,
    4.2-4.5 A longer in the H band, about 20 apStar pixels. This is a thin wrapper around
    :func:`specutils.utils.wcs_utils.air_to_vac` with the refraction index of Morton (2000), the one VALD
    uses, inverted exactly (``scheme="iteration"``).

    Parameters
    ----------
    wave_air : float or array of float
        Air wavelengths in Angstrom (plain numbers, not astropy quantities).

    Returns
    -------
    wave_vac : float or numpy.ndarray of float64
        Vacuum wavelengths in Angstrom, a float for a scalar input, otherwise an array of the input's shape.

    Examples
    --------
    >>> round(air_to_vacuum(15207.526), 3)
    15211.682
    >>> air_to_vacuum([15207.526, 16486.669]).round(3).tolist()
    [15211.682, 16491.173]
    """
    import astropy.units as u
    from specutils.utils.wcs_utils import air_to_vac

    wave = np.asarray(wave_air, dtype=np.float64)
    vac = air_to_vac(np.atleast_1d(wave) * u.AA, scheme="iteration", method="Morton2000").to_value(u.AA)
    return _plain(np.asarray(vac, dtype=np.float64).reshape(wave.shape))


def line_strength(loggf: Any, chi: Any, teff: float = STRENGTH_TEFF) -> Any:
    """Curve-of-growth strength index ``log gf - (5040 / Teff) * chi`` of a line, in dex.

    For lines of one species in the weak-line regime, the EW is proportional to ``10**strength``: a line
    1 dex stronger by this index has a 10 times larger EW at the same abundance. It ranks lines; it is not an
    abundance or an EW.

    Parameters
    ----------
    loggf : float or array of float
        Oscillator strength times statistical weight of the lower level, log10.
    chi : float or array of float
        Excitation potential of the lower level, eV.
    teff : float
        Temperature in K of the Boltzmann factor (default 4800 K, a metal-poor red giant).

    Returns
    -------
    strength : float or numpy.ndarray
        The index, with the broadcast shape of ``loggf`` and ``chi``.

    Examples
    --------
    >>> round(line_strength(0.622, 5.304), 3)  # Fe I 15294.56
    -4.947
    """
    return _plain(np.asarray(loggf, dtype=np.float64) - 5040.0 / teff * np.asarray(chi, dtype=np.float64))


def line_window(wave_vac: Any, half_width_pix: int = WINDOW_HALF_WIDTH_PIX) -> tuple[Any, Any]:
    """Fit window of a line: the apStar pixel nearest the line, +-``half_width_pix`` pixels.

    Parameters
    ----------
    wave_vac : float or array of float
        Vacuum rest-frame wavelengths of the lines, Angstrom.
    half_width_pix : int
        Pixels on each side of the line's pixel; the window then holds ``2 * half_width_pix + 1`` pixels.

    Returns
    -------
    window_lo, window_hi : float or numpy.ndarray
        Wavelengths (A) of the first and last pixel of each window, on the apStar grid
        (:func:`fehkit.spectra.apstar_wavelength`).

    Examples
    --------
    >>> lo, hi = line_window(15211.682)
    >>> round(lo, 3), round(hi, 3)
    (15207.576, 15215.982)
    """
    pix = np.rint((np.log10(np.asarray(wave_vac, dtype=np.float64)) - APSTAR_CRVAL1) / APSTAR_CDELT1)
    lo = 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 * (pix - half_width_pix))
    hi = 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 * (pix + half_width_pix))
    return _plain(lo), _plain(hi)


# -- private helpers ----------------------------------------------------------------------------------------
_GRID_LO = 10.0**APSTAR_CRVAL1
_GRID_HI = 10.0 ** (APSTAR_CRVAL1 + APSTAR_CDELT1 * (APSTAR_NPIX - 1))


def _read_csv(source: Any, name: str) -> pd.DataFrame:
    """Read every cell as text, so that :func:`_validate` can say which value is wrong."""
    try:
        raw = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise LineListError(f"{name}: not readable as a CSV line list ({err})") from err
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def _validate(raw: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check columns and values of a line list read as text; return it typed, completed and sorted."""
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise LineListError(
            f"{name}: missing column(s) {', '.join(map(repr, missing))}; found columns {list(raw.columns)}, "
            f"expected at least {list(REQUIRED_COLUMNS)}"
        )
    if len(raw) == 0:
        raise LineListError(f"{name}: no lines; expected at least one row below the header")

    lines = raw.copy()
    for col in _NUMERIC_COLUMNS:
        if col not in lines:
            continue
        text = lines[col].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").astype(np.float64)
        # wave_air is informative only (the list's air wavelength as published); it may be blank.
        bad = ~np.isfinite(values) & ~((col == "wave_air") & (text == ""))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise LineListError(f"{name}: column {col!r}, {_row(i)}: found {text.iloc[i]!r}; expected a finite number")
        lines[col] = values

    for col, (lo, hi) in _RANGES.items():
        _check_range(lines, col, lo, hi, name, unit="")
    _check_range(lines, "wave_vac", _GRID_LO, _GRID_HI, name, unit=" A (the apStar grid, vacuum)")

    species = lines["species"].astype(str).str.strip()
    unknown = ~species.isin(SPECIES)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise LineListError(
            f"{name}: column 'species', {_row(i)}: found {species.iloc[i]!r}; expected one of {list(SPECIES)}"
        )
    lines["species"] = species

    outside = ~((lines["window_lo"] < lines["wave_vac"]) & (lines["wave_vac"] < lines["window_hi"]))
    if outside.any():
        i = int(np.flatnonzero(outside.to_numpy())[0])
        row = lines.iloc[i]
        raise LineListError(
            f"{name}: columns 'window_lo'/'window_hi', {_row(i)}: the fit window "
            f"{row.window_lo:.3f}-{row.window_hi:.3f} A does not contain the line at {row.wave_vac:.3f} A; "
            "expected window_lo < wave_vac < window_hi"
        )

    lines = lines.sort_values("wave_vac", kind="stable").reset_index(drop=True)
    # Two rows closer than 0.01 A are one line entered twice: its EW would be counted twice.
    dup = np.flatnonzero(np.diff(lines["wave_vac"].to_numpy()) < 0.01)
    if dup.size:
        w = lines["wave_vac"].iloc[dup[0]]
        raise LineListError(f"{name}: column 'wave_vac': found the line at {w:.3f} A twice; expected each line once")

    if "wave_air" not in lines:
        lines["wave_air"] = np.nan
    if "strength" not in lines:
        lines["strength"] = line_strength(lines["loggf"], lines["chi"])
    chip_lo = chip_of(lines["window_lo"].to_numpy())
    chip_hi = chip_of(lines["window_hi"].to_numpy())
    on_one_chip = (chip_lo != "") & (chip_lo == chip_hi)
    if "chip" not in lines:
        lines["chip"] = np.where(on_one_chip, chip_lo, "")
    if "source" not in lines:
        lines["source"] = Path(name).name
    if "blend_note" not in lines:
        lines["blend_note"] = ""
    if not on_one_chip.all():
        off = ", ".join(f"{w:.3f}" for w in lines.loc[~on_one_chip, "wave_vac"])
        warnings.warn(
            f"{name}: the fit windows of the lines at {off} A do not lie on one APOGEE detector "
            "(fehkit.spectra.CHIPS); they cannot be measured",
            FehkitWarning,
            stacklevel=3,
        )

    return lines[list(COLUMNS) + [c for c in lines.columns if c not in COLUMNS]]


def _check_range(lines: pd.DataFrame, col: str, lo: float, hi: float, name: str, unit: str) -> None:
    """Raise :class:`LineListError` for the first value of ``col`` outside ``[lo, hi]``."""
    values = lines[col].to_numpy()
    bad = (values < lo) | (values > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LineListError(f"{name}: column {col!r}, {_row(i)}: found {values[i]:g}; expected {lo:g} to {hi:g}{unit}")


def _plain(values: np.ndarray) -> Any:
    """Return a 0-d result as a Python float (what a scalar input expects), anything else unchanged."""
    return float(values) if np.ndim(values) == 0 else values


def _row(i: int) -> str:
    """Name data row ``i`` (0-based) the way a user finds it in an editor: the header is line 1."""
    return f"row {i + 1} (line {i + 2} of the file)"
