"""The data manifest, the cache, and the one pooch-based downloader every remote file goes through.

``data_manifest.yaml`` (package data of ``fehkit.data``; the repository root has a link to it) lists each remote
product: kind, url or url template, sha256 where the file is fixed, size, licence and citation.
:func:`fetch_product` fetches a product by name; :func:`download_file` is the single place where bytes arrive:
pooch streams them to a temporary file in the cache folder, checks what arrived, checks the sha256 when one is
known, and only then renames the file into place and records its sha256 beside it, so a failed, truncated or
corrupted download never leaves a file under its final name.

What arrived is checked by the file's name before it enters the cache: an APOGEE spectrum (apStar, asStar,
aspcapStar, apVisit) must pass :func:`fehkit.io.check_spectrum_file` (gzip intact, FITS in whole 2880-byte blocks,
the HDUs its kind needs); another ``.fits`` file must be FITS in whole 2880-byte blocks whose headers all parse;
no file may be an HTML page (a mirror's error page sent with status 200). A cached file is checked the same way
each time it is reused, and fetched again when it fails.

Temporary failures (HTTP 5xx/429, dropped connections, a body shorter than announced, a body that fails the check)
are retried with exponential backoff; a checksum mismatch is not (it would fail again).

Overrides: ``FEHKIT_DATA_URL`` (a mirror base that replaces the scheme and host of every url; the path is kept)
and ``FEHKIT_CACHE`` (the cache folder, default ``pooch.os_cache("fehkit")``); the ``mirror=`` and ``cache=``
arguments override both.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import string
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pandas as pd
import pooch
import requests
import yaml

from fehkit.data.errors import ChecksumError, DownloadError, ManifestError, ServiceUnavailableError
from fehkit.errors import SpectrumFileError
from fehkit.files import file_sha256

#: The packaged manifest, ``fehkit/data/data_manifest.yaml`` (package data, found wherever fehkit is installed).
MANIFEST_PATH = resources.files("fehkit.data").joinpath("data_manifest.yaml")
#: Environment variable naming the cache folder.
ENV_CACHE = "FEHKIT_CACHE"
#: Environment variable naming a mirror base url for every remote file.
ENV_MIRROR = "FEHKIT_DATA_URL"
#: Product kinds a manifest may hold (see the comment at the top of ``data_manifest.yaml``).
KINDS = ("file", "template", "vizier", "sql", "link")
#: HTTP statuses worth retrying: the server is busy or briefly broken, not refusing the request.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

log = logging.getLogger("fehkit.data")
_T = TypeVar("_T")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Product:
    """One remote product of the manifest.

    Attributes
    ----------
    name, kind, url : str
        Manifest key, one of :data:`KINDS`, and the url (a template with ``{placeholders}`` for kind "template").
    sha256 : str or None
        Hex sha256 of a fixed file; None where not fixed or not known.
    size : int or None
        Bytes, where known.
    licence, citation, description, survey : str
        Provenance as written in the manifest.
    extra : dict
        The other keys (``catalog``, ``table``, ``tables``, ``unverified``, ...).
    """

    name: str
    kind: str
    url: str
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    citation: str = ""
    description: str = ""
    survey: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        """Return the placeholders of the url template, in order (empty for a fixed url)."""
        return [f for _, f, _, _ in string.Formatter().parse(self.url) if f]

    def url_for(self, mirror: str | None = None, **fields: Any) -> str:
        """Return the url, with the template filled from ``fields`` and the mirror applied.

        Parameters
        ----------
        mirror : str, optional
            Mirror base; default ``$FEHKIT_DATA_URL``; ``""`` forces the original host.
        **fields
            Values of the template placeholders (e.g. ``telescope``, ``field``, ``file``).

        Returns
        -------
        str
        """
        missing = [f for f in self.fields if f not in fields or fields[f] in (None, "")]
        if missing:
            raise ManifestError(
                f"product {self.name}: url template {self.url} needs {', '.join(missing)}; "
                f"got {', '.join(sorted(k for k, v in fields.items() if v not in (None, ''))) or 'nothing'}"
            )
        values = {}
        for f in self.fields:
            value = str(fields[f]).strip()
            if "/" in value or value in (".", ".."):
                raise ManifestError(f"product {self.name}: {f}={value!r} is not a single path component")
            values[f] = value
        return apply_mirror(self.url.format(**values), mirror)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``data_manifest.yaml``: products by name, and the packaged copies."""

    path: Path | Traversable
    products: dict[str, Product]
    examples: list[dict[str, Any]]

    def __getitem__(self, name: str) -> Product:
        """Return the product called ``name``; raise :class:`ManifestError` naming the known ones otherwise."""
        try:
            return self.products[name]
        except KeyError:
            raise ManifestError(
                f"{self.path}: no product {name!r}; expected one of {', '.join(self.products)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.products

    def table(self) -> pd.DataFrame:
        """Return one row per product: name, kind, size, whether a sha256 is fixed, licence, citation, url."""
        return pd.DataFrame(
            [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "size": p.size,
                    "sha256": "fixed" if p.sha256 else "-",
                    "licence": p.licence,
                    "citation": p.citation,
                    "url": p.url,
                }
                for p in self.products.values()
            ]
        )

    def known_sha256(self) -> dict[str, str]:
        """Return file name -> sha256 for every file whose hash the manifest fixes (packaged copies included)."""
        known = {e["file"]: e["sha256"] for e in self.examples if e.get("file") and e.get("sha256")}
        for p in self.products.values():
            if p.kind == "file" and p.sha256:
                known[p.url.rsplit("/", 1)[-1]] = p.sha256
        return known


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Read and check a data manifest.

    Parameters
    ----------
    path : path, optional
        Default :data:`MANIFEST_PATH`: the ``data_manifest.yaml`` packaged with fehkit.

    Returns
    -------
    Manifest

    Examples
    --------
    >>> m = load_manifest()
    >>> m["apstar_dr17"].fields
    ['telescope', 'field', 'file']
    >>> m["saga"].kind
    'link'
    """
    path = Path(path) if path is not None else MANIFEST_PATH
    if not path.is_file():
        raise ManifestError(f"{path}: no such file; expected the data manifest (data_manifest.yaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("products"), dict):
        raise ManifestError(f"{path}: expected a mapping with a 'products' mapping at the top")
    products = {name: _product(path, name, entry) for name, entry in doc["products"].items()}
    examples = doc.get("examples") or []
    return Manifest(path=path, products=products, examples=list(examples))


def _product(path: Path, name: str, entry: Any) -> Product:
    where = f"{path}: product {name}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping of keys, found {type(entry).__name__}")
    kind = entry.get("kind", "file")
    if kind not in KINDS:
        raise ManifestError(f"{where}: kind {kind!r}; expected one of {', '.join(KINDS)}")
    url = entry.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise ManifestError(f"{where}: url {url!r}; expected an http(s) url")
    sha256 = entry.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256.lower())):
        raise ManifestError(f"{where}: sha256 {sha256!r}; expected 64 hex digits or null")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ManifestError(f"{where}: size {size!r}; expected a positive number of bytes or null")
    known = {"kind", "url", "sha256", "size", "licence", "citation", "description", "survey"}
    return Product(
        name=name,
        kind=kind,
        url=url,
        sha256=sha256.lower() if sha256 else None,
        size=size,
        licence=str(entry.get("licence", "")),
        citation=str(entry.get("citation", "")),
        description=str(entry.get("description", "")),
        survey=str(entry.get("survey", "")),
        extra={k: v for k, v in entry.items() if k not in known},
    )


# ---------------------------------------------------------------------------------------------------------------
# cache and mirror
# ---------------------------------------------------------------------------------------------------------------
def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder: ``cache``, else ``$FEHKIT_CACHE``, else ``pooch.os_cache("fehkit")``.

    Parameters
    ----------
    cache : path, optional
        Explicit folder.

    Returns
    -------
    Path
        Not created here; downloads create what they need.
    """
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path(pooch.os_cache("fehkit"))


def apply_mirror(url: str, mirror: str | None = None) -> str:
    """Replace the scheme and host of ``url`` with a mirror base; keep the path.

    Parameters
    ----------
    url : str
        The original url.
    mirror : str, optional
        Mirror base, e.g. ``"http://127.0.0.1:8000"`` or ``"https://example.org/sdss"``. Default
        ``$FEHKIT_DATA_URL``; ``""`` (or no variable) leaves the url unchanged.

    Returns
    -------
    str

    Examples
    --------
    >>> apply_mirror("https://data.sdss.org/sas/dr17/x.fits", "http://127.0.0.1:8000/")
    'http://127.0.0.1:8000/sas/dr17/x.fits'
    """
    mirror = os.environ.get(ENV_MIRROR, "") if mirror is None else mirror
    if not mirror:
        return url
    if "://" not in mirror:
        raise ManifestError(f"mirror {mirror!r} ({ENV_MIRROR} or --mirror): expected a base url such as https://host/")
    parts = urlsplit(url)
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + "/" + rest.lstrip("/")


def cache_path(url: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Return where the file at ``url`` (the original, not the mirrored url) lives in the cache.

    The cache mirrors the url's path under the cache folder, so a file keeps its place whichever mirror served it,
    and an SAS file is found at ``CACHE/sas/dr17/apogee/.../apStar-....fits``.

    Parameters
    ----------
    url : str
        Original url.
    cache : path, optional
        See :func:`cache_dir`.

    Returns
    -------
    Path
    """
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ManifestError(f"{url}: expected a url path naming a file")
    return cache_dir(cache).joinpath(*parts)


# ---------------------------------------------------------------------------------------------------------------
# downloads
# ---------------------------------------------------------------------------------------------------------------
class IncompleteDownload(requests.exceptions.RequestException):
    """The body had fewer (or more) bytes than announced or expected: retried like a dropped connection."""


class InvalidDownload(requests.exceptions.RequestException):
    """The body arrived whole but is not the file asked for (an HTML page, a cut FITS file): retried.

    Parameters
    ----------
    found, expected : str
        What arrived and what the file should be.
    """

    def __init__(self, found: str, expected: str) -> None:
        self.found = found
        self.expected = expected
        super().__init__(f"received {found}; expected {expected}")


class _CheckedDownloader(pooch.HTTPDownloader):
    """pooch's HTTP downloader, plus size and content checks and the sha256 of what arrived (for the error message).

    ``name`` is the file's final name: what arrives in pooch's temporary file is checked as that file would be.
    """

    def __init__(self, size: int | None, hash_it: bool, name: str, **kwargs: Any) -> None:
        super().__init__(hooks={"response": self._record}, **kwargs)
        self.size = size
        self.hash_it = hash_it
        self.name = name
        self.sha256: str | None = None
        self.content_type: str | None = None

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.content_type = response.headers.get("Content-Type")

    def __call__(self, url: str, output_file: Any, pooch_: Any, check_only: bool = False) -> Any:
        result = super().__call__(url, output_file, pooch_, check_only=check_only)
        if check_only or not isinstance(output_file, str | os.PathLike):
            return result
        n = os.path.getsize(output_file)
        if self.size is not None and n != self.size:
            raise IncompleteDownload(f"received {n} bytes; expected {self.size} (size in the manifest)")
        problem = content_problem(output_file, self.name, self.content_type)
        if problem is not None:
            raise InvalidDownload(*problem)
        if self.hash_it:
            self.sha256 = pooch.file_hash(str(output_file))
        return result


def content_problem(
    path: str | os.PathLike[str], name: str | None = None, content_type: str | None = None
) -> tuple[str, str] | None:
    """Check that a file holds what its name promises; return (what was found, what was expected), or None if good.

    By ``name``: an APOGEE spectrum file (apStar, asStar, aspcapStar, apVisit, asVisit) must pass
    :func:`fehkit.io.check_spectrum_file`; another FITS file (``.fits``, ``.fit``, ``.fz``, optionally ``.gz``) must
    start as FITS, hold whole 2880-byte blocks (after decompression) and have headers that all parse; every file
    must be neither empty nor an HTML page.

    Parameters
    ----------
    path : path
        The file to check (e.g. a download's temporary file).
    name : str, optional
        The file's final name; default the name of ``path``.
    content_type : str, optional
        The Content-Type the server sent, for the message.

    Returns
    -------
    tuple of str, or None
    """
    # One check at a time: they change the warning filters (not thread-safe) and are CPU-bound anyway.
    with _check_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what matters becomes an error inside the checks; the rest is noise here
        return _content_problem(Path(path), name or Path(path).name, content_type)


def download_file(
    url: str,
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
) -> bool:
    """Download ``url`` to ``path`` unless a good copy is already there; return whether bytes were fetched.

    What arrives is checked by the name of ``path`` (see :func:`content_problem`) before it is renamed into place
    and its sha256 recorded; a body that fails the check is retried like a dropped connection. A file already at
    ``path`` is reused when it matches ``sha256`` (or, without one, the sha256 recorded next to it at its own
    download, ``path.sha256``) and ``size`` and passes the same check; a file that does not is deleted and fetched
    again.

    Parameters
    ----------
    url : str
        Where to get it (mirror already applied).
    path : path
        Final location in the cache.
    sha256 : str, optional
        Expected hex sha256; a mismatch raises :class:`~fehkit.data.ChecksumError` and leaves no file.
    size : int, optional
        Expected bytes; a body of another length is retried as incomplete.
    retries : int
        Further attempts after the first on temporary failures (HTTP 5xx/429/408, dropped or short bodies).
    backoff : float
        Seconds before the first retry; doubled before each next one.
    timeout : float
        Seconds to wait for the server to connect or send.
    progress : bool
        Show a byte progress bar (for large single files).

    Returns
    -------
    bool
        True if downloaded now, False if the cached copy was reused.

    Raises
    ------
    DownloadError
        The file is missing (HTTP 404 ...), or every answer was cut short or failed the check (it names what
        arrived and what was expected); nothing is left in the cache.
    ChecksumError, ServiceUnavailableError
        See :func:`with_retries`.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    expected = (sha256 or _read_sidecar(sidecar) or "").lower() or None
    if path.is_file():
        good_size = size is None or path.stat().st_size == size
        if good_size and (expected is None or file_sha256(path) == expected):
            problem = content_problem(path, path.name)
            if problem is None:
                return False
            log.warning("%s: cached copy is %s, expected %s; fetching it again", path, *problem)
            expected = (sha256 or "").lower() or None  # the sha256 recorded beside it is that of the bad copy
        else:
            log.info("%s: cached copy does not match its sha256/size; fetching it again", path)
        path.unlink()
        sidecar.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> None:
        downloader = _CheckedDownloader(size, hash_it=expected is not None, name=path.name, progressbar=progress,
                                        timeout=timeout)
        try:
            with _quiet_pooch():
                pooch.retrieve(
                    url,
                    known_hash=f"sha256:{expected}" if expected else None,
                    fname=path.name,
                    path=path.parent,
                    downloader=downloader,
                )
        except ValueError as err:
            if "does not match the known hash" not in str(err):
                raise DownloadError(url, f"pooch could not store the file: {err}") from err
            raise ChecksumError(url, str(path), expected or "?", downloader.sha256 or "unknown") from None

    with_retries(attempt, what=url, retries=retries, backoff=backoff)
    _write_sidecar(sidecar, expected or file_sha256(path))
    return True


def with_retries(
    call: Callable[[], _T],
    *,
    what: str,
    retries: int = 3,
    backoff: float = 1.0,
    failed: Callable[[str, str], Exception] = DownloadError,
) -> _T:
    """Run ``call``, retrying temporary HTTP failures with exponential backoff.

    Retried: HTTP statuses in :data:`RETRY_STATUS`, connection errors, timeouts, incomplete bodies and bodies that
    fail the content check (any ``requests`` exception but an HTTP error with another status). Waits ``backoff``,
    ``2*backoff``, ``4*backoff`` ... seconds between attempts.

    Parameters
    ----------
    call : callable
        No arguments; its value is returned.
    what : str
        The url or service, for log lines and error messages.
    retries : int
        Attempts after the first.
    backoff : float
        Seconds before the first retry.
    failed : callable
        ``failed(what, problem)`` builds the error raised for a permanent HTTP error (e.g. 404).

    Returns
    -------
    object
        What ``call`` returned.

    Raises
    ------
    ServiceUnavailableError
        When every attempt failed with a retryable HTTP status, a timeout or a refused connection.
    Exception
        ``failed(what, problem)`` for a permanent HTTP error, or when every body arrived incomplete or failed the
        content check (the last one named).
    """
    if retries < 0 or backoff < 0:
        raise ManifestError(f"retries={retries}, backoff={backoff}: expected non-negative numbers")
    problems: list[str] = []
    last: Exception | None = None
    waited = 0.0
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.3g s (attempt %d of %d)", what, problems[-1], delay, attempt + 1,
                        retries + 1)
            time.sleep(delay)
            waited += delay
        try:
            return call()
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status not in RETRY_STATUS:
                raise failed(what, f"HTTP {status} ({_reason(err)}); expected 200") from None
            problems.append(f"HTTP {status} ({_reason(err)})")
            last = err
        except requests.RequestException as err:
            problems.append(_describe(err))
            last = err
    tries = f"failed {len(problems)} times over {waited:.3g} s of backoff (last: {problems[-1]})"
    if isinstance(last, InvalidDownload):
        raise failed(what, f"{tries}; expected {last.expected}. Nothing was cached: the server or mirror answers "
                           "with something other than the file; try again later or use another mirror")
    if isinstance(last, IncompleteDownload | requests.exceptions.ChunkedEncodingError):
        raise failed(what, f"{tries}; expected the whole file. The server sends it cut short, or the size in the "
                           "manifest is wrong")
    raise ServiceUnavailableError(
        what,
        f"{tries}; expected a complete HTTP 200 answer. The service is down or overloaded: try again later, raise "
        "retries/backoff, or use a mirror",
    )


def fetch_product(
    name: str,
    *,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
    **fields: Any,
) -> Path:
    """Fetch one file product of the manifest into the cache; return its path.

    Parameters
    ----------
    name : str
        Manifest key, e.g. ``"galah_dr4_allstar"``, or ``"apstar_dr17"`` with ``telescope=``, ``field=``, ``file=``.
    manifest : Manifest or path, optional
        Default :func:`load_manifest`.
    cache, mirror : optional
        See :func:`cache_dir` and :func:`apply_mirror`.
    retries, backoff, timeout, progress
        See :func:`download_file`.
    **fields
        Template values for kind "template".

    Returns
    -------
    Path
        The cached file.

    Examples
    --------
    >>> fetch_product("saga")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fehkit.data.errors.DownloadError: http://sagadatabase.jp/: product saga is a link only (licence CC BY-NC-SA...
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    p = m[name]
    if p.kind == "link":
        raise DownloadError(
            p.url,
            f"product {name} is a link only (licence {p.licence}): fehkit never downloads or redistributes it; "
            "export the rows you need from its web site yourself and pass the file on (load_reference('saga', "
            "path=...))",
        )
    if p.kind in ("vizier", "sql"):
        raise DownloadError(
            p.url,
            f"product {name} is a {p.kind} catalog service, not a file; query it with fehkit.data.query_apogee, "
            "query_galah or load_reference",
        )
    original = p.url_for(mirror="", **fields)
    target = cache_path(original, cache)
    sha256 = p.sha256 or m.known_sha256().get(target.name)
    download_file(p.url_for(mirror=mirror, **fields), target, sha256=sha256, size=p.size, retries=retries,
                  backoff=backoff, timeout=timeout, progress=progress)
    return target


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _read_sidecar(sidecar: Path) -> str | None:
    try:
        text = sidecar.read_text().strip().lower()
    except OSError:
        return None
    return text if _SHA256.match(text) else None


def _write_sidecar(sidecar: Path, digest: str) -> None:
    from fehkit.files import atomic_output

    with atomic_output(sidecar) as tmp:
        tmp.write_text(digest + "\n")


_check_lock = threading.Lock()


def _content_problem(path: Path, name: str, content_type: str | None) -> tuple[str, str] | None:
    spectrum = re.match(r"(a[ps]Star|aspcapStar|a[ps]Visit)", name)
    fits_name = re.search(r"\.(fits|fit|fz)(\.gz)?$", name, re.IGNORECASE)
    if spectrum:
        expected = f"the APOGEE spectrum {name}: FITS in whole 2880-byte blocks with the HDUs its kind needs"
    elif fits_name:
        expected = f"the FITS file {name} in whole 2880-byte blocks"
    else:
        expected = f"the file {name}, not a web page"
    n = path.stat().st_size
    if n == 0:
        return "an empty body (0 bytes)", expected
    head = _head(path)
    if _looks_like_html(head):
        text = head[:60].decode("utf-8", "replace").strip()
        return f"an HTML page ({content_type or 'no Content-Type'}, {n} bytes, starting {text!r})", expected
    if spectrum:
        from fehkit.io import check_spectrum_file  # astropy: imported when first needed

        try:
            check_spectrum_file(path, name=name)
        except SpectrumFileError as err:
            return f"a file that is not a usable spectrum: {err.problem}", expected
    elif fits_name:
        problem = _fits_problem(path)
        if problem:
            return problem, expected
    return None


def _head(path: Path, n: int = 1024) -> bytes:
    """Return the first ``n`` bytes of a file, decompressed when it is gzipped (as far as they go)."""
    with path.open("rb") as f:
        head = f.read(n)
    if head[:2] == b"\x1f\x8b":
        try:
            return zlib.decompressobj(wbits=31).decompress(head, n)
        except zlib.error:
            return b""
    return head


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html")) or (
        text.startswith(b"<") and any(tag in text for tag in (b"<html", b"<head", b"<body", b"<title"))
    )


def _fits_problem(path: Path) -> str | None:
    """Describe what is wrong with a FITS file (optionally gzipped), or None; reads headers only (memory-mapped)."""
    gzipped = _is_gzip(path)
    try:
        with gzip.open(path) if gzipped else path.open("rb") as f:
            start = f.read(2880)
            total = len(start) if gzipped else path.stat().st_size
            while gzipped and (chunk := f.read(1 << 20)):  # the whole stream: its CRC and length are checked
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        return f"a damaged gzip file ({err})"
    if not start.startswith(b"SIMPLE  ="):
        return f"a file that does not start with a FITS header (found {start[:20]!r}, expected 'SIMPLE  =')"
    if total % 2880:
        where = " after decompression" if gzipped else ""
        return f"a truncated FITS file: {total} bytes{where}, not a multiple of 2880"
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", category=fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*truncated.*")
            with fits.open(path, memmap=not gzipped, lazy_load_hdus=True) as hdul:
                hdul.readall()  # every header (data stay unread), so a cut inside the file shows here
                if len(hdul) == 1 and not hdul[0].header.get("NAXIS"):
                    return f"a FITS file of {total} bytes with a primary header only, no data and no extension"
    except Exception as err:  # astropy raises OSError, ValueError, TypeError or warnings-as-errors here
        return f"a damaged FITS file of {total} bytes ({type(err).__name__}: {err})"
    return None


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _reason(err: requests.HTTPError) -> str:
    return (err.response.reason or "").strip() if err.response is not None else str(err)


def _describe(err: requests.RequestException) -> str:
    if isinstance(err, InvalidDownload):
        return f"received {err.found}"
    if isinstance(err, IncompleteDownload):
        return f"incomplete download: {err}"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "connection closed before the whole body arrived (truncated download)"
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "could not connect"
    return f"{type(err).__name__}: {err}"


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved = logging.NOTSET


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Silence pooch's INFO lines ("Downloading data from ...") while fehkit downloads; thread-safe."""
    global _quiet_depth, _quiet_saved
    logger = pooch.get_logger()
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = logger.level
            logger.setLevel(logging.WARNING)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                logger.setLevel(_quiet_saved)
