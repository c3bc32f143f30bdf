"""Catalog queries: APOGEE DR17 rows, GALAH metallicities and high-resolution references for metal-poor stars.

Every query goes through astroquery (``astroquery.vizier`` for VizieR, ``astroquery.sdss`` for the SkyServer SQL
service), is retried with backoff when the service is briefly down, and its raw answer is cached in
``CACHE/catalogs/`` as ECSV, so a notebook re-run works offline and a 503 outage of SkyServer costs nothing once a
query has succeeded (``refresh=True`` asks again). Answers are normalized to a few named columns:

- :func:`query_apogee`: one row per star and telescope: apogee_id, telescope, field, file (the three columns that
  name the spectrum file), ra, dec, snr, nvisits, starflag, aspcapflag, teff, logg, vmic, m_h, fe_h (+ errors).
  ASPCAP's DR17 grid stops at [M/H] = -2.5, so the most metal-poor stars have empty m_h and fe_h: a cut on m_h
  drops them; find them through a reference catalog (:func:`load_reference`) and :func:`~fehkit.data.crossmatch`.
- :func:`query_galah` and :func:`load_reference`: the reference schema: ref_id, ra, dec, feh_ref, feh_ref_err,
  teff, logg, vmic, ref_catalog, ref_citation, ref_licence.

Servers: ``FEHKIT_VIZIER_SERVER`` (a host such as ``vizier.cfa.harvard.edu``, or a base url such as
``http://127.0.0.1:8000``) and ``FEHKIT_SKYSERVER_URL`` (default ``https://skyserver.sdss.org``), or the
``server=`` argument.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import astropy.units as u
import numpy as np
import pandas as pd
import requests
from astropy.coordinates import Angle, SkyCoord, match_coordinates_sky
from astropy.table import Table
from astroquery.exceptions import RemoteServiceError, TableParseError
from astroquery.vizier import VizierClass

from fehkit.data.errors import CatalogFormatError, CatalogQueryError, ReferenceCatalogError
from fehkit.data.manifest import Manifest, cache_dir, fetch_product, load_manifest, with_retries

#: Environment variable: the VizieR mirror (host name, or a base url with scheme).
ENV_VIZIER = "FEHKIT_VIZIER_SERVER"
#: Environment variable: the SDSS SkyServer base url.
ENV_SKYSERVER = "FEHKIT_SKYSERVER_URL"
DEFAULT_VIZIER = "vizier.cds.unistra.fr"
DEFAULT_SKYSERVER = "https://skyserver.sdss.org"
#: ASPCAPFLAG bit 23, STAR_BAD. Often set for the most metal-poor stars (they sit at the edge of ASPCAP's grid),
#: so it is not cut by default; pass ``aspcapflag_mask=STAR_BAD`` to drop such stars.
STAR_BAD = 1 << 23
#: Names accepted by :func:`load_reference` and their manifest products.
REFERENCES = {
    "jinabase": "jinabase_vizier",
    "montelius2026": "montelius2026_vizier",
    "frebel2010": "frebel2010_vizier",
    "saga": "saga",
}
#: Columns of the reference schema, in order.
REFERENCE_COLUMNS = ("ref_id", "ra", "dec", "feh_ref", "feh_ref_err", "teff", "logg", "vmic",
                     "ref_catalog", "ref_citation", "ref_licence")

# Column aliases, matched case-insensitively, first found wins: allStar/SQL names, then VizieR's.
_POS = {"ra": ("_RAJ2000", "RA", "RAJ2000", "RA_ICRS", "RAdeg", "_RA"),
        "dec": ("_DEJ2000", "DEC", "DEJ2000", "DE_ICRS", "DEdeg", "_DE")}
_APOGEE = {
    "apogee_id": ("APOGEE_ID", "APOGEE"),
    "telescope": ("TELESCOPE", "Tel"),
    "field": ("FIELD",),
    "file": ("FILE",),
    **_POS,
    "snr": ("SNR",),
    "nvisits": ("NVISITS", "Nvis"),
    "starflag": ("STARFLAG", "SFlag"),
    "aspcapflag": ("ASPCAPFLAG", "AFlag"),
    "teff": ("TEFF", "Teff"),
    "teff_err": ("TEFF_ERR", "e_Teff"),
    "logg": ("LOGG",),
    "logg_err": ("LOGG_ERR", "e_logg"),
    "vmic": ("VMICRO", "vmic", "Vmicro", "vturb"),
    "m_h": ("M_H", "[M/H]"),
    "m_h_err": ("M_H_ERR", "e_[M/H]"),
    "fe_h": ("FE_H", "[Fe/H]"),
    "fe_h_err": ("FE_H_ERR", "e_[Fe/H]"),
}
_APOGEE_REQUIRED = ("apogee_id", "telescope", "field", "ra", "dec")
_GALAH = {
    "ref_id": ("sobject_id", "GALAH", "sobject"),
    "gaia_id": ("gaiadr3_source_id", "dr3_source_id", "GaiaEDR3", "GaiaDR3", "source_id"),
    **_POS,
    "feh_ref": ("fe_h", "[Fe/H]"),
    "feh_ref_err": ("e_fe_h", "e_[Fe/H]"),
    "flag_fe_h": ("flag_fe_h", "f_[Fe/H]", "f_fe_h", "flagFe"),
    "flag_sp": ("flag_sp", "f_sp", "flagsp", "Flag_sp", "fsp"),
    "snr": ("snr_c3_iraf", "snrc3iraf", "snr_px_ccd3", "snrc3"),
    "teff": ("teff", "Teff"),
    "logg": ("logg",),
    "vmic": ("vmic", "Vmic", "vmicro"),
}
_REF = {
    "ref_id": ("Name", "Star", "Object", "ID", "SimbadName", "APOGEE", "APOGEE_ID", "2MASS", "Simbad"),
    **_POS,
    "feh_ref": ("[Fe/H]", "[FeI/H]", "[Fe I/H]", "FeH", "Fe_H", "[Fe/H]LTE", "feh", "fe_h"),
    "feh_ref_err": ("e_[Fe/H]", "e_[FeI/H]", "e_FeH", "e_feh", "feh_err", "[Fe/H]_err", "err_[Fe/H]", "sig[Fe/H]"),
    "teff": ("Teff", "TEFF", "T_eff"),
    "logg": ("logg", "log g", "log(g)", "logG"),
    "vmic": ("vmic", "Vmic", "vt", "Vt", "xi", "vturb", "Vturb", "vmicro", "ksi"),
}
# Where aliases fail, a column whose name fits the pattern (flags, errors, limits and notes excluded).
_REF_PATTERNS = {
    "feh_ref": re.compile(r"^\[?\s*fe\s*(i|1)?\s*/\s*h\s*\]?", re.I),
    "teff": re.compile(r"^t_?eff", re.I),
    "logg": re.compile(r"^log\s*\(?\s*g", re.I),
    "vmic": re.compile(r"^(v_?mic|v_?t(urb)?$|xi$|ksi$)", re.I),
}
_NOT_VALUES = re.compile(r"^[eflnruq]_", re.I)  # VizieR prefixes of errors, flags, limits, notes, refs


# ---------------------------------------------------------------------------------------------------------------
# public queries
# ---------------------------------------------------------------------------------------------------------------
def query_apogee(
    *,
    source: Literal["vizier", "sql"] = "vizier",
    m_h_min: float | None = None,
    m_h_max: float | None = None,
    snr_min: float | None = None,
    apogee_ids: Sequence[str] | None = None,
    center: SkyCoord | str | None = None,
    radius: u.Quantity | float | None = None,
    telescope: str | None = None,
    starflag_mask: int | None = None,
    aspcapflag_mask: int | None = None,
    max_rows: int = 10_000,
    server: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> pd.DataFrame:
    """Return APOGEE DR17 allStar rows, from VizieR III/286 or the SDSS SkyServer SQL tables.

    Parameters
    ----------
    source : {"vizier", "sql"}
        VizieR ``III/286/catalog`` (the allStar file's rows, synspec_rev1), or SkyServer SQL ``apogeeStar`` left-
        joined with ``aspcapStar`` on apstar_id (loaded from the earlier synspec run: parameters differ slightly).
    m_h_min, m_h_max : float, optional
        Cut on ASPCAP [M/H] (drops stars without one: the grid stops at -2.5).
    snr_min : float, optional
        Minimum combined S/N.
    apogee_ids : sequence of str, optional
        Only these stars (2MASS-style APOGEE ids).
    center : SkyCoord or str, optional
        Cone centre (a SkyCoord, or text SkyCoord understands, e.g. ``"17h33m54.8s -27d53m04s"``), or, with
        VizieR, an array SkyCoord of many centres (one request: e.g. the positions of a reference catalog).
    radius : Quantity or float, optional
        Cone radius (float: degrees). Needed with ``center``.
    telescope : str, optional
        ``"apo25m"``, ``"lco25m"`` or ``"apo1m"``.
    starflag_mask, aspcapflag_mask : int, optional
        Drop rows whose STARFLAG / ASPCAPFLAG has any of these bits (e.g. :data:`STAR_BAD`).
    max_rows : int
        At most this many rows from the service (a warning says when the answer hit it).
    server : str, optional
        VizieR host/base url or SkyServer base url; default the environment variables, then the public services.
    cache : path, optional
        Cache folder, see :func:`~fehkit.data.cache_dir`.
    refresh : bool
        Ask the service again even if the answer is cached.
    retries, backoff, timeout
        Retry policy (HTTP 5xx/429, dropped connections) and per-request timeout in seconds.

    Returns
    -------
    DataFrame
        Columns apogee_id, telescope, field, file, ra, dec, snr, nvisits, starflag, aspcapflag, teff, teff_err,
        logg, logg_err, vmic, m_h, m_h_err, fe_h, fe_h_err (NaN where the service has no value) and
        ``apogee_source`` (which service and table).

    Raises
    ------
    ServiceUnavailableError
        The service failed temporarily through every retry.
    CatalogQueryError, CatalogFormatError
        The service refused the query, or its answer is malformed or lacks the needed columns.
    """
    cone = _cone(center, radius)
    ids = _check_ids(apogee_ids)
    if source == "vizier":
        filters = {}
        if m_h_min is not None or m_h_max is not None:
            filters["[M/H]"] = _range(m_h_min, m_h_max)
        if snr_min is not None:
            filters["SNR"] = f">={snr_min:g}"
        if telescope:
            filters["Tel"] = f"={telescope}"
        if ids:
            filters["APOGEE"] = "|".join(ids)  # VizieR: alternatives separated by |
        raw, where = _vizier(
            "III/286/catalog", filters=filters, cone=cone, row_limit=max_rows, server=server, cache=cache,
            refresh=refresh, retries=retries, backoff=backoff, timeout=timeout,
        )
        name = "VizieR III/286/catalog (APOGEE DR17 allStar, synspec_rev1)"
    elif source == "sql":
        sql = _apogee_sql(m_h_min, m_h_max, snr_min, ids, cone, telescope, max_rows)
        raw, where = _skyserver(sql, server=server, cache=cache, refresh=refresh, retries=retries,
                                backoff=backoff, timeout=timeout)
        name = "SDSS SkyServer DR17 SQL apogeeStar+aspcapStar (synspec)"
    else:
        raise CatalogQueryError("query_apogee", f"source={source!r}; expected 'vizier' or 'sql'")

    rows = _normalize(raw, _APOGEE, _APOGEE_REQUIRED, where)
    if source == "sql":  # SkyServer stores missing values as -9999 in NOT NULL columns
        for c in ("snr", "teff", "teff_err", "logg", "logg_err", "vmic", "m_h", "m_h_err", "fe_h", "fe_h_err"):
            rows.loc[rows[c] <= -9000, c] = np.nan
    if rows["file"].isna().all() and len(rows):
        # FILE is the allStar column naming the apStar/asStar file; the SAS names it from the id and telescope
        rows["file"] = [f"{'asStar' if t == 'lco25m' else 'apStar'}-dr17-{i}.fits"
                        for i, t in zip(rows["apogee_id"], rows["telescope"], strict=True)]
    keep = np.ones(len(rows), bool)
    if m_h_min is not None:
        keep &= rows["m_h"].to_numpy() >= m_h_min
    if m_h_max is not None:
        keep &= rows["m_h"].to_numpy() <= m_h_max
    if snr_min is not None:
        keep &= rows["snr"].to_numpy() >= snr_min
    if ids:
        keep &= rows["apogee_id"].isin(ids).to_numpy()
    if telescope:
        keep &= (rows["telescope"] == telescope).to_numpy()
    for col, mask in (("starflag", starflag_mask), ("aspcapflag", aspcapflag_mask)):
        if mask:
            flags = rows[col].fillna(0).astype(np.int64).to_numpy()
            keep &= (flags & int(mask)) == 0
    if cone is not None:
        keep &= _in_cone(rows, *cone)
    rows = rows[keep].reset_index(drop=True)
    rows["apogee_source"] = name
    _warn_if_truncated(len(raw), max_rows, where)
    return rows


def query_galah(
    release: Literal["dr3", "dr4"] = "dr3",
    *,
    center: SkyCoord | str | None = None,
    radius: u.Quantity | float | None = None,
    feh_min: float | None = None,
    feh_max: float | None = None,
    recommended: bool = True,
    snr_min: float | None = 30.0,
    vizier_filters: Mapping[str, str] | None = None,
    max_rows: int = 10_000,
    server: str | None = None,
    mirror: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    manifest: Manifest | str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Return GALAH metallicities in the reference schema, with the survey's recommended quality cuts.

    DR3 comes from VizieR (J/MNRAS/506/150); its recommended cuts are flag_sp == 0, flag_fe_h == 0 and
    snr_c3_iraf > 30. DR4 comes from the allstar file listed in the manifest (``galah_dr4_allstar``, fetched once
    into the cache); its team recommends flag_sp == 0 (bit 1024 warns on [Fe/H]) and not to use flag_fe_h.

    Parameters
    ----------
    release : {"dr3", "dr4"}
        Which data release.
    center, radius : optional
        Cone search (radius as a Quantity or in degrees).
    feh_min, feh_max : float, optional
        Cut on GALAH [Fe/H].
    recommended : bool
        Apply the release's recommended flag cuts.
    snr_min : float or None
        Minimum S/N in the red camera (DR3 snr_c3_iraf, DR4 snr_px_ccd3); None: no cut.
    vizier_filters : mapping, optional
        Extra VizieR column constraints for DR3 (e.g. ``{"Teff": "<5500"}``), applied by the server.
    max_rows : int
        At most this many rows from VizieR (DR3).
    server, mirror, cache, refresh, retries, backoff, timeout, manifest
        Services and retry policy, see :func:`query_apogee` and :func:`~fehkit.data.fetch_product`.

    Returns
    -------
    DataFrame
        Reference schema (:data:`REFERENCE_COLUMNS`) plus gaia_id, snr, flag_sp, flag_fe_h.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    cone = _cone(center, radius)
    if release == "dr3":
        product = m["galah_dr3_vizier"]
        filters = dict(vizier_filters or {})
        if feh_min is not None or feh_max is not None:
            filters.setdefault("[Fe/H]", _range(feh_min, feh_max))
        raw, where = _vizier(
            product.extra.get("table", product.extra["catalog"]), filters=filters, cone=cone, row_limit=max_rows,
            server=server, cache=cache, refresh=refresh, retries=retries, backoff=backoff, timeout=timeout,
        )
        _warn_if_truncated(len(raw), max_rows, where)
    elif release == "dr4":
        product = m["galah_dr4_allstar"]
        path = fetch_product(product.name, manifest=m, cache=cache, mirror=mirror, retries=retries,
                             backoff=backoff, timeout=timeout, progress=True)
        raw, where = _read_fits_columns(path, _GALAH), f"GALAH DR4 file {path}"
    else:
        raise CatalogQueryError("query_galah", f"release={release!r}; expected 'dr3' or 'dr4'")

    rows = _normalize(raw, _GALAH, ("ra", "dec", "feh_ref"), where)
    keep = np.ones(len(rows), bool)
    if recommended:
        need = ("flag_sp", "flag_fe_h") if release == "dr3" else ("flag_sp",)
        absent = [c for c in need if rows[c].isna().all() and len(rows)]
        if absent:
            raise CatalogFormatError(where, f"no {' or '.join('/'.join(_GALAH[c]) for c in absent)} column for the "
                                            f"recommended cuts; found {', '.join(map(str, raw.colnames))}")
        for c in need:
            keep &= rows[c].fillna(1).to_numpy() == 0
    if snr_min is not None:
        keep &= rows["snr"].to_numpy() > snr_min
    if feh_min is not None:
        keep &= rows["feh_ref"].to_numpy() >= feh_min
    if feh_max is not None:
        keep &= rows["feh_ref"].to_numpy() <= feh_max
    if cone is not None:
        keep &= _in_cone(rows, *cone)
    rows = rows[keep].reset_index(drop=True)
    rows["ref_catalog"] = f"GALAH {release.upper()} ({where})"
    rows["ref_citation"] = product.citation
    rows["ref_licence"] = product.licence
    front = [c for c in REFERENCE_COLUMNS if c in rows]
    return rows[front + [c for c in rows if c not in front]]


def load_reference(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    table: str | None = None,
    columns: Mapping[str, str] | None = None,
    max_rows: int = -1,
    server: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    manifest: Manifest | str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Return a high-resolution reference catalog of metal-poor stars in the reference schema.

    Parameters
    ----------
    name : str
        ``"jinabase"`` (Abohalima & Frebel 2018), ``"montelius2026"`` (Montelius et al. 2026, the metal-poor
        tail of APOGEE), ``"frebel2010"``, any VizieR catalog id (``"J/.../..."``), or ``"saga"``. SAGA is never
        downloaded (CC BY-NC-SA): export the rows from http://sagadatabase.jp/ and pass the file as ``path``.
    path : path, optional
        A table the user exported (CSV/TSV, any delimiter; required for ``"saga"``, optional for the others, which
        then read the file instead of asking VizieR).
    table : str, optional
        Which table of a multi-table VizieR catalog; default: the largest one with [Fe/H] and positions.
    columns : mapping, optional
        Override the column detection, e.g. ``{"feh_ref": "[Fe/H]1", "teff": "Teff1"}``.
    max_rows : int
        Row limit for VizieR (-1: all).
    server, cache, refresh, retries, backoff, timeout, manifest
        See :func:`query_apogee`.

    Returns
    -------
    DataFrame
        :data:`REFERENCE_COLUMNS`; feh_ref_err, teff, logg, vmic are NaN where the catalog has none.

    Raises
    ------
    ReferenceCatalogError
        Unknown name, or ``"saga"`` without a file.
    CatalogFormatError
        The catalog lacks positions or [Fe/H].
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    key = name.lower()
    if key in REFERENCES:
        product = m[REFERENCES[key]]
        citation, licence, catalog = product.citation, product.licence, product.extra.get("catalog", product.url)
    elif "/" in name:
        citation, licence, catalog = f"VizieR {name}", "VizieR/CDS (cite the paper)", name
    else:
        raise ReferenceCatalogError(f"reference {name!r}: expected one of {', '.join(REFERENCES)} or a VizieR "
                                    "catalog id such as 'J/ApJS/238/36'")
    if key == "saga" and path is None:
        raise ReferenceCatalogError(
            f"reference 'saga': no path; expected the file you exported from {m['saga'].url} (licence "
            f"{m['saga'].licence}: fehkit never downloads or redistributes SAGA rows)"
        )
    if path is not None:
        raw, where = _read_user_table(path), str(path)
        tables = {where: raw}
    else:
        where = f"VizieR {catalog}"
        tables = _vizier_tables(catalog, columns=["**", "_RAJ2000", "_DEJ2000"], filters={}, cone=None,
                                row_limit=max_rows, server=server, cache=cache, refresh=refresh, retries=retries,
                                backoff=backoff, timeout=timeout)
    raw, where = _pick_reference_table(tables, table, columns, where)
    rows = _normalize(raw, _REF, ("ra", "dec", "feh_ref"), where, overrides=columns, patterns=_REF_PATTERNS)
    err_col = "e_" + _source_name(raw, "feh_ref", columns)  # VizieR names an error column e_<column>
    lower = {c.lower(): c for c in raw.colnames}
    if "feh_ref_err" not in (columns or {}) and err_col.lower() in lower:
        rows["feh_ref_err"] = _numeric(raw[lower[err_col.lower()]])
    rows = rows[np.isfinite(rows["feh_ref"].to_numpy())].reset_index(drop=True)
    rows["ref_catalog"] = where
    rows["ref_citation"] = citation
    rows["ref_licence"] = licence
    return rows[list(REFERENCE_COLUMNS)]


def online(host: str = DEFAULT_VIZIER, port: int = 443, timeout: float = 3.0) -> bool:
    """Return whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (a cheap internet check).

    Parameters
    ----------
    host : str
        Host to try (default the VizieR server).
    port : int
        Port (443: https).
    timeout : float
        Seconds.

    Returns
    -------
    bool
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# services
# ---------------------------------------------------------------------------------------------------------------
class _Vizier(VizierClass):
    """astroquery's VizieR client, also accepting a base url with a scheme (``http://127.0.0.1:8000``) as server.

    astroquery builds ``https://<server>/viz-bin/<format>``; a mirror or a local test server may need http or a
    port, so a server given with ``://`` is used as the base url as it is. Requests and parsing are astroquery's.
    """

    def _server_to_url(self, return_type: str = "votable") -> str:
        if "://" in self.VIZIER_SERVER:
            return self.VIZIER_SERVER.rstrip("/") + "/viz-bin/" + return_type
        return super()._server_to_url(return_type=return_type)


def vizier_server(server: str | None = None) -> str:
    """Return the VizieR server to use: ``server``, else ``$FEHKIT_VIZIER_SERVER``, else the CDS one."""
    return server or os.environ.get(ENV_VIZIER) or DEFAULT_VIZIER


def skyserver_url(server: str | None = None) -> str:
    """Return the SkyServer base url to use: ``server``, else ``$FEHKIT_SKYSERVER_URL``, else the SDSS one."""
    return (server or os.environ.get(ENV_SKYSERVER) or DEFAULT_SKYSERVER).rstrip("/")


def _vizier(catalog: str, **kwargs: Any) -> tuple[Table, str]:
    """Query one VizieR table; return it (empty when nothing matched) and a description of where it came from."""
    tables = _vizier_tables(catalog, columns=["**", "_RAJ2000", "_DEJ2000"], **kwargs)
    where = f"VizieR {catalog} at {vizier_server(kwargs.get('server'))}"
    if catalog in tables:
        return tables[catalog], where
    if len(tables) == 1:
        return next(iter(tables.values())), where
    if not tables:
        return Table(), where
    raise CatalogFormatError(where, f"answer holds tables {', '.join(tables)}; expected {catalog}")


def _vizier_tables(
    catalog: str,
    *,
    columns: list[str],
    filters: Mapping[str, str],
    cone: tuple[SkyCoord, Angle] | None,
    row_limit: int,
    server: str | None,
    cache: str | os.PathLike[str] | None,
    refresh: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> dict[str, Table]:
    """Run a VizieR query through astroquery (cached); return its tables by name."""
    host = vizier_server(server)
    where = f"VizieR {catalog} at {host}"
    key = {"service": "vizier", "server": host, "catalog": catalog, "columns": columns, "filters": dict(filters),
           "cone": None if cone is None else [np.atleast_1d(cone[0].ra.deg).round(7).tolist(),
                                              np.atleast_1d(cone[0].dec.deg).round(7).tolist(), cone[1].deg],
           "row_limit": row_limit}

    def ask() -> dict[str, Table]:
        viz = _Vizier(columns=columns, column_filters=dict(filters), row_limit=row_limit, timeout=timeout,
                      vizier_server=host)

        def request() -> requests.Response:
            if cone is None:
                response = viz.query_constraints_async(catalog=catalog, cache=False)
            else:
                response = viz.query_region_async(cone[0], radius=cone[1], catalog=catalog, cache=False)
            response.raise_for_status()
            return response

        response = with_retries(request, what=where, retries=retries, backoff=backoff, failed=CatalogQueryError)
        try:
            parsed = viz._parse_result(response, invalid="exception")
        except TableParseError as err:
            raise CatalogFormatError(where, f"answer is not a valid VOTable ({viz.table_parse_error}); expected "
                                            "VOTable XML") from err
        if parsed is None:
            raise CatalogFormatError(where, f"answer starts with {response.content[:60]!r}; expected VOTable XML "
                                            "(<?xml ...)")
        return {str(k): parsed[k] for k in parsed.keys()}

    return _cached_tables(key, cache, refresh, ask)


def _skyserver(sql: str, *, server: str | None, cache: str | os.PathLike[str] | None, refresh: bool,
               retries: int, backoff: float, timeout: float) -> tuple[Table, str]:
    """Run an SQL query on SkyServer DR17 through astroquery.sdss (cached); return the table and where."""
    from astroquery.sdss import SDSS, conf

    base = skyserver_url(server)
    where = f"SDSS SkyServer DR17 SQL at {base}"
    key = {"service": "skyserver", "server": base, "sql": sql}

    def ask() -> dict[str, Table]:
        def request() -> requests.Response:
            with conf.set_temp("skyserver_baseurl", base):
                response = SDSS.query_sql_async(sql, data_release=17, timeout=timeout, cache=False)
            response.raise_for_status()
            return response

        response = with_retries(request, what=where, retries=retries, backoff=backoff, failed=CatalogQueryError)
        try:
            parsed = SDSS._parse_result(response)
        except RemoteServiceError as err:
            raise CatalogQueryError(where, f"the server reported an error: {str(err)[:300]}") from None
        except Exception as err:  # astropy's CSV reader raises several types for text that is not a table
            raise CatalogFormatError(where, f"answer is not a CSV table ({type(err).__name__}: {err}); starts with "
                                            f"{response.text[:60]!r}; expected CSV with a header line") from None
        return {"sql": parsed if parsed is not None else Table()}

    return _cached_tables(key, cache, refresh, ask)["sql"], where


def _cached_tables(key: dict[str, Any], cache: str | os.PathLike[str] | None, refresh: bool,
                   ask: Callable[[], dict[str, Table]]) -> dict[str, Table]:
    """Return the cached answer to ``key``, or ``ask()`` and cache it (one ECSV file per table)."""
    from fehkit.files import atomic_output

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = cache_dir(cache) / "catalogs"
    index = folder / f"{key['service']}-{digest}.json"
    if index.is_file() and not refresh:
        try:
            names = json.loads(index.read_text())["tables"]
            return {n: Table.read(folder / f, format="ascii.ecsv") for n, f in names.items()}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry: ask again
    tables = ask()
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (name, t) in enumerate(tables.items()):
        files[name] = f"{key['service']}-{digest}-{i}.ecsv"
        with atomic_output(folder / files[name]) as tmp:
            t.write(tmp, format="ascii.ecsv", overwrite=True)
    with atomic_output(index) as tmp:
        tmp.write_text(json.dumps({"query": key, "tables": files}, indent=1, default=str))
    return tables


def _apogee_sql(m_h_min: float | None, m_h_max: float | None, snr_min: float | None, ids: list[str],
                cone: tuple[SkyCoord, Angle] | None, telescope: str | None, max_rows: int) -> str:
    where = []
    if m_h_min is not None:
        where.append(f"a.m_h >= {float(m_h_min)!r}")
    if m_h_max is not None:
        where.append(f"a.m_h <= {float(m_h_max)!r} AND a.m_h > -9000")
    if snr_min is not None:
        where.append(f"s.snr >= {float(snr_min)!r}")
    if telescope:
        if not re.fullmatch(r"[a-z0-9]+", telescope):
            raise CatalogQueryError("query_apogee", f"telescope={telescope!r}; expected e.g. apo25m, lco25m, apo1m")
        where.append(f"s.telescope = '{telescope}'")
    if ids:
        where.append("s.apogee_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")")
    if cone is not None:  # a box the cone fits in; the exact cone is cut afterwards
        c, r = cone
        if not c.isscalar:
            raise CatalogQueryError("query_apogee(source='sql')", f"{len(c)} cone centres; the SQL query takes one: "
                                    "use source='vizier' for a list of positions")
        dec, rad = c.dec.deg, r.deg
        where.append(f"s.dec BETWEEN {dec - rad!r} AND {dec + rad!r}")
        if abs(dec) + rad < 89.0:
            dra = rad / np.cos(np.radians(abs(dec) + rad))
            lo, hi = (c.ra.deg - dra) % 360.0, (c.ra.deg + dra) % 360.0
            where.append(f"s.ra BETWEEN {lo!r} AND {hi!r}" if lo <= hi else f"(s.ra >= {lo!r} OR s.ra <= {hi!r})")
    return (
        f"SELECT TOP {int(max_rows)} s.apogee_id, s.telescope, s.field, s.[file], s.ra, s.dec, s.snr, s.nvisits, "
        "s.starflag, a.aspcapflag, a.teff, a.teff_err, a.logg, a.logg_err, a.vmicro, a.m_h, a.m_h_err, a.fe_h, "
        "a.fe_h_err FROM apogeeStar AS s LEFT OUTER JOIN aspcapStar AS a ON a.apstar_id = s.apstar_id"
        + (" WHERE " + " AND ".join(where) if where else "")
    )


# ---------------------------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------------------------
def _normalize(
    raw: Table,
    aliases: Mapping[str, tuple[str, ...]],
    required: Iterable[str],
    where: str,
    overrides: Mapping[str, str] | None = None,
    patterns: Mapping[str, re.Pattern[str]] | None = None,
) -> pd.DataFrame:
    """Rename a service's columns to fehkit's names; numbers as float (NaN for missing), text as str."""
    out = {}
    for name in aliases:
        src = _source_name(raw, name, overrides, aliases, patterns)
        if not src:
            out[name] = np.full(len(raw), np.nan)
        elif name in ("apogee_id", "telescope", "field", "file", "ref_id", "gaia_id"):
            out[name] = _strings(raw[src])
        elif name in ("ra", "dec"):
            out[name] = _degrees(raw[src], name, where)
        else:
            out[name] = _numeric(raw[src])
    missing = [n for n in required if not _source_name(raw, n, overrides, aliases, patterns)]
    if missing and len(raw.colnames):
        raise CatalogFormatError(
            where,
            f"no {', '.join('/'.join(aliases[n]) for n in missing)} column; found "
            f"{', '.join(raw.colnames)}",
        )
    return pd.DataFrame(out)


def _source_name(raw: Table, name: str, overrides: Mapping[str, str] | None = None,
                 aliases: Mapping[str, tuple[str, ...]] = _REF,
                 patterns: Mapping[str, re.Pattern[str]] | None = _REF_PATTERNS) -> str:
    """Return the column of ``raw`` that holds ``name`` ('' if none): override, alias, then name pattern."""
    if overrides and name in overrides:
        if overrides[name] not in raw.colnames:
            raise CatalogFormatError("columns=", f"{name}={overrides[name]!r}: no such column; found "
                                                 f"{', '.join(raw.colnames)}")
        return overrides[name]
    lower = {c.lower(): c for c in raw.colnames}
    for alias in aliases.get(name, ()):
        if alias.lower() in lower:
            return lower[alias.lower()]
    if patterns and name in patterns:
        for c in raw.colnames:
            if patterns[name].match(c) and not _NOT_VALUES.match(c):
                return c
    return ""


def _cells(col: Any) -> list[Any]:
    """Return a column's cells as Python objects: None for masked cells, bytes decoded."""
    values = np.array(np.ma.getdata(col), dtype=object)
    values[np.ma.getmaskarray(col)] = None  # (filled(None) would write the fill value, 1e20, not None)
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def _numeric(col: Any) -> np.ndarray:
    """Return a column as float64 with NaN for masked, empty or non-numeric cells."""
    return pd.to_numeric(pd.Series(_cells(col), dtype=object), errors="coerce").to_numpy(dtype=float, copy=True)


def _strings(col: Any) -> np.ndarray:
    """Return a column as str, None for masked or empty cells."""
    out = []
    for v in _cells(col):
        v = None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        out.append(v or None)
    return np.array(out, dtype=object)


def _degrees(col: Any, name: str, where: str) -> np.ndarray:
    """Return positions in degrees; sexagesimal text ("17 33 54.8", "17:33:54.8") is parsed, RA in hours."""
    numbers = _numeric(col)
    text = _strings(col)
    bad = np.isnan(numbers) & np.array([t is not None for t in text])
    if bad.any():
        unit = u.hourangle if name == "ra" else u.deg
        try:
            numbers[bad] = Angle([t.replace(":", " ") for t in text[bad]], unit=unit).deg
        except ValueError as err:
            raise CatalogFormatError(where, f"column {col.name if hasattr(col, 'name') else name}: {err}; "
                                            "expected degrees or sexagesimal") from None
    return numbers


def _pick_reference_table(tables: Mapping[str, Table], table: str | None, columns: Mapping[str, str] | None,
                          where: str) -> tuple[Table, str]:
    if table is not None:
        if table not in tables:
            raise CatalogFormatError(where, f"no table {table!r}; found {', '.join(tables) or 'no tables'}")
        return tables[table], f"{where} table {table}"
    usable = []
    for name, t in tables.items():
        has = [_source_name(t, n, columns) for n in ("ra", "dec", "feh_ref")]
        if all(has):
            usable.append((len(t), name, t))
    if not usable:
        found = "; ".join(f"{n}: {', '.join(t.colnames[:25])}" for n, t in tables.items()) or "no rows"
        raise CatalogFormatError(where, f"no table with positions and [Fe/H]; found {found}")
    _, name, t = max(usable, key=lambda x: x[0])
    return t, (where if name == where else f"{where} table {name}")


def _read_user_table(path: str | os.PathLike[str]) -> Table:
    """Read a table a user exported (CSV, TSV, any delimiter; ECSV/FITS/VOTable by extension)."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCatalogError(f"{path}: no such file; expected the table you exported (CSV/TSV)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".fits", ".fit", ".ecsv", ".vot", ".xml"):
            return Table.read(path)
        frame = pd.read_csv(path, sep=None, engine="python", comment="#", skipinitialspace=True)
    except Exception as err:  # pandas/astropy raise many types for unreadable files
        raise ReferenceCatalogError(f"{path}: not a readable table ({type(err).__name__}: {err}); expected CSV/TSV "
                                    "with a header line") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return Table.from_pandas(frame)


def _read_fits_columns(path: Path, aliases: Mapping[str, tuple[str, ...]]) -> Table:
    """Read only the columns fehkit uses from a (large) FITS table, memory-mapped."""
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise CatalogFormatError(str(path), "HDU1 is not a binary table; expected the GALAH allstar table")
        data = hdul[1].data
        lower = {n.lower(): n for n in data.columns.names}
        wanted = [lower[a.lower()] for al in aliases.values() for a in al if a.lower() in lower]
        return Table({n: np.array(data[n]) for n in dict.fromkeys(wanted)})


def _cone(center: SkyCoord | str | None, radius: u.Quantity | float | None) -> tuple[SkyCoord, Angle] | None:
    """Return (centre or centres, radius) of a cone search, checked; None without one."""
    if center is None and radius is None:
        return None
    if center is None or radius is None:
        raise CatalogQueryError("cone search", f"center={center!r}, radius={radius!r}; expected both or neither")
    if not isinstance(center, SkyCoord):
        try:
            center = SkyCoord(center, unit=(u.hourangle, u.deg) if ":" in center or "h" in center else u.deg)
        except (ValueError, TypeError) as err:
            raise CatalogQueryError("cone search", f"center={center!r}: {err}; expected a SkyCoord or "
                                                   "'RA Dec' text") from None
    if not center.isscalar and len(center) == 0:
        raise CatalogQueryError("cone search", "center is an empty SkyCoord; expected at least one position")
    r = Angle(radius if isinstance(radius, u.Quantity) else radius * u.deg)
    if not 0 < r.deg <= 30:
        raise CatalogQueryError("cone search", f"radius {r.deg:g} deg; expected more than 0 and at most 30 deg")
    return center.icrs, r


def _in_cone(rows: pd.DataFrame, center: SkyCoord, radius: Angle) -> np.ndarray:
    """Return which rows lie within ``radius`` of the centre (or of any of several centres)."""
    ok = np.isfinite(rows["ra"].to_numpy()) & np.isfinite(rows["dec"].to_numpy())
    inside = np.zeros(len(rows), bool)
    if ok.any():
        pos = SkyCoord(rows["ra"].to_numpy()[ok] * u.deg, rows["dec"].to_numpy()[ok] * u.deg)
        if center.isscalar or len(center) == 1:
            inside[ok] = pos.separation(center if center.isscalar else center[0]) <= radius
        else:
            inside[ok] = match_coordinates_sky(pos, center)[1] <= radius
    return inside


def _check_ids(ids: Sequence[str] | None) -> list[str]:
    if ids is None:
        return []
    if isinstance(ids, str):
        ids = [ids]
    out = [str(i).strip() for i in ids]
    bad = [i for i in out if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", i)]
    if bad:
        raise CatalogQueryError("query_apogee", f"apogee_ids {bad[:3]}: expected 2MASS-style ids such as "
                                                "2M17335483-2753043")
    return out


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f">={lo:g} & <={hi:g}"
    return f">={lo:g}" if lo is not None else f"<={hi:g}"


def _warn_if_truncated(n: int, max_rows: int, where: str) -> None:
    import warnings

    from fehkit.errors import FehkitWarning

    if max_rows > 0 and n >= max_rows:
        warnings.warn(f"{where}: the answer has max_rows={max_rows} rows and may be cut short; raise max_rows or "
                      "narrow the query", FehkitWarning, stacklevel=3)
