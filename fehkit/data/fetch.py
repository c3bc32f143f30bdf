"""Fetch APOGEE DR17 spectrum files for rows of the allStar catalogue: parallel, cached, resumable.

An apStar (APO) or asStar (LCO) file lives on the SAS at ``.../stars/{TELESCOPE}/{FIELD}/{FILE}``: the three
allStar columns name it, so paths are always built from them, never guessed from the APOGEE id. Files land in the
cache under the url's path; each one is written under a temporary name and renamed only when complete and checked
(it opens as FITS, in whole 2880-byte blocks, with the HDUs its kind needs: a mirror's HTML error page or a cut
file sent with status 200 is retried, then reported failed, never cached), and its sha256 is recorded beside it.
So a batch that was interrupted (or that lost some files to a failing server) is simply run again: files already
cached, intact and passing the check are not downloaded a second time; the others are fetched again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fehkit.data.errors import BatchDownloadError, DataAccessError
from fehkit.data.manifest import Manifest, apply_mirror, cache_path, download_file, load_manifest
from fehkit.errors import FehkitError, FehkitWarning

#: Manifest product and the allStar columns (case-insensitive; first alias found wins) each kind of file needs.
SPECTRUM_KINDS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "apStar": ("apstar_dr17", {"telescope": ("TELESCOPE", "Tel"), "field": ("FIELD",), "file": ("FILE",)}),
    "aspcapStar": (
        "aspcapstar_dr17",
        {"telescope": ("TELESCOPE", "Tel"), "field": ("FIELD",), "apogee_id": ("APOGEE_ID", "APOGEE")},
    ),
}


def fetch_spectra(
    rows: pd.DataFrame | Any,
    *,
    kind: Literal["apStar", "aspcapStar"] = "apStar",
    cache: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    workers: int = 4,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    on_error: Literal["raise", "skip"] = "raise",
) -> pd.DataFrame:
    """Download the spectrum file of every row into the cache (files already there and passing the check are reused).

    Parameters
    ----------
    rows : DataFrame, astropy Table, or path to a CSV/FITS table
        allStar-like rows with TELESCOPE, FIELD and FILE columns (any case; VizieR's ``Tel`` works too), e.g.
        from :func:`~fehkit.data.query_apogee`. ``kind="aspcapStar"`` needs APOGEE_ID instead of FILE.
    kind : {"apStar", "aspcapStar"}
        Which file of each star: the combined spectrum (apStar/asStar, as FILE names it) or ASPCAP's.
    cache : path, optional
        Cache folder (default ``$FEHKIT_CACHE``, else the OS cache folder).
    mirror : str, optional
        Mirror base replacing ``https://data.sdss.org`` (default ``$FEHKIT_DATA_URL``).
    manifest : Manifest or path, optional
        Where the url templates come from (default ``data_manifest.yaml``).
    workers : int
        Parallel downloads (threads).
    progress : bool
        Show a progress bar (tqdm.auto: a widget in Jupyter).
    retries, backoff, timeout
        Retry policy for each file, see :func:`~fehkit.data.download_file`.
    on_error : {"raise", "skip"}
        After the whole batch has been tried: raise for the failed files, or warn and return them with an empty
        ``path``. Either way the files that arrived stay in the cache.

    Returns
    -------
    DataFrame
        A copy of ``rows`` plus ``url`` (what was asked, mirror applied), ``path`` (the cached file, None where it
        failed) and ``fetch_status`` ("downloaded", "cached" or "failed: <reason>").

    Raises
    ------
    DownloadError, ChecksumError, ServiceUnavailableError
        One file failed (``on_error="raise"``): missing, or every answer was cut short or was not the spectrum
        (an HTML page, a truncated FITS file; the message names what arrived and what was expected).
    BatchDownloadError
        Several files failed (``on_error="raise"``); ``.failures`` lists them.
    """
    if kind not in SPECTRUM_KINDS:
        raise DataAccessError(f"kind={kind!r}: expected one of {', '.join(SPECTRUM_KINDS)}")
    if on_error not in ("raise", "skip"):
        raise DataAccessError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
    if workers < 1:
        raise DataAccessError(f"workers={workers}: expected at least 1")
    table = _as_frame(rows)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    product_name, needed = SPECTRUM_KINDS[kind]
    product = m[product_name]
    columns = _resolve_columns(table, needed, what=f"rows for {kind} files")

    urls: list[str | None] = []
    targets: list[Path | None] = []
    problems: dict[int, str] = {}
    for i, values in enumerate(zip(*(table[c] for c in columns.values()), strict=True)):
        fields = dict(zip(columns, (_text(v) for v in values), strict=True))
        try:
            original = product.url_for(mirror="", **fields)
        except FehkitError as err:
            problems[i] = f"row {i}: {err}"
            urls.append(None)
            targets.append(None)
            continue
        urls.append(apply_mirror(original, mirror))
        targets.append(cache_path(original, cache))

    known = m.known_sha256()
    jobs = {t: u for u, t in zip(urls, targets, strict=True) if t is not None}  # the same file twice: one job
    status: dict[Path, str] = {}
    failures: list[tuple[str, Exception]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(jobs), desc=f"{kind} files", unit="file", disable=not progress
    ) as bar:
        futures = {
            pool.submit(download_file, url, target, sha256=known.get(target.name), retries=retries,
                        backoff=backoff, timeout=timeout): target
            for target, url in jobs.items()
        }
        try:
            for future in as_completed(futures):
                target = futures[future]
                try:
                    status[target] = "downloaded" if future.result() else "cached"
                except (FehkitError, OSError) as err:
                    status[target] = f"failed: {err}"
                    failures.append((jobs[target], err))
                bar.update(1)
        except BaseException:  # Ctrl-C: stop queued downloads; finished files stay cached for the next run
            for future in futures:
                future.cancel()
            raise

    out = table.copy()
    out["url"] = urls
    out["path"] = [str(t) if t is not None and status[t] in ("downloaded", "cached") else None for t in targets]
    out["fetch_status"] = [problems[i] if t is None else status[t] for i, t in enumerate(targets)]
    failures += [(f"row {i}", DataAccessError(msg)) for i, msg in problems.items()]
    if failures:
        if on_error == "raise":
            if len(failures) == 1:
                raise failures[0][1]
            raise BatchDownloadError(failures, len(jobs) + len(problems))
        warnings.warn(
            f"fetch_spectra: {len(failures)} of {len(out)} rows have no file (see fetch_status); the rest are cached",
            FehkitWarning,
            stacklevel=2,
        )
    return out


def _as_frame(rows: Any) -> pd.DataFrame:
    """Return rows as a DataFrame: from a DataFrame, an astropy Table, a mapping of columns, or a CSV/FITS path."""
    if isinstance(rows, pd.DataFrame):
        return rows.reset_index(drop=True)
    if isinstance(rows, str | os.PathLike):
        path = Path(rows)
        if not path.is_file():
            raise DataAccessError(f"{path}: no such file; expected an allStar-like table (CSV or FITS)")
        if path.suffix.lower() in (".fits", ".fit", ".fz") or path.name.lower().endswith(".fits.gz"):
            from astropy.table import Table

            t = Table.read(path, hdu=1, memmap=True)  # allStar is GBs: map it, keep only the 1-D columns
            return _decode(t[[c for c in t.colnames if t[c].ndim == 1]].to_pandas())
        try:
            return pd.read_csv(path, comment="#")
        except (ValueError, pd.errors.ParserError) as err:
            raise DataAccessError(f"{path}: not a readable CSV table ({err}); expected TELESCOPE, FIELD, FILE "
                                  "columns") from None
    if hasattr(rows, "to_pandas"):  # astropy Table
        return _decode(rows.to_pandas()).reset_index(drop=True)
    if isinstance(rows, Mapping):
        return pd.DataFrame(dict(rows))
    raise DataAccessError(f"rows of type {type(rows).__name__}: expected a DataFrame, an astropy Table or a path")


def _resolve_columns(table: pd.DataFrame, needed: Mapping[str, tuple[str, ...]], what: str) -> dict[str, str]:
    """Map each needed name to the table's column, matching aliases case-insensitively; name what is missing."""
    lower = {str(c).lower(): c for c in table.columns}
    found, missing = {}, []
    for name, aliases in needed.items():
        match = next((lower[a.lower()] for a in aliases if a.lower() in lower), None)
        if match is None:
            missing.append("/".join(aliases))
        else:
            found[name] = match
    if missing:
        raise DataAccessError(
            f"{what}: no column {', '.join(missing)}; found {', '.join(map(str, table.columns)) or 'no columns'}"
        )
    return found


def _text(value: Any) -> str | None:
    """Return a table cell as stripped text; None for missing values (NaN, masked, empty)."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def _decode(frame: pd.DataFrame) -> pd.DataFrame:
    """Decode bytes columns (FITS string columns) to str and strip their padding."""
    for c in frame.columns:
        if frame[c].dtype == object and len(frame) and isinstance(frame[c].iloc[0], bytes):
            frame[c] = frame[c].str.decode("utf-8").str.strip()
    return frame
