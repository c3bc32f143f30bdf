"""Errors of data access: manifest, downloads, catalog queries and the cross-match.

All are :class:`~fehkit.errors.FehkitError` subclasses, so the ``fehkit`` command reports them as one line and
exits with status 2. Each message names the product, file, url or column, what was found and what was expected.
"""

from __future__ import annotations

from fehkit.errors import FehkitError


class DataAccessError(FehkitError):
    """Base class of the data-access errors."""


class ManifestError(DataAccessError, ValueError):
    """``data_manifest.yaml`` is missing or malformed, or does not list the product asked for."""


class DownloadError(DataAccessError):
    """A file could not be downloaded (after the retries), or a product cannot be downloaded at all.

    Raised too when every answer was not the file asked for (an HTML page sent with status 200, a truncated FITS
    file of the announced length): the message names what arrived and what was expected, and nothing is cached.

    Parameters
    ----------
    url : str
        What was asked for.
    problem : str
        What happened and what was expected.
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


class ServiceUnavailableError(DataAccessError):
    """A server (file host or catalog service) kept failing temporarily (HTTP 5xx, 429, timeouts) through every retry.

    Parameters
    ----------
    url : str
        The server or file asked.
    problem : str
        What it answered, how often it was tried, and what to do.
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


class ChecksumError(DownloadError):
    """A downloaded file's sha256 differs from the one expected; nothing is left in the cache.

    Parameters
    ----------
    url : str
        Where the file came from.
    file : str
        The cache path the file would have had.
    expected, found : str
        The sha256 expected and the one of the bytes received.
    """

    def __init__(self, url: str, file: str, expected: str, found: str) -> None:
        self.file = file
        self.expected = expected
        self.found = found
        super().__init__(
            url,
            f"sha256 of the download is {found}; expected {expected}. The download was deleted, so {file} is not "
            "in the cache. The server copy is damaged or changed; try again later, another mirror (FEHKIT_DATA_URL), "
            "or check the sha256 in data_manifest.yaml",
        )


class BatchDownloadError(DownloadError):
    """Some files of a batch failed; the others are in the cache and will not be downloaded again.

    Parameters
    ----------
    failures : list of (str, Exception)
        The url of each failed file and its error.
    n_total : int
        Number of files in the batch.
    """

    def __init__(self, failures: list[tuple[str, Exception]], n_total: int) -> None:
        self.failures = failures
        shown = "; ".join(str(err) for _, err in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        super().__init__(
            f"{len(failures)} of {n_total} files",
            f"failed: {shown}{more}. The other files are in the cache; run the same call again to fetch only the "
            "missing ones",
        )


class CatalogQueryError(DataAccessError):
    """A catalog service (VizieR, SDSS SkyServer SQL) refused a query or could not be reached.

    Parameters
    ----------
    service : str
        The service and table, e.g. ``"VizieR III/286/catalog at https://vizier.cds.unistra.fr"``.
    problem : str
        What was found and what was expected.
    """

    def __init__(self, service: str, problem: str) -> None:
        self.service = service
        self.problem = problem
        super().__init__(f"{service}: {problem}")


class CatalogFormatError(CatalogQueryError):
    """A catalog response could not be parsed, or lacks the columns fehkit needs."""


class ReferenceCatalogError(DataAccessError, ValueError):
    """A reference catalog name is unknown, or its file (SAGA export) is missing or unreadable."""


class CrossmatchError(DataAccessError, ValueError):
    """Tables given to :func:`~fehkit.data.crossmatch` lack positions or the columns a training table needs."""
