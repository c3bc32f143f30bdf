"""Data access: APOGEE DR17 rows and spectra, GALAH metallicities, metal-poor references, and their cross-match.

Four steps take a survey scientist from nothing to a training table of real stars::

    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from fehkit.data import query_apogee, fetch_spectra, load_reference, crossmatch

    refs = load_reference("montelius2026")                      # optical [Fe/H] of very metal-poor giants
    where = SkyCoord(refs["ra"], refs["dec"], unit="deg")
    rows = query_apogee(center=where, radius=2 * u.arcsec)      # their DR17 allStar rows (VizieR III/286)
    rows = fetch_spectra(rows)                                  # apStar/asStar files into the cache
    table = crossmatch(rows, refs, radius=1.5 * u.arcsec)       # file, feh_ref, feh_ref_err, teff, logg, vmic, ...
    table.to_csv("train.csv", index=False)                      # fehkit train --data train.csv

Every remote product is listed in ``data_manifest.yaml`` (:func:`load_manifest`, :func:`fetch_product`,
``fehkit fetch``). Files are fetched with pooch (temporary file, sha256 check, rename), retried with backoff on
HTTP 5xx and truncated bodies, and cached (``FEHKIT_CACHE``; ``FEHKIT_DATA_URL`` selects a mirror); catalog answers
(astroquery: VizieR, SDSS SkyServer SQL) are cached too. Every error names the product, url, file or column.
"""

from fehkit.data.catalogs import (
    REFERENCE_COLUMNS,
    REFERENCES,
    STAR_BAD,
    load_reference,
    online,
    query_apogee,
    query_galah,
    skyserver_url,
    vizier_server,
)
from fehkit.data.crossmatch import TRAINING_COLUMNS, crossmatch
from fehkit.data.errors import (
    BatchDownloadError,
    CatalogFormatError,
    CatalogQueryError,
    ChecksumError,
    CrossmatchError,
    DataAccessError,
    DownloadError,
    ManifestError,
    ReferenceCatalogError,
    ServiceUnavailableError,
)
from fehkit.data.fetch import fetch_spectra
from fehkit.data.manifest import (
    Manifest,
    Product,
    apply_mirror,
    cache_dir,
    cache_path,
    download_file,
    fetch_product,
    load_manifest,
)

__all__ = [
    "REFERENCES",
    "REFERENCE_COLUMNS",
    "STAR_BAD",
    "TRAINING_COLUMNS",
    "BatchDownloadError",
    "CatalogFormatError",
    "CatalogQueryError",
    "ChecksumError",
    "CrossmatchError",
    "DataAccessError",
    "DownloadError",
    "Manifest",
    "ManifestError",
    "Product",
    "ReferenceCatalogError",
    "ServiceUnavailableError",
    "apply_mirror",
    "cache_dir",
    "cache_path",
    "crossmatch",
    "download_file",
    "fetch_product",
    "fetch_spectra",
    "load_manifest",
    "load_reference",
    "online",
    "query_apogee",
    "query_galah",
    "skyserver_url",
    "vizier_server",
]
