"""Read APOGEE spectrum files into a :class:`~fehkit.spectra.SpectrumBatch`, and write apStar-format files.

APOGEE DR17 ships a star's spectrum as an apStar (APO) or asStar (LCO) file: rows of flux, error and pixel
bitmask on one log-linear vacuum, rest-frame grid of 8,575 pixels (row 0: the pixel-weighted combination of all
visits; row 1: the global-weighted one; then one row per visit). aspcapStar files hold ASPCAP's continuum-
normalized version of row 0 on the same grid. apVisit files hold one visit's three detector chips on their own
wavelength solution in the observed frame; they are shifted to the rest frame and resampled onto the apStar grid
here, with inverse variance propagated. Pixels are masked where the flux is not finite, the error is zero, NaN
or huge (apStar gives unusable pixels errors of 1e10 or more), or the APOGEE_PIXMASK has a bad bit set
(:data:`DEFAULT_BAD_BITS`).

Every malformed file raises a subclass of :class:`~fehkit.errors.SpectrumFileError` naming the file, what was
found and what was expected; ``read_apogee(..., on_error="skip")`` reads every good file and reports the others.
:func:`check_spectrum_file` makes only the structural checks (FITS blocks, HDUs), e.g. on a download;
:func:`read_apogee_bytes` reads a file held in memory (an upload to the HTTP service) without touching the disk.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from astropy.io import fits

try:  # cfitsio through fitsio: the fast reader of apStar files on disk (astropy reads everything else, and all
    import fitsio  # of them without it)
except ImportError:  # pragma: no cover - fitsio has no Windows build
    fitsio = None

from fehkit.constants import SPEED_OF_LIGHT_KMS
from fehkit.errors import (
    BadValuesError,
    CorruptFileError,
    FehkitError,
    FehkitWarning,
    GridError,
    HeaderError,
    MissingHDUError,
    NotFITSError,
    OutputError,
    RowSelectionError,
    ShapeMismatchError,
    SpectrumFileError,
    SpectrumFileNotFoundError,
    SpectrumShapeError,
    UnsupportedFileError,
)
from fehkit.files import atomic_output
from fehkit.spectra import (
    APOGEE_FLUX_UNIT,
    APSTAR_CDELT1,
    APSTAR_CRVAL1,
    APSTAR_NPIX,
    SpectrumBatch,
    apstar_wavelength,
)

#: Bits of APOGEE_PIXMASK (DR17 datamodel).
PIXMASK_BITS: dict[str, int] = {
    "BADPIX": 0,
    "CRPIX": 1,
    "SATPIX": 2,
    "UNFIXABLE": 3,
    "BADDARK": 4,
    "BADFLAT": 5,
    "BADERR": 6,
    "NOSKY": 7,
    "LITTROW_GHOST": 8,
    "PERSIST_HIGH": 9,
    "PERSIST_MED": 10,
    "PERSIST_LOW": 11,
    "SIG_SKYLINE": 12,
    "SIG_TELLURIC": 13,
    "NOT_ENOUGH_PSF": 14,
}

#: Pixels with any of these bits are masked by default: the bits APOGEE itself rates "bad" (level 1 of its
#: PixelBitMask: bad, cosmic-ray, saturated, unfixable, bad dark/flat, bad error, no sky, <50% of the PSF) plus
#: SIG_SKYLINE, whose airglow residuals would otherwise enter equivalent widths (ASPCAP de-weights them too).
#: Persistence, Littrow-ghost and SIG_TELLURIC pixels are kept: they are warnings, and masking them would cost
#: ~8% of the pixels.
DEFAULT_BAD_BITS: tuple[str, ...] = (
    "BADPIX",
    "CRPIX",
    "SATPIX",
    "UNFIXABLE",
    "BADDARK",
    "BADFLAT",
    "BADERR",
    "NOSKY",
    "NOT_ENOUGH_PSF",
    "SIG_SKYLINE",
)

#: Errors at or above this value (in the file's flux unit) mark unusable pixels; apStar writes 1e10-1e14 there.
HUGE_ERROR = 1e9


Kind = Literal["auto", "apStar", "aspcapStar", "apVisit"]
Rows = Literal["combined", "visits", "all"] | Sequence[int]

_HEADER_META = {  # meta column -> apStar primary-header keyword
    "star_id": "OBJID",
    "telescope": "TELESCOP",
    "field": "FIELD",
    "ra": "RA",
    "dec": "DEC",
    "snr": "SNR",
    "nvisits": "NVISITS",
    "vhelio": "VHELIO",
    "vscatter": "VSCATTER",
}


def bad_bits_value(names: Iterable[str] = DEFAULT_BAD_BITS) -> int:
    """Turn APOGEE_PIXMASK bit names into the integer to AND a bitmask with.

    Examples
    --------
    >>> bad_bits_value(["BADPIX", "CRPIX"])
    3
    """
    value = 0
    for name in names:
        if name not in PIXMASK_BITS:
            raise FehkitError(f"bad_bits: unknown APOGEE_PIXMASK bit {name!r}; expected one of {sorted(PIXMASK_BITS)}")
        value |= 1 << PIXMASK_BITS[name]
    return value


# ---------------------------------------------------------------------------------------------------------------
# public readers
# ---------------------------------------------------------------------------------------------------------------
def read_apogee(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    kind: Kind = "auto",
    rows: Rows = "combined",
    on_error: Literal["raise", "skip"] = "raise",
    bad_bits: Iterable[str] = DEFAULT_BAD_BITS,
    rv: float | None = None,
    progress: bool = False,
) -> SpectrumBatch:
    """Read APOGEE spectrum files (apStar/asStar, aspcapStar, apVisit) into one batch on the apStar grid.

    Parameters
    ----------
    paths : path or iterable of paths
        FITS files, optionally gzipped (``.fits.gz``).
    kind : {"auto", "apStar", "aspcapStar", "apVisit"}
        File type; ``"auto"`` decides from the file name (apStar/asStar/aspcapStar/apVisit/asVisit prefix), or
        else from the HDU layout.
    rows : {"combined", "visits", "all"} or sequence of int
        apStar rows to read: the pixel-weighted combination (row 0, default), the individual visits, every row
        that holds data, or explicit 0-based row numbers. Ignored for other kinds.
    on_error : {"raise", "skip"}
        With ``"skip"``, a bad file is reported by a :class:`~fehkit.errors.FehkitWarning` and listed in the
        returned batch's ``skipped`` as (path, reason); the good files are read.
    bad_bits : iterable of str
        APOGEE_PIXMASK bits that mask a pixel; see :data:`DEFAULT_BAD_BITS`.
    rv : float, optional
        apVisit only: radial velocity (km/s) to shift by; default the file's ``VREL``/``VRAD`` header value.
    progress : bool
        Show a progress bar (tqdm, notebook-aware).

    Returns
    -------
    SpectrumBatch
        Spectra on the apStar grid; ``meta`` has ``file``, ``kind``, ``row``, ``visit``, ``star_id``, ``snr``,
        ``nvisits``, ``vhelio`` and the other header values the format holds.

    Raises
    ------
    SpectrumFileError
        With ``on_error="raise"``, for the first bad file; the message names it.

    Examples
    --------
    >>> from fehkit.examples import example_paths
    >>> batch = read_apogee(example_paths())
    >>> batch.n_spectra, batch.n_pixels
    (2, 8575)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if on_error not in ("raise", "skip"):
        raise FehkitError(f"on_error: expected 'raise' or 'skip', found {on_error!r}")
    bad = bad_bits_value(bad_bits)
    parts: list[_Spectra] = []
    skipped: list[tuple[str, str]] = []
    iterator: Iterable[str] = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="reading spectra", unit="file")
    for path in iterator:
        try:
            parts.append(_read_one(path, kind=kind, rows=rows, bad=bad, rv=rv))
        except SpectrumFileError as err:
            if on_error == "raise":
                raise
            skipped.append((path, str(err)))
            warnings.warn(f"skipped {err}", FehkitWarning, stacklevel=2)
    if not parts:
        if skipped:
            raise FehkitError(f"none of the {len(paths)} files could be read; first error: {skipped[0][1]}")
        raise FehkitError("read_apogee: expected at least one file path, found none")
    batch = _as_batch(parts)
    batch.skipped = skipped
    return batch


def read_apogee_bytes(
    data: bytes,
    name: str,
    kind: Kind = "auto",
    rows: Rows = "combined",
    bad_bits: Iterable[str] = DEFAULT_BAD_BITS,
    rv: float | None = None,
    max_bytes: int | None = None,
) -> SpectrumBatch:
    """Read one APOGEE spectrum file held in memory (an upload), as :func:`read_apogee` reads a file.

    Nothing is written to disk and ``name`` is never opened: it stands for the file in messages and in
    ``meta["file"]``, and decides the kind as a file name would (``kind="auto"``). ``max_bytes`` caps the size of
    the FITS data after gunzip (a small gzip stream can expand to gigabytes): larger data raise
    :class:`~fehkit.errors.UnsupportedFileError` before they are decompressed further. The other parameters are
    those of :func:`read_apogee`.

    Examples
    --------
    >>> from fehkit.examples import example_paths
    >>> path = example_paths()[0]
    >>> read_apogee_bytes(path.read_bytes(), path.name).n_spectra
    1
    """
    if max_bytes is not None and int(max_bytes) < 1:
        raise FehkitError(f"max_bytes = {max_bytes}: expected a positive number of bytes")
    with _parse_fits(bytes(data), name, max_bytes) as hdul:
        return _as_batch([_read_hdul(name, hdul, kind, rows, bad_bits_value(bad_bits), rv)])


def read_apogee_recorded(paths: Sequence[str | os.PathLike[str]]) -> tuple[SpectrumBatch, list[tuple[str, type]]]:
    """Read files into one batch as :func:`read_apogee` does, and return it with the warnings raised meanwhile.

    For a reading process (``fehkit.infer`` reads chunks ahead in other processes): its warnings, as (message,
    category) pairs, are raised again by the caller, and a bad file's :class:`~fehkit.errors.SpectrumFileError`
    pickles with its path and problem.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = read_apogee(paths)
    return batch, [(str(w.message), w.category) for w in caught]


def reader_ready() -> int:
    """Return this process's id: a reading process (see :func:`read_apogee_recorded`) has imported the readers."""
    return os.getpid()


def read_apstar(
    path: str | os.PathLike[str], rows: Rows = "combined", bad_bits: Iterable[str] = DEFAULT_BAD_BITS
) -> SpectrumBatch:
    """Read rows of one apStar/asStar file. See :func:`read_apogee` for the parameters."""
    return _as_batch([_read_one(os.fspath(path), kind="apStar", rows=rows, bad=bad_bits_value(bad_bits), rv=None)])


def read_aspcapstar(path: str | os.PathLike[str]) -> SpectrumBatch:
    """Read the continuum-normalized spectrum of one aspcapStar file (``flux_unit`` is ``""``)."""
    return _as_batch([_read_one(os.fspath(path), kind="aspcapStar", rows="combined", bad=0, rv=None)])


def read_apvisit(
    path: str | os.PathLike[str], rv: float | None = None, bad_bits: Iterable[str] = DEFAULT_BAD_BITS
) -> SpectrumBatch:
    """Read one apVisit file, shifted to the rest frame and resampled onto the apStar grid.

    See :func:`read_apogee` for the parameters and :func:`resample_to_apstar` for the method.
    """
    return _as_batch([_read_one(os.fspath(path), kind="apVisit", rows="combined", bad=bad_bits_value(bad_bits),
                                rv=rv)])


def check_spectrum_file(path: str | os.PathLike[str], kind: Kind = "auto", name: str | None = None) -> str:
    """Check a spectrum file's structure without reading its spectra; return its kind.

    The checks the readers make first: gzip integrity, FITS structure in whole 2880-byte blocks (every data unit
    is read), and the HDUs the kind needs (numeric images). Used on each download before it enters the cache.

    Parameters
    ----------
    path : path
        The file (FITS, optionally gzipped).
    kind : {"auto", "apStar", "aspcapStar", "apVisit"}
        As in :func:`read_apogee`; ``"auto"`` decides from ``name`` (or the file name), else from the HDUs.
    name : str, optional
        The name to decide the kind from, when ``path`` is a temporary file.

    Returns
    -------
    str
        "apStar", "aspcapStar" or "apVisit".

    Raises
    ------
    SpectrumFileError
        Naming ``path``, what was found and what was expected.
    """
    path = os.fspath(path)
    with _open_fits(path) as hdul:
        kind = _detect_kind(name or path, hdul) if kind == "auto" else kind
        if kind not in _NEEDED_HDUS:
            raise FehkitError(f"kind: expected 'auto', 'apStar', 'aspcapStar' or 'apVisit', found {kind!r}")
        _require_hdus(path, hdul, *_NEEDED_HDUS[kind])
    return kind


# ---------------------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------------------
def write_apstar(
    batch: SpectrumBatch,
    directory: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write each spectrum of a batch as an apStar-format FITS file.

    The files follow the DR17 apStar layout closely enough for :func:`read_apogee` and for specutils'
    ``Spectrum.read(path, format="APOGEE apStar")``: HDU0 header (grid keywords, OBJID, SNR, NVISITS=1,
    VHELIO, ...), HDU1 flux, HDU2 error, HDU3 APOGEE_PIXMASK, HDU4-7 sky, sky error, telluric, telluric error,
    each shaped (2, 8575) like a one-visit DR17 file (row 1 all zero). Masked pixels whose bitmask has no
    default bad bit get BADPIX, so the mask survives a round trip. Each file is written to a temporary
    name and renamed, so no half-written file is left behind.

    Parameters
    ----------
    batch : SpectrumBatch
        Spectra on the apStar grid.
    directory : path
        Output folder, created if needed.
    names : sequence of str, optional
        File names; default ``apStar-{star_id}.fits`` (``star_id`` from ``batch.meta``, else a running number).
    overwrite : bool
        Replace existing files instead of raising :class:`~fehkit.errors.OutputError`.

    Returns
    -------
    list of Path
        The files written, in batch order.
    """
    if batch.n_pixels != APSTAR_NPIX or not np.allclose(batch.wave, apstar_wavelength(), rtol=1e-9, atol=0):
        raise SpectrumShapeError(
            f"write_apstar: batch is on a {batch.n_pixels}-pixel grid {batch.wave[0]:.2f}-{batch.wave[-1]:.2f} A; "
            f"expected the apStar grid ({APSTAR_NPIX} px, 10**({APSTAR_CRVAL1} + {APSTAR_CDELT1}*i))"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    meta = batch.meta
    if names is None:
        ids = meta["star_id"].astype(str) if "star_id" in meta else pd.Series([f"{i:06d}" for i in range(len(batch))])
        names = [f"apStar-{_safe_name(s)}.fits" for s in ids]
    if len(names) != batch.n_spectra:
        raise SpectrumShapeError(f"write_apstar: names has {len(names)} entries; expected {batch.n_spectra}")
    written = []
    for i, name in enumerate(names):
        path = out / name
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; pass overwrite=True to replace it")
        with atomic_output(path) as tmp:
            _apstar_hdulist(batch, i).writeto(tmp, overwrite=True, checksum=True)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------------------------
def resample_to_apstar(
    wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, bad: np.ndarray, bitmask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linearly interpolate one chip's spectrum onto the apStar grid, propagating the inverse variance.

    A target pixel between source pixels j and j+1 at fraction t gets ``f = (1-t) f_j + t f_{j+1}`` and
    ``var = (1-t)^2 var_j + t^2 var_{j+1}`` (noise correlations between neighbouring output pixels are ignored,
    as is usual); it is masked when either neighbour is bad, and its bitmask is the OR of both. Target pixels
    outside the chip get NaN flux, zero inverse variance and the mask.

    Parameters
    ----------
    wave : (n_src,) float64
        Increasing rest-frame vacuum wavelengths of the chip, Angstrom.
    flux, ivar : (n_src,) float
        Flux and inverse variance.
    bad : (n_src,) bool
        Source pixels not to use.
    bitmask : (n_src,) int, optional
        APOGEE_PIXMASK of the source pixels.

    Returns
    -------
    flux, ivar, mask, bitmask : (8575,) arrays
    """
    target = apstar_wavelength()
    out_flux = np.full(target.size, np.nan)
    out_ivar = np.zeros(target.size)
    out_mask = np.ones(target.size, bool)
    out_bits = np.zeros(target.size, np.int64)
    inside = (target >= wave[0]) & (target <= wave[-1])
    x = target[inside]
    j = np.clip(np.searchsorted(wave, x, side="right") - 1, 0, wave.size - 2)
    t = (x - wave[j]) / (wave[j + 1] - wave[j])
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(ivar > 0, 1.0 / ivar, np.inf)
    f = (1 - t) * flux[j] + t * flux[j + 1]
    v = (1 - t) ** 2 * var[j] + t**2 * var[j + 1]
    b = bad[j] | bad[j + 1] | ~np.isfinite(v)
    out_flux[inside] = f
    with np.errstate(divide="ignore"):
        out_ivar[inside] = np.where(b, 0.0, 1.0 / v)
    out_mask[inside] = b
    if bitmask is not None:
        out_bits[inside] = bitmask[j] | bitmask[j + 1]
    return out_flux, out_ivar, out_mask, out_bits


# ---------------------------------------------------------------------------------------------------------------
# private: one file
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Spectra:
    """What one file gives: its spectra's arrays and meta rows, joined with other files' into one batch at the end.

    One batch for all files, not one per file joined later: a batch's checks and a pandas frame cost ~2 ms each,
    as much as cfitsio's reading of the file.
    """

    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    bitmask: np.ndarray | None
    records: list[dict[str, Any]]
    flux_unit: str = APOGEE_FLUX_UNIT


def _as_batch(parts: Sequence[_Spectra]) -> SpectrumBatch:
    """Join files' spectra into one batch (as :meth:`SpectrumBatch.concat` would join one batch per file)."""
    first = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if part.flux_unit != first.flux_unit:
            raise SpectrumShapeError(f"concat: batch {i} has flux unit {part.flux_unit!r}, expected "
                                     f"{first.flux_unit!r}")

    def joined(name: str, dtype: Any) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return arrays[0].astype(dtype) if len(arrays) == 1 else np.concatenate(arrays, dtype=dtype)

    with_bits = all(p.bitmask is not None for p in parts)
    return SpectrumBatch(apstar_wavelength(), joined("flux", np.float32), joined("ivar", np.float32),
                         joined("mask", bool), pd.DataFrame.from_records([r for p in parts for r in p.records]),
                         bitmask=joined("bitmask", np.int64) if with_bits else None, flux_unit=first.flux_unit)


def _read_one(path: str, kind: Kind, rows: Rows, bad: int, rv: float | None) -> _Spectra:
    fast = _read_apstar_fitsio(path, kind, rows, bad)
    if fast is not None:
        return fast
    with _open_fits(path) as hdul:
        return _read_hdul(path, hdul, kind, rows, bad, rv)


def _read_apstar_fitsio(path: str, kind: Kind, rows: Rows, bad: int) -> _Spectra | None:
    """Read a plain (not gzipped) apStar file through fitsio, or return None for the astropy path to read it.

    cfitsio parses the headers and reads the three images ~8 times faster than astropy's pure-Python header
    parser (the time of a whole survey's files is mostly spent there), then the same checks and conversions make
    the same batch. Only what is surely a whole apStar goes this way: an apStar/asStar by name (or
    ``kind="apStar"``), FITS blocks that fill the file to the end of its last HDU, numeric images with data in
    HDU1-3. Anything else -- a gzipped file, no fitsio, or any complaint of cfitsio -- returns None, and astropy
    reads the file and names its problem. A problem in the data themselves (a wrong grid, negative errors, no
    usable pixel, ...) raises here, as on the astropy path. One difference may remain: a header card that breaks
    the FITS standard in a way cfitsio tolerates is read here, where astropy's stricter check refuses the file.
    """
    if fitsio is None or kind not in ("auto", "apStar"):
        return None
    if kind == "auto" and not re.match(r"a[ps]Star", Path(path).name):
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if size % 2880 or fh.read(9) != b"SIMPLE  =":
                return None
        with fitsio.FITS(path) as f:
            n_hdu = len(f)
            if n_hdu < _NEEDED_HDUS["apStar"][0] or f[n_hdu - 1].get_offsets()["data_end"] > size:
                return None
            if any(f[k].get_exttype() != "IMAGE_HDU" or not f[k].has_data() for k in (1, 2, 3)):
                return None
            headers = f[0].read_header(), f[1].read_header()
            images = [np.atleast_2d(f[k].read()) for k in (1, 2, 3)]
    except Exception:  # noqa: BLE001 - cfitsio's errors come as OSError, ValueError, ...: astropy diagnoses them
        return None
    if not all(np.issubdtype(a.dtype, np.number) for a in images):
        return None
    return _apstar_batch(path, *images, *headers, rows, bad)


def _read_hdul(path: str, hdul: fits.HDUList, kind: Kind, rows: Rows, bad: int, rv: float | None) -> _Spectra:
    kind = _detect_kind(path, hdul) if kind == "auto" else kind
    if kind == "apStar":
        return _read_apstar(path, hdul, rows, bad)
    if kind == "aspcapStar":
        return _read_aspcapstar(path, hdul)
    if kind == "apVisit":
        return _read_apvisit(path, hdul, bad, rv)
    raise FehkitError(f"kind: expected 'auto', 'apStar', 'aspcapStar' or 'apVisit', found {kind!r}")


def _open_fits(path: str) -> fits.HDUList:
    """Open a (gzipped) FITS file fully in memory, turning every failure into a named SpectrumFileError."""
    p = Path(path)
    if not p.exists():
        raise SpectrumFileNotFoundError(path, "no such file")
    if p.is_dir():
        raise NotFITSError(path, "is a directory; expected a FITS file")
    return _parse_fits(p.read_bytes(), path)


def _gunzip(raw: bytes, path: str, max_bytes: int) -> bytes:
    """Decompress gzip data (all its members), refusing to produce more than ``max_bytes``."""
    out: list[bytes] = []
    size = 0
    while raw:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = d.decompress(raw, max_bytes - size + 1)
        except zlib.error as err:
            raise CorruptFileError(path, f"corrupt or truncated gzip stream ({err}); expected gzipped FITS") from None
        size += len(part)
        if size > max_bytes or d.unconsumed_tail:
            raise UnsupportedFileError(path, f"decompresses to more than {max_bytes} bytes; expected at most that")
        if not d.eof:
            raise CorruptFileError(path, "corrupt or truncated gzip stream (it ends before its end-of-stream "
                                         "marker); expected gzipped FITS")
        out.append(part)
        raw = d.unused_data.lstrip(b"\x00")  # another member may follow; zero padding is not one
    return b"".join(out)


def _parse_fits(raw: bytes, path: str, max_bytes: int | None = None) -> fits.HDUList:
    """Open FITS bytes (optionally gzipped) held in memory; ``path`` names them in every SpectrumFileError."""
    if not raw:
        raise NotFITSError(path, "empty file (0 bytes); expected a FITS file")
    if raw[:2] == b"\x1f\x8b":
        if max_bytes is not None:
            raw = _gunzip(raw, path, int(max_bytes))
        else:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as err:
                raise CorruptFileError(path, f"corrupt or truncated gzip stream ({err}); expected gzipped "
                                             "FITS") from None
    if max_bytes is not None and len(raw) > int(max_bytes):
        raise UnsupportedFileError(path, f"{len(raw)} bytes of FITS data; expected at most {int(max_bytes)}")
    if not raw.startswith(b"SIMPLE  ="):
        head = raw[:20].decode("ascii", "replace").strip()
        raise NotFITSError(path, f"does not start with a FITS header (found {head!r}); expected 'SIMPLE  ='")
    if len(raw) % 2880:
        raise CorruptFileError(
            path, f"{len(raw)} bytes, not a whole number of 2880-byte FITS blocks as expected: the file looks truncated"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", category=fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*truncated.*")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for hdu in hdul:  # touch every data unit now, so a truncation shows here, not later
                _ = hdu.data
    except Exception as err:  # astropy raises OSError, ValueError, TypeError or warnings-as-errors here
        raise CorruptFileError(path, f"damaged FITS structure ({type(err).__name__}: {err})") from None
    return hdul


def _detect_kind(path: str, hdul: fits.HDUList) -> Kind:
    name = Path(path).name
    if re.match(r"a[ps]Star", name):
        return "apStar"
    if name.startswith("aspcapStar"):
        return "aspcapStar"
    if re.match(r"a[ps]Visit", name):
        return "apVisit"
    # Unknown name: decide from the layout.
    shapes = [getattr(h.data, "shape", None) if isinstance(h, fits.ImageHDU | fits.PrimaryHDU) else "table"
              for h in hdul]
    if len(hdul) > 4 and shapes[1] == (3, 4096) and shapes[4] == (3, 4096):
        return "apVisit"
    if len(hdul) > 4 and isinstance(hdul[4], fits.BinTableHDU) and "CRVAL1" in hdul[1].header:
        return "aspcapStar"  # its HDU3 (best fit) is an image too, so this test comes before apStar's
    if len(hdul) > 3 and isinstance(hdul[3], fits.ImageHDU) and any("CRVAL1" in h.header for h in hdul[:2]):
        return "apStar"
    raise UnsupportedFileError(
        path,
        f"FITS file with HDUs {shapes}; expected an APOGEE apStar/asStar (images (NROW, 8575) in HDU1-3), "
        "aspcapStar or apVisit (images (3, 4096) in HDU1-4) spectrum",
    )


def _require_hdus(path: str, hdul: fits.HDUList, n: int, what: str) -> None:
    if len(hdul) < n:
        raise MissingHDUError(path, f"has {len(hdul)} HDUs; expected at least {n} ({what})")
    for k in range(1, n):
        if hdul[k].data is None:
            raise MissingHDUError(path, f"HDU{k} holds no data; expected {what.split(', ')[k]}")
        if not isinstance(hdul[k], fits.ImageHDU) or not np.issubdtype(hdul[k].data.dtype, np.number):
            raise UnsupportedFileError(path, f"HDU{k} is a {type(hdul[k]).__name__}; expected a numeric image")


def _check_apstar_grid(path: str, header0: Any, header: Any, n_pix: int) -> None:
    """Check the grid keywords of HDU1's ``header`` (else of the primary ``header0``) and the pixel count."""
    for key in ("CRVAL1", "CDELT1"):
        if key not in header and key not in header0:
            raise HeaderError(
                path,
                f"missing wavelength keyword {key} (in HDU0 and HDU1); expected the apStar log-linear grid "
                f"CRVAL1={APSTAR_CRVAL1}, CDELT1={APSTAR_CDELT1}",
            )
    crval = float(header.get("CRVAL1", header0.get("CRVAL1")))
    cdelt = float(header.get("CDELT1", header0.get("CDELT1")))
    crpix = float(header.get("CRPIX1", header0.get("CRPIX1", 1)))
    ctype = str(header.get("CTYPE1", header0.get("CTYPE1", "LOG-LINEAR"))).strip()
    if ctype != "LOG-LINEAR":
        raise GridError(path, f"CTYPE1 is {ctype!r}; expected 'LOG-LINEAR' (log10 wavelength)")
    if n_pix != APSTAR_NPIX:
        raise GridError(path, f"NAXIS1 is {n_pix}; expected {APSTAR_NPIX} pixels of the apStar grid")
    start = crval - (crpix - 1) * cdelt
    if abs(start - APSTAR_CRVAL1) > 1e-9 or abs(cdelt - APSTAR_CDELT1) > 1e-12:
        raise GridError(
            path,
            f"grid starts at log10(lambda)={start} with step {cdelt}; expected {APSTAR_CRVAL1} and {APSTAR_CDELT1}",
        )


def _error_to_ivar(path: str, flux: np.ndarray, err: np.ndarray, where: str) -> np.ndarray:
    negative = np.isfinite(flux) & (err < 0)
    if negative.any():
        raise BadValuesError(
            path, f"{where}: {int(negative.sum())} pixels have negative errors; expected errors >= 0 (0 = no data)"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        usable = np.isfinite(err) & (err > 0) & (err < HUGE_ERROR)
        return np.where(usable, 1.0 / err**2, 0.0)


def _check_usable(path: str, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, labels: list[str]) -> None:
    good = np.isfinite(flux) & (ivar > 0) & ~mask
    for k, label in enumerate(labels):
        if not good[k].any():
            n_nan = int((~np.isfinite(flux[k])).sum())
            raise BadValuesError(
                path,
                f"{label} has no usable pixel ({n_nan} of {flux.shape[1]} flux values NaN, "
                f"{int((ivar[k] > 0).sum())} with a positive finite error); expected a spectrum with data",
            )


def _header_meta(header: fits.Header) -> dict[str, Any]:
    """Pick the meta columns of :data:`_HEADER_META` from a primary header ("" or NaN when absent)."""
    meta: dict[str, Any] = {}
    for column, key in _HEADER_META.items():
        value = header.get(key)
        text_column = column in ("star_id", "telescope", "field")
        if value is None:
            value = "" if text_column else np.nan
        meta[column] = value.strip() if isinstance(value, str) else value
    # files fehkit simulated say so (write_apstar); they stay labelled synthetic when read back
    meta["synthetic"] = bool(header.get("SYNTHETI", False))
    return meta


#: HDUs each kind needs: how many, and what they hold (for the messages).
_NEEDED_HDUS: dict[str, tuple[int, str]] = {
    "apStar": (4, "header, flux, error, bitmask"),
    "aspcapStar": (3, "header, normalized flux, error"),
    "apVisit": (5, "header, flux, error, bitmask, wavelength"),
}


def _read_apstar(path: str, hdul: fits.HDUList, rows: Rows, bad: int) -> _Spectra:
    _require_hdus(path, hdul, *_NEEDED_HDUS["apStar"])
    flux, err, bits = (np.atleast_2d(hdul[k].data) for k in (1, 2, 3))
    return _apstar_batch(path, flux, err, bits, hdul[0].header, hdul[1].header, rows, bad)


def _apstar_batch(path: str, flux: np.ndarray, err: np.ndarray, bits: np.ndarray, header: Any, header1: Any,
                  rows: Rows, bad: int) -> _Spectra:
    """Return the spectra of an apStar file's images and HDU0, HDU1 headers (astropy's or fitsio's), checked."""
    if not (flux.shape == err.shape == bits.shape):
        raise ShapeMismatchError(
            path, f"flux {flux.shape}, error {err.shape} and bitmask {bits.shape} differ; expected one shape"
        )
    _check_apstar_grid(path, header, header1, flux.shape[1])
    nvisits = int(header.get("NVISITS", max(flux.shape[0] - 2, 1)))
    row_ids = _select_rows(path, rows, flux, nvisits)
    flux = flux[row_ids].astype(np.float64)
    err = err[row_ids].astype(np.float64)
    bits = bits[row_ids].astype(np.int64)
    ivar = _error_to_ivar(path, flux, err, "HDU2")
    mask = (bits & bad) != 0
    labels = [f"row {r}" for r in row_ids]
    _check_usable(path, flux, ivar, mask, labels)
    base = _header_meta(header)
    if not base["star_id"]:
        base["star_id"] = _id_from_name(path)
    records = []
    for r in row_ids:
        rec = dict(base, file=path, kind="apStar", row=r, visit=0)
        if r >= 2 or (nvisits == 1 and rows == "visits"):
            v = r - 1 if r >= 2 else 1
            rec.update(visit=v, snr=header.get(f"SNRVIS{v}", np.nan), vhelio=header.get(f"VHELIO{v}", np.nan),
                       visit_file=str(header.get(f"SFILE{v}", "")).strip())
        records.append(rec)
    return _Spectra(flux, ivar, mask, bits, records)


def _select_rows(path: str, rows: Rows, flux: np.ndarray, nvisits: int) -> list[int]:
    n_rows = flux.shape[0]
    if isinstance(rows, str):
        if rows == "combined":
            return [0]
        if rows == "visits":
            # DR17: rows 0-1 are combinations and visits follow, except for one-visit stars, whose file has the
            # combined row and an all-zero row only: there the combined row *is* the visit.
            if nvisits == 1:
                return [0]
            if n_rows < 3:
                raise RowSelectionError(path, f"NVISITS is {nvisits} but the file has {n_rows} rows; expected "
                                        "visit rows after the two combined rows")
            return list(range(2, n_rows))
        if rows == "all":  # every row that holds data (one-visit files carry an all-zero second row)
            return [r for r in range(n_rows) if np.any(np.nan_to_num(flux[r]) != 0)] or [0]
        raise RowSelectionError(path, f"rows={rows!r}; expected 'combined', 'visits', 'all' or row numbers")
    ids = [int(r) for r in rows]
    outside = [r for r in ids if not 0 <= r < n_rows]
    if outside or not ids:
        raise RowSelectionError(path, f"rows {outside or ids} requested; the file has rows 0-{n_rows - 1}")
    return ids


def _read_aspcapstar(path: str, hdul: fits.HDUList) -> _Spectra:
    _require_hdus(path, hdul, *_NEEDED_HDUS["aspcapStar"])
    flux, err = np.atleast_2d(hdul[1].data), np.atleast_2d(hdul[2].data)
    if flux.shape != err.shape:
        raise ShapeMismatchError(path, f"flux {flux.shape} and error {err.shape} differ; expected one shape")
    if flux.shape[0] != 1:
        raise ShapeMismatchError(path, f"flux has {flux.shape[0]} rows; expected 1 (aspcapStar holds one spectrum)")
    _check_apstar_grid(path, hdul[0].header, hdul[1].header, flux.shape[1])
    flux, err = flux.astype(np.float64), err.astype(np.float64)
    ivar = _error_to_ivar(path, flux, err, "HDU2")
    mask = np.zeros(flux.shape, bool)
    _check_usable(path, flux, ivar, mask, ["HDU1"])
    meta = _header_meta(hdul[0].header)
    table = hdul[4].data if len(hdul) > 4 and isinstance(hdul[4], fits.BinTableHDU) else None
    names = [] if table is None else [n.upper() for n in table.columns.names]
    if not meta["star_id"]:
        meta["star_id"] = str(table["APOGEE_ID"][0]).strip() if "APOGEE_ID" in names else _id_from_name(path)
    # ASPCAP's own parameters, when the file carries its allStar row (useful as stellar parameters later).
    for column, key in (("aspcap_teff", "TEFF"), ("aspcap_logg", "LOGG"), ("aspcap_m_h", "M_H"),
                        ("aspcap_vmicro", "VMICRO"), ("snr", "SNR")):
        if key in names:
            meta[column] = float(np.ravel(table[key])[0])
    meta.update(file=path, kind="aspcapStar", row=0, visit=0)
    return _Spectra(flux, ivar, mask, None, [meta], flux_unit="")


def _read_apvisit(path: str, hdul: fits.HDUList, bad: int, rv: float | None) -> _Spectra:
    _require_hdus(path, hdul, *_NEEDED_HDUS["apVisit"])
    flux, err, bits, wave = (np.atleast_2d(hdul[k].data) for k in (1, 2, 3, 4))
    if not (flux.shape == err.shape == bits.shape == wave.shape):
        raise ShapeMismatchError(
            path,
            f"flux {flux.shape}, error {err.shape}, bitmask {bits.shape} and wavelength {wave.shape} differ; "
            "expected (3, 4096) each",
        )
    header = hdul[0].header
    if rv is None:
        for key in ("VREL", "VRAD"):
            if isinstance(header.get(key), (int, float)):
                rv = float(header[key])
                break
        else:
            raise HeaderError(
                path, "no VREL or VRAD keyword; expected the visit's radial velocity there, or pass rv= (km/s)"
            )
    flux, err, wave = flux.astype(np.float64), err.astype(np.float64), wave.astype(np.float64)
    ivar = _error_to_ivar(path, flux, err, "HDU2")
    src_bad = ((bits.astype(np.int64) & bad) != 0) | ~np.isfinite(flux) | ~(ivar > 0)
    rest = wave / (1.0 + rv / SPEED_OF_LIGHT_KMS)
    out = [np.full(APSTAR_NPIX, np.nan), np.zeros(APSTAR_NPIX), np.ones(APSTAR_NPIX, bool),
           np.zeros(APSTAR_NPIX, np.int64)]
    for chip in range(flux.shape[0]):
        order = np.argsort(rest[chip])  # apVisit chips run red to blue, each in descending wavelength
        f, iv, m, b = resample_to_apstar(rest[chip][order], flux[chip][order], ivar[chip][order],
                                         src_bad[chip][order], bits[chip][order].astype(np.int64))
        covered = np.isfinite(f)
        out[0][covered], out[1][covered], out[2][covered], out[3][covered] = (
            f[covered], iv[covered], m[covered], b[covered])
    _check_usable(path, out[0][None], out[1][None], out[2][None], ["resampled visit"])
    meta = _header_meta(header)
    if not meta["star_id"]:
        meta["star_id"] = _id_from_name(path)
    meta.update(file=path, kind="apVisit", row=0, visit=1, nvisits=1, rv_applied=rv)
    return _Spectra(out[0][None], out[1][None], out[2][None], out[3][None], [meta])


def _id_from_name(path: str) -> str:
    stem = Path(path).name.split(".fits")[0]
    return re.sub(r"^(a[ps]Star|aspcapStar|a[ps]Visit)-(dr\d+-|r\d+-)?", "", stem)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+_.-]", "_", text) or "star"


def _apstar_hdulist(batch: SpectrumBatch, i: int) -> fits.HDUList:
    meta = batch.meta.iloc[i]
    primary = fits.PrimaryHDU()
    h = primary.header
    grid = [("CRVAL1", APSTAR_CRVAL1, "Start log10(wavelength) in subsequent HDUs"),
            ("CDELT1", APSTAR_CDELT1, "Dispersion in log10(wave) in subsequent HDUs"),
            ("CRPIX1", 1, "Pixel of starting wavelength in subsequent HDUs"),
            ("CTYPE1", "LOG-LINEAR", "Logarithmic wavelength scale in subsequent HDUs"),
            ("DC-FLAG", 1, "Logarithmic wavelength scale in subsequent HDUs")]
    for key, value, comment in grid:
        h[key] = (value, comment)
    h["NWAVE"] = (APSTAR_NPIX, "Number of wavelengths in subsequent HDUs")
    for column, key in _HEADER_META.items():
        value = meta.get(column)
        if value is None or (isinstance(value, float) and not np.isfinite(value)) or value == "":
            continue
        h[key] = value.item() if isinstance(value, np.generic) else value
    h["NVISITS"] = 1
    if "synthetic" in meta and bool(meta["synthetic"]):
        h["SYNTHETI"] = (True, "SYNTHETIC spectrum (fehkit), not observed")
    h["ORIGIN"] = ("fehkit", "apStar-format file written by fehkit")
    h.add_history("APOGEE apStar format (DR17 layout) written by fehkit")
    for k, text in enumerate(["flux", "flux uncertainty", "pixel bitmask", "sky", "sky uncertainty", "telluric",
                              "telluric uncertainty"], start=1):
        h.add_history(f"HDU{k} : {text}")

    flux = batch.flux[i].astype(np.float32)
    with np.errstate(divide="ignore"):
        err = np.where(batch.ivar[i] > 0, 1.0 / np.sqrt(batch.ivar[i]), np.nan).astype(np.float32)
    bits = np.zeros(APSTAR_NPIX, np.int64) if batch.bitmask is None else batch.bitmask[i].copy()
    # A pixel masked for a reason the bitmask does not already give (a user's mask, say) gets BADPIX, so the
    # mask survives a round trip with the default bad bits while flux and error stay as they are.
    unexplained = batch.mask[i] & np.isfinite(flux) & (batch.ivar[i] > 0) & ((bits & bad_bits_value()) == 0)
    bits[unexplained] |= 1 << PIXMASK_BITS["BADPIX"]
    unit = batch.flux_unit or "normalized flux"

    def image(row: np.ndarray, bunit: str | None = None) -> fits.ImageHDU:
        data = np.zeros((2, APSTAR_NPIX), row.dtype)
        data[0] = row
        hdu = fits.ImageHDU(data)
        for key, value, _ in grid[:4]:
            hdu.header[key] = value
        if bunit:
            hdu.header["BUNIT"] = bunit
        return hdu

    zeros = np.zeros(APSTAR_NPIX, np.float32)
    return fits.HDUList([
        primary,
        image(flux, f"Flux ({unit})" if batch.flux_unit == APOGEE_FLUX_UNIT else unit),
        image(err),
        image(bits),
        image(zeros),
        image(zeros),
        image(np.ones(APSTAR_NPIX, np.float32)),
        image(zeros),
    ])
