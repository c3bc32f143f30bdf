"""fehkit.data offline: a real HTTP server on 127.0.0.1 serves a SAS-shaped mirror of apStar files, VizieR VOTable
answers and SkyServer SQL CSV answers; astroquery and pooch run unmodified against it (only their base urls point
at it). No other network is used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable.exceptions import VOWarning
from astropy.io.votable.tree import Resource, TableElement, VOTableFile
from astropy.table import MaskedColumn, Table

from fehkit.cli import main
from fehkit.data import (
    REFERENCE_COLUMNS,
    TRAINING_COLUMNS,
    BatchDownloadError,
    CatalogFormatError,
    CatalogQueryError,
    ChecksumError,
    CrossmatchError,
    DownloadError,
    ManifestError,
    ReferenceCatalogError,
    ServiceUnavailableError,
    crossmatch,
    fetch_product,
    fetch_spectra,
    load_manifest,
    load_reference,
    query_apogee,
    query_galah,
)
from fehkit.examples import example_paths
from fehkit.io import read_apogee

REPO = Path(__file__).parents[1]
STARS = "/sas/dr17/apogee/spectro/redux/dr17/stars"
FAST = {"backoff": 0.01, "retries": 3}  # keep the retry tests quick


# ---------------------------------------------------------------------------------------------------------------
# the local server
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Route:
    """What the server answers on one path: a body, after ``fail`` answers of ``fail_status``, ``truncate``
    answers cut in half (the Content-Length still announcing the whole body) and ``wrong`` whole answers of status
    200 with ``wrong_body`` (a mirror's error page) instead."""

    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    fail: int = 0
    fail_status: int = 503
    truncate: int = 0
    wrong: int = 0
    wrong_body: bytes = b"<!DOCTYPE html>\n<html><head><title>Maintenance</title></head><body>Back soon</body></html>\n"
    wrong_type: str = "text/html; charset=utf-8"
    hits: int = 0


@dataclass
class Server:
    url: str
    routes: dict[str, Route | Callable[[dict], Route]] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hits(self, prefix: str = "") -> int:
        return sum(1 for r in self.log if r["path"].startswith(prefix))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fehkit-test"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        state: Server = self.server.state
        parts = urlsplit(self.path)
        path = unquote(parts.path)  # not unquote_plus: SAS field names hold '+'
        body_in = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        request = {"method": self.command, "path": path, "query": parse_qs(parts.query), "body": body_in}
        with state.lock:
            state.log.append(request)
            route = state.routes.get(path)
            if callable(route):
                route = route(request)
            if route is not None:
                route.hits += 1
                n = route.hits
        if route is None:
            return self._send(404, b"not found", "text/plain")
        if n <= route.fail:
            return self._send(route.fail_status, b"Service Temporarily Unavailable", "text/html")
        if n <= route.fail + route.truncate:
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if n <= route.fail + route.truncate + route.wrong:
            return self._send(200, route.wrong_body, route.wrong_type)
        return self._send(route.status, route.body, route.content_type)

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder; the environment must not point anywhere else."""
    for var in ("FEHKIT_CACHE", "FEHKIT_DATA_URL", "FEHKIT_VIZIER_SERVER", "FEHKIT_SKYSERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "cache"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------------------------------------------------------
# real-format content
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def apstar_files() -> dict[str, bytes]:
    """The two real DR17 apStar files, uncompressed, by file name."""
    return {p.name.removesuffix(".gz"): gzip.decompress(p.read_bytes()) for p in example_paths()}


GIANT, DWARF = "apStar-dr17-2M17335483-2753043.fits", "apStar-dr17-2M19485057+5005279.fits"


def allstar_rows() -> pd.DataFrame:
    """allStar-like rows (TELESCOPE, FIELD, FILE) of the two real stars and two more served with the same bytes."""
    return pd.DataFrame(
        {
            "APOGEE_ID": ["2M17335483-2753043", "2M19485057+5005279", "2M00000001+0000001", "2M00000002-0000002"],
            "TELESCOPE": ["apo25m", "apo25m", "apo25m", "lco25m"],
            "FIELD": ["000+02", "K04_083+13", "TEST+01", "TEST-02"],
            "FILE": [GIANT, DWARF, "apStar-dr17-2M00000001+0000001.fits", "asStar-dr17-2M00000002-0000002.fits"],
        }
    )


def serve_sas(server: Server, apstar_files: dict[str, bytes], rows: pd.DataFrame | None = None) -> pd.DataFrame:
    rows = allstar_rows() if rows is None else rows
    for tel, fld, name in zip(rows.TELESCOPE, rows.FIELD, rows.FILE, strict=True):
        body = apstar_files.get(name, apstar_files[GIANT])
        server.routes[f"{STARS}/{tel}/{fld}/{name}"] = Route(body)
    return rows


def votable(tables: dict[str, Table], resource: str = "III/286") -> bytes:
    """VizieR-shaped VOTable XML: one RESOURCE named after the catalog, one TABLE per table name."""
    vot = VOTableFile()
    res = Resource()
    res.name = resource
    vot.resources.append(res)
    for name, t in tables.items():
        with warnings.catch_warnings():  # W03: astropy makes IDs from names like [M/H]; set below as VizieR does
            warnings.simplefilter("ignore", VOWarning)
            element = TableElement.from_table(vot, t)
        element.name = name
        for f in element.fields:  # VizieR gives every field an ID made of its name, [M/H] -> __M_H_
            f.ID = re.sub(r"[^A-Za-z0-9_]", "_", f.name)
        res.tables.append(element)
    buf = io.BytesIO()
    vot.to_xml(buf)
    return buf.getvalue()


def apogee_vizier_table() -> Table:
    """III/286/catalog-like rows with VizieR's column names; the third star has no ASPCAP [M/H] (EMP)."""
    t = Table()
    t["_RAJ2000"] = [263.478467, 297.210708, 10.0, 200.0]
    t["_DEJ2000"] = [-27.884528, 50.091083, -5.0, 40.0]
    t["APOGEE"] = ["2M17335483-2753043", "2M19485057+5005279", "2M00400000-0500000", "2M13200000+4000000"]
    t["Tel"] = ["apo25m", "apo25m", "lco25m", "apo25m"]
    t["Field"] = ["000+02", "K04_083+13", "TEST-01", "TEST+02"]
    t["File"] = [GIANT, DWARF, "asStar-dr17-2M00400000-0500000.fits", "apStar-dr17-2M13200000+4000000.fits"]
    t["SNR"] = [154.2, 137.5, 88.0, 20.0]
    t["Nvis"] = np.array([3, 1, 2, 1], dtype=np.int32)
    t["SFlag"] = np.array([0, 0, 0, 16], dtype=np.int64)
    t["AFlag"] = np.array([0, 0, 1 << 23, 0], dtype=np.int64)
    t["Teff"] = [3750.0, 5200.0, 4700.0, 4900.0]
    t["e_Teff"] = [20.0, 30.0, 50.0, 60.0]
    t["logg"] = [0.9, 4.5, 1.3, 2.0]
    t["e_logg"] = [0.05, 0.06, 0.1, 0.1]
    t["[M/H]"] = MaskedColumn([-0.1, 0.05, np.nan, -1.5], mask=[False, False, True, False])
    t["e_[M/H]"] = MaskedColumn([0.01, 0.01, np.nan, 0.05], mask=[False, False, True, False])
    t["[Fe/H]"] = MaskedColumn([-0.12, 0.03, np.nan, -1.55], mask=[False, False, True, False])
    t["e_[Fe/H]"] = [0.01, 0.01, np.nan, 0.05]
    return t


def vizier_route(server: Server, tables: dict[str, Table] | bytes, catalog: str = "III/286") -> None:
    body = tables if isinstance(tables, bytes) else votable(tables, catalog)
    server.routes["/viz-bin/votable"] = Route(body, "text/xml")


SQL_CSV = (
    "#Table1\n"
    "apogee_id,telescope,field,file,ra,dec,snr,nvisits,starflag,aspcapflag,teff,teff_err,logg,logg_err,vmicro,"
    "m_h,m_h_err,fe_h,fe_h_err\n"
    "2M17335483-2753043,apo25m,000+02,apStar-dr17-2M17335483-2753043.fits,263.478467,-27.884528,154.2,3,0,0,"
    "3750,20,0.9,0.05,1.8,-0.1,0.01,-0.12,0.01\n"
    "2M00400000-0500000,lco25m,TEST-01,asStar-dr17-2M00400000-0500000.fits,10.0,-5.0,88.0,2,0,8388608,"
    "-9999,-9999,-9999,-9999,-9999,-9999,-9999,-9999,-9999\n"
)
SQL_PATH = "/dr17/en/tools/search/x_results.aspx"


def no_files_left(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------------------------
def test_manifest_lists_every_remote_product_with_provenance():
    packaged = REPO / "fehkit" / "data" / "data_manifest.yaml"
    assert packaged.is_file() and not packaged.is_symlink()  # a real file, so that a wheel carries it
    assert (REPO / "data_manifest.yaml").resolve() == packaged.resolve()  # the root name is a link to it
    raw = yaml.safe_load(packaged.read_text())["products"]
    m = load_manifest()
    assert Path(str(m.path)).resolve() == packaged.resolve()
    assert set(m.products) == set(raw)
    for name in ("apstar_dr17", "aspcapstar_dr17", "allstar_dr17", "apogee_dr17_vizier", "apogee_dr17_sql",
                 "galah_dr3_vizier", "galah_dr4_allstar", "jinabase_vizier", "montelius2026_vizier", "saga"):
        assert m[name].url == raw[name]["url"]
        for key in ("url", "licence", "citation", "kind"):
            assert raw[name].get(key), f"{name} lacks {key}"
        assert "sha256" in raw[name] and "size" in raw[name], f"{name}: say sha256/size, even if null"
    assert m["apogee_dr17_vizier"].extra["catalog"] == "III/286"
    assert m["galah_dr3_vizier"].extra["catalog"] == "J/MNRAS/506/150"
    assert m["jinabase_vizier"].extra["catalog"] == "J/ApJS/238/36"
    assert m["montelius2026_vizier"].extra["catalog"] == "J/A+A/707/A308"
    assert m["galah_dr4_allstar"].url.endswith("/galah_dr4_allstar_240705.fits")
    assert m["saga"].kind == "link" and "NC" in m["saga"].licence
    assert m["apstar_dr17"].url_for(mirror="", telescope="apo25m", field="000+02", file=GIANT) == (
        "https://data.sdss.org/sas/dr17/apogee/spectro/redux/dr17/stars/apo25m/000+02/" + GIANT
    )
    assert m.known_sha256()[GIANT] == "8b055f2364897a5ea39b38a326dd156b98aaa24636ceea13642c96daddc65a48"


def test_manifest_errors_name_the_product_and_the_field(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("products:\n  x:\n    kind: file\n    url: https://h/x.fits\n    sha256: abc\n")
    with pytest.raises(ManifestError, match=r"product x: sha256 'abc'; expected 64 hex digits"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="no product 'nope'; expected one of apstar_dr17"):
        load_manifest()["nope"]
    with pytest.raises(ManifestError, match="needs telescope, field, file"):
        load_manifest()["apstar_dr17"].url_for()
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------------------
# spectra: download, cache, checksum, truncation, 503, resume
# ---------------------------------------------------------------------------------------------------------------
def test_fetch_spectra_downloads_in_parallel_then_hits_the_cache(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files)
    got = fetch_spectra(rows, cache=cache, mirror=server.url, workers=3, progress=False)
    assert list(got["fetch_status"]) == ["downloaded"] * 4
    assert server.hits(STARS) == 4
    # the cache mirrors the SAS layout, whatever host served it
    assert Path(got["path"][0]) == cache / "sas/dr17/apogee/spectro/redux/dr17/stars/apo25m/000+02" / GIANT
    assert got["url"][3] == f"{server.url}{STARS}/lco25m/TEST-02/asStar-dr17-2M00000002-0000002.fits"
    # the real bytes arrived (the giant was checked against the manifest's sha256 on the way)
    assert hashlib.sha256(Path(got["path"][0]).read_bytes()).hexdigest() == load_manifest().known_sha256()[GIANT]
    batch = read_apogee(list(got["path"][:2]))
    assert list(batch.meta["star_id"]) == ["2M17335483-2753043", "2M19485057+5005279"]

    again = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert list(again["fetch_status"]) == ["cached"] * 4
    assert server.hits(STARS) == 4  # nothing asked again


def test_environment_chooses_mirror_and_cache(server, cache, apstar_files, monkeypatch):
    rows = serve_sas(server, apstar_files).iloc[:1]
    monkeypatch.setenv("FEHKIT_DATA_URL", server.url + "/")
    monkeypatch.setenv("FEHKIT_CACHE", str(cache))
    got = fetch_spectra(rows.rename(columns=str.lower), progress=False)  # column names in any case
    assert got["path"][0].startswith(str(cache))
    assert server.hits(STARS) == 1


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing_in_the_cache(server, cache, apstar_files):
    damaged = bytearray(apstar_files[GIANT])
    damaged[5000] ^= 0xFF
    server.routes[f"{STARS}/apo25m/000+02/{GIANT}"] = Route(bytes(damaged))
    rows = allstar_rows().iloc[:1]
    with pytest.raises(ChecksumError) as err:
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    message = str(err.value)
    assert GIANT in message
    assert "8b055f2364897a5ea39b38a326dd156b98aaa24636ceea13642c96daddc65a48" in message  # expected
    assert hashlib.sha256(bytes(damaged)).hexdigest() in message  # found
    assert err.value.found == hashlib.sha256(bytes(damaged)).hexdigest()
    assert no_files_left(cache) == []  # neither the file nor pooch's temporary file
    assert server.hits(STARS) == 1  # a mismatch is not retried: it would fail the same way


def test_truncated_download_is_retried(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[1]]
    route = server.routes[f"{STARS}/apo25m/K04_083+13/{DWARF}"]
    route.truncate = 2  # two answers cut in half, Content-Length announcing the whole file
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert route.hits == 3
    assert Path(got["path"].iloc[0]).read_bytes() == apstar_files[DWARF]
    assert sorted(p.name for p in no_files_left(cache)) == [DWARF, DWARF + ".sha256"]


def test_503_is_retried_with_backoff(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2]]
    route = server.routes[f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"]
    route.fail = 2
    t0 = time.perf_counter()
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, retries=3, backoff=0.1)
    assert time.perf_counter() - t0 >= 0.1 + 0.2  # waited backoff, then twice backoff
    assert route.hits == 3 and got["fetch_status"].iloc[0] == "downloaded"


def test_503_that_persists_gives_a_clear_error(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2]]
    route = server.routes[f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"]
    route.fail = 99
    with pytest.raises(ServiceUnavailableError, match=r"failed 4 times .* \(last: HTTP 503 .*try again later"):
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert route.hits == 4  # the first try and 3 retries
    assert no_files_left(cache) == []


def test_missing_file_is_not_retried(server, cache):
    rows = allstar_rows().iloc[:1]  # nothing served: 404
    with pytest.raises(DownloadError, match=r"apStar-dr17-2M17335483-2753043.fits: HTTP 404 .*expected 200"):
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert server.hits(STARS) == 1


def test_interrupted_batch_resumes_without_downloading_again(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files)
    broken = server.routes[f"{STARS}/lco25m/TEST-02/asStar-dr17-2M00000002-0000002.fits"]
    other = server.routes[f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"]
    # one transfer is cut off mid-file (as if the connection or the process died), one server keeps failing
    server.routes[f"{STARS}/lco25m/TEST-02/asStar-dr17-2M00000002-0000002.fits"] = Route(broken.body, truncate=99)
    server.routes[f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"] = Route(fail=99, fail_status=500)
    with pytest.raises(BatchDownloadError, match=r"2 of 4 files: failed: .*run the same call again") as err:
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, retries=0)
    assert len(err.value.failures) == 2
    first = server.hits(STARS)
    assert first == 4
    cached = sorted(p.name for p in no_files_left(cache))
    assert cached == sorted([GIANT, GIANT + ".sha256", DWARF, DWARF + ".sha256"])  # no partial file anywhere

    # "skip" reports the failures in the table instead
    with pytest.warns(UserWarning, match="2 of 4 rows have no file"):
        partial = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, retries=0, on_error="skip")
    assert list(partial["fetch_status"].str.split(":").str[0]) == ["cached", "cached", "failed", "failed"]
    assert partial["path"].isna().tolist() == [False, False, True, True]

    # the server recovers; only the two missing files are asked for
    server.routes[f"{STARS}/lco25m/TEST-02/asStar-dr17-2M00000002-0000002.fits"] = broken
    server.routes[f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"] = other
    done = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert list(done["fetch_status"]) == ["cached", "cached", "downloaded", "downloaded"]
    assert broken.hits == 1 and other.hits == 1
    assert server.hits(STARS) == first + 2 + 2  # the "skip" run asked the two failing files once more


def test_a_damaged_cached_file_is_fetched_again(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2]]
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    path = Path(got["path"].iloc[0])
    path.write_bytes(path.read_bytes()[:1000])  # e.g. a disk problem after the download
    again = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert again["fetch_status"].iloc[0] == "downloaded"
    assert path.read_bytes() == apstar_files[GIANT]


# ---------------------------------------------------------------------------------------------------------------
# what arrives is checked before it enters the cache
# ---------------------------------------------------------------------------------------------------------------
OTHER = f"{STARS}/apo25m/TEST+01/apStar-dr17-2M00000001+0000001.fits"  # a file without a known sha256


def test_html_page_with_status_200_is_retried_then_failed_and_never_cached(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2]]
    route = server.routes[OTHER]
    route.wrong = 99
    with pytest.raises(DownloadError, match=r"apStar-dr17-2M00000001\+0000001.fits: failed 4 times .*\(last: "
                                            r"received an HTML page \(text/html; charset=utf-8, 91 bytes, starting "
                                            r"'<!DOCTYPE html>.*; expected the APOGEE spectrum .*Nothing was cached"):
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert route.hits == 4  # the first try and 3 retries
    assert no_files_left(cache) == []  # no file, no sha256 beside it, no temporary file


def test_truncated_fits_of_the_announced_length_is_failed_not_cached(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2]]
    server.routes[OTHER] = Route(apstar_files[GIANT][:5000])  # Content-Length 5000: the HTTP answer is whole
    with pytest.raises(DownloadError, match=r"failed 4 times .*received a file that is not a usable spectrum: 5000 "
                                            r"bytes, not a whole number of 2880-byte FITS blocks.*expected the "
                                            r"APOGEE spectrum apStar-dr17-2M00000001\+0000001.fits: FITS in whole"):
        fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert server.routes[OTHER].hits == 4
    assert no_files_left(cache) == []

    # cut at a block boundary, or without the HDUs an apStar needs: refused the same way
    one_hdu = io.BytesIO()
    fits.PrimaryHDU().writeto(one_hdu)
    for body, match in ((apstar_files[GIANT][: 2880 * 100], "File may have been truncated"),
                        (one_hdu.getvalue(), r"has 1 HDUs; expected at least 4 \(header, flux, error, bitmask\)")):
        server.routes[OTHER] = Route(body)
        with pytest.raises(DownloadError, match=match):
            fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, retries=0)
        assert no_files_left(cache) == []


def test_a_good_file_after_a_bad_answer_is_cached_once(server, cache, apstar_files):
    rows = serve_sas(server, apstar_files).iloc[[2, 0]]
    route, giant = server.routes[OTHER], server.routes[f"{STARS}/apo25m/000+02/{GIANT}"]
    route.wrong = 1
    giant.wrong, giant.wrong_body = 1, apstar_files[GIANT][:-2880]  # a known sha256 too: checked before the hash
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False, **FAST)
    assert got["fetch_status"].tolist() == ["downloaded", "downloaded"]
    assert route.hits == 2 and giant.hits == 2
    path = Path(got["path"].iloc[0])
    assert path.read_bytes() == apstar_files[GIANT]
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().strip() == hashlib.sha256(apstar_files[GIANT]).hexdigest()
    again = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert again["fetch_status"].tolist() == ["cached", "cached"] and route.hits == 2 and giant.hits == 2


@pytest.mark.parametrize("poison", ["html", "truncated", "cut at a block", "corrupt gzip"])
def test_a_cached_file_that_fails_the_check_is_fetched_again(server, cache, apstar_files, poison):
    """A file cached by an earlier version without the check, its sha256 recorded beside it: it is not reused."""
    rows = serve_sas(server, apstar_files).iloc[[2]]
    path = cache / OTHER.lstrip("/")
    body = {
        "html": Route().wrong_body,
        "truncated": apstar_files[GIANT][:5000],
        "cut at a block": apstar_files[GIANT][: 2880 * 10],
        "corrupt gzip": gzip.compress(apstar_files[GIANT])[:-100],
    }[poison]
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(body).hexdigest() + "\n")
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert got["fetch_status"].iloc[0] == "downloaded" and server.routes[OTHER].hits == 1
    assert path.read_bytes() == apstar_files[GIANT]
    assert path.with_name(path.name + ".sha256").read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_products_are_checked_as_fits_tables(server, cache, tmp_path, apstar_files, caplog):
    body = apstar_files[DWARF]
    m = _manifest_with(tmp_path, server, body[:5000], None, None)
    with pytest.raises(DownloadError, match=r"table.fits: failed 4 times .*received a truncated FITS file: 5000 "
                                            r"bytes, not a multiple of 2880\); expected the FITS file table.fits"):
        fetch_product("table", manifest=m, cache=cache, mirror=server.url, **FAST)
    assert server.routes["/data/table.fits"].hits == 4
    m = _manifest_with(tmp_path, server, body, None, None)
    server.routes["/data/table.fits"].wrong = 99
    server.routes["/data/table.fits"].wrong_type = "application/octet-stream"  # the page says it, not the header
    with pytest.raises(DownloadError, match=r"received an HTML page \(application/octet-stream, 91 bytes"):
        fetch_product("table", manifest=m, cache=cache, mirror=server.url, **FAST)
    assert no_files_left(cache) == []
    route = server.routes["/data/table.fits"] = Route(body, wrong=1)
    path = fetch_product("table", manifest=m, cache=cache, mirror=server.url, **FAST)
    assert path.read_bytes() == body and route.hits == 2

    for cut, why in ((2880 * 3, "a primary header only"), (2880 * 20, "File may have been truncated")):
        path.write_bytes(body[:cut])  # damaged in the cache, its sha256 recorded beside it by an earlier version
        path.with_name("table.fits.sha256").write_text(hashlib.sha256(body[:cut]).hexdigest())
        with caplog.at_level("WARNING", logger="fehkit.data"):
            assert fetch_product("table", manifest=m, cache=cache, mirror=server.url).read_bytes() == body
        assert why in caplog.text and "fetching it again" in caplog.text
    assert route.hits == 2 + 2


def test_fehkit_fetch_reports_a_bad_answer_as_one_line(server, cache, apstar_files, tmp_path, capsys):
    rows = serve_sas(server, apstar_files).iloc[[0, 2]]
    server.routes[OTHER].wrong = 99
    table = tmp_path / "rows.csv"
    rows.to_csv(table, index=False)
    args = ["fetch", "spectra", str(table), "--cache", str(cache), "--mirror", server.url, "--no-progress",
            "--backoff", "0.01", "--retries", "1"]
    assert main(args) == 2  # one file failed: the error, one line
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in lines if ": error: " in line]
    assert len(err) == 1 and lines[-1] == err[0] and err[0].startswith("fehkit fetch: error: http://127.0.0.1:")
    assert "failed 2 times" in err[0] and "received an HTML page (text/html" in err[0]
    assert "expected the APOGEE spectrum apStar-dr17-2M00000001+0000001.fits" in err[0]
    assert sorted(p.name for p in no_files_left(cache)) == [GIANT, GIANT + ".sha256"]

    out = tmp_path / "fetched.csv"
    assert main(args + ["--on-error", "skip", "--out", str(out)]) == 1  # partly done
    captured = capsys.readouterr()
    assert "2 rows: 0 downloaded, 1 already cached, 1 failed" in captured.out
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "received an HTML page" in failed[0]
    assert pd.read_csv(out)["path"].isna().tolist() == [False, True]
    assert sorted(p.name for p in no_files_left(cache)) == [GIANT, GIANT + ".sha256"]


def test_check_spectrum_file_checks_structure_only(tmp_path, apstar_files):
    from fehkit.errors import CorruptFileError, MissingHDUError, NotFITSError
    from fehkit.io import check_spectrum_file

    assert [check_spectrum_file(p) for p in example_paths()] == ["apStar", "apStar"]
    tmp = tmp_path / "tmp1234"  # a download's temporary name: the kind comes from name=
    tmp.write_bytes(apstar_files[GIANT])
    assert check_spectrum_file(tmp, name=GIANT) == "apStar"
    assert check_spectrum_file(REPO / "tests" / "data" / "apVisit-r13-5095-55844-128.fits.gz") == "apVisit"
    tmp.write_bytes(gzip.compress(apstar_files[GIANT])[:-8])
    with pytest.raises(CorruptFileError, match="tmp1234: corrupt or truncated gzip stream"):
        check_spectrum_file(tmp, name=GIANT)
    tmp.write_bytes(b"<html><body>Not here</body></html>")
    with pytest.raises(NotFITSError, match="does not start with a FITS header"):
        check_spectrum_file(tmp, name=GIANT)
    with fits.open(io.BytesIO(apstar_files[GIANT])) as hdul:
        fits.HDUList([hdul[0].copy(), hdul[1].copy()]).writeto(tmp, overwrite=True)
    with pytest.raises(MissingHDUError, match=r"has 2 HDUs; expected at least 3 \(header, normalized flux, error\)"):
        check_spectrum_file(tmp, kind="aspcapStar")


def test_rows_without_the_needed_columns_are_refused(cache):
    with pytest.raises(Exception, match=r"no column FILE; found TELESCOPE, FIELD"):
        fetch_spectra(pd.DataFrame({"TELESCOPE": ["apo25m"], "FIELD": ["x"]}), cache=cache, progress=False)
    bad = allstar_rows().iloc[:1].assign(FIELD="../../etc")
    with pytest.raises(Exception, match="not a single path component"):
        fetch_spectra(bad, cache=cache, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# file products of the manifest
# ---------------------------------------------------------------------------------------------------------------
def _manifest_with(tmp_path: Path, server: Server, body: bytes, sha256: str | None, size: int | None) -> Path:
    server.routes["/data/table.fits"] = Route(body)
    doc = {"products": {"table": {"kind": "file", "url": "https://example.org/data/table.fits", "sha256": sha256,
                                  "size": size, "licence": "test", "citation": "test"}}}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_fetch_product_checks_sha256_and_size(server, cache, tmp_path, apstar_files):
    body = apstar_files[DWARF]
    good = hashlib.sha256(body).hexdigest()
    m = _manifest_with(tmp_path, server, body, good, len(body))
    path = fetch_product("table", manifest=m, cache=cache, mirror=server.url, **FAST)
    assert path == cache / "data" / "table.fits" and path.read_bytes() == body
    assert fetch_product("table", manifest=m, cache=cache, mirror=server.url) == path
    assert server.hits("/data") == 1

    m = _manifest_with(tmp_path, server, body, "0" * 64, None)
    other = tmp_path / "other-cache"
    with pytest.raises(ChecksumError, match=f"sha256 of the download is {good}; expected {'0' * 64}"):
        fetch_product("table", manifest=m, cache=other, mirror=server.url, **FAST)
    assert no_files_left(other) == []

    m = _manifest_with(tmp_path, server, body, None, len(body) + 10)  # size in the manifest disagrees
    with pytest.raises(DownloadError, match=f"received {len(body)} bytes; expected {len(body) + 10}.*whole file"):
        fetch_product("table", manifest=m, cache=other, mirror=server.url, **FAST)
    assert no_files_left(other) == []


def test_links_and_catalog_services_are_not_downloaded():
    with pytest.raises(DownloadError, match=r"saga is a link only \(licence CC BY-NC-SA"):
        fetch_product("saga")
    with pytest.raises(DownloadError, match="vizier catalog service, not a file"):
        fetch_product("jinabase_vizier")


# ---------------------------------------------------------------------------------------------------------------
# catalogs through astroquery
# ---------------------------------------------------------------------------------------------------------------
def test_query_apogee_from_vizier_votable(server, cache):
    vizier_route(server, {"III/286/catalog": apogee_vizier_table()})
    rows = query_apogee(snr_min=50, server=server.url, cache=cache, **FAST)
    assert list(rows["apogee_id"]) == ["2M17335483-2753043", "2M19485057+5005279", "2M00400000-0500000"]
    assert list(rows.columns[:6]) == ["apogee_id", "telescope", "field", "file", "ra", "dec"]
    assert rows.loc[0, "file"] == GIANT and rows.loc[0, "telescope"] == "apo25m"
    assert np.isnan(rows.loc[2, "m_h"])  # below ASPCAP's grid: no [M/H]
    assert rows["apogee_source"].str.startswith("VizieR III/286/catalog").all()
    request = server.log[-1]
    assert request["method"] == "POST" and "-source=III/286/catalog" in request["body"]
    assert "SNR=>=50" in request["body"] and "-out.add=_RAJ2000,_DEJ2000" in request["body"]

    # the answer is cached: the same query does not reach the server again
    n = len(server.log)
    again = query_apogee(snr_min=50, server=server.url, cache=cache)
    assert len(server.log) == n
    pd.testing.assert_frame_equal(again, rows)
    query_apogee(snr_min=50, server=server.url, cache=cache, refresh=True)
    assert len(server.log) == n + 1

    # filters are applied to what comes back too
    metal_poor = query_apogee(m_h_max=-1, server=server.url, cache=cache)
    assert list(metal_poor["apogee_id"]) == ["2M13200000+4000000"]
    assert "[M/H]=<=-1" in server.log[-1]["body"]
    clean = query_apogee(aspcapflag_mask=1 << 23, starflag_mask=16, server=server.url, cache=cache)
    assert list(clean["apogee_id"]) == ["2M17335483-2753043", "2M19485057+5005279"]
    cone = query_apogee(center=SkyCoord(263.4785, -27.8845, unit="deg"), radius=10 * u.arcsec,
                        server=server.url, cache=cache)
    assert list(cone["apogee_id"]) == ["2M17335483-2753043"]
    assert "-c.rd" in server.log[-1]["body"] or "-c.rs" in server.log[-1]["body"]
    # many centres (e.g. a reference catalog's positions) go in one request
    several = SkyCoord([10.0, 297.2107, 120.0], [-5.0, 50.0911, 0.0], unit="deg")
    near = query_apogee(center=several, radius=2 * u.arcsec, server=server.url, cache=cache)
    assert list(near["apogee_id"]) == ["2M19485057+5005279", "2M00400000-0500000"]
    assert "-c=<<====AstroqueryList" in server.log[-1]["body"]


def test_query_apogee_rows_feed_fetch_spectra(server, cache, apstar_files):
    vizier_route(server, {"III/286/catalog": apogee_vizier_table()})
    serve_sas(server, apstar_files, allstar_rows().iloc[:2])
    rows = query_apogee(telescope="apo25m", snr_min=100, server=server.url, cache=cache)
    got = fetch_spectra(rows, cache=cache, mirror=server.url, progress=False)
    assert got["fetch_status"].tolist() == ["downloaded", "downloaded"]


def test_query_apogee_from_skyserver_sql_survives_503(server, cache):
    server.routes[SQL_PATH] = Route(SQL_CSV.encode(), "text/plain", fail=2)
    rows = query_apogee(source="sql", m_h_max=0.5, apogee_ids=["2M17335483-2753043", "2M00400000-0500000"],
                        server=server.url, cache=cache, **FAST)
    assert server.routes[SQL_PATH].hits == 3
    cmd = server.log[-1]["query"]["cmd"][0]
    assert "FROM apogeeStar AS s LEFT OUTER JOIN aspcapStar AS a ON a.apstar_id = s.apstar_id" in cmd
    assert "a.m_h <= 0.5 AND a.m_h > -9000" in cmd and "s.apogee_id IN ('2M17335483-2753043'" in cmd
    # the fake server ignores the WHERE clause; fehkit's own cut drops the star without [M/H] (-9999 in SQL)
    assert list(rows["apogee_id"]) == ["2M17335483-2753043"]
    assert rows.loc[0, "vmic"] == 1.8 and rows.loc[0, "file"] == GIANT
    everyone = query_apogee(source="sql", server=server.url, cache=cache, **FAST)
    assert np.isnan(everyone.loc[1, "teff"]) and everyone.loc[1, "aspcapflag"] == 1 << 23


def test_catalog_service_down_gives_a_clear_error(server, cache):
    server.routes[SQL_PATH] = Route(fail=99)
    with pytest.raises(ServiceUnavailableError, match=r"SDSS SkyServer DR17 SQL at http://127.0.0.1:\d+: failed 4 "
                                                      r"times .*HTTP 503"):
        query_apogee(source="sql", server=server.url, cache=cache, **FAST)
    assert server.routes[SQL_PATH].hits == 4
    assert not (cache / "catalogs").exists()  # nothing cached from a failure


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'<?xml version="1.0"?>\n<VOTABLE version="1.4"><RESOURCE><TABLE><FIELD name="x" datatype="dou',
         "answer is not a valid VOTable"),
        (b"<html><body>VizieR is being updated</body></html>", r"answer starts with b'<html>.*expected VOTable XML"),
    ],
)
def test_malformed_vizier_answer_gives_a_clear_error(server, cache, body, match):
    vizier_route(server, body)
    with pytest.raises(CatalogFormatError, match=f"VizieR III/286/catalog at http://127.0.0.1:\\d+: {match}"):
        query_apogee(server=server.url, cache=cache, **FAST)
    assert not (cache / "catalogs").exists()


def test_vizier_answer_without_needed_columns_gives_a_clear_error(server, cache):
    t = apogee_vizier_table()
    t.remove_column("Tel")
    vizier_route(server, {"III/286/catalog": t})
    with pytest.raises(CatalogFormatError, match=r"no TELESCOPE/Tel column; found _RAJ2000, _DEJ2000, APOGEE"):
        query_apogee(server=server.url, cache=cache)


def test_malformed_sql_answer_gives_a_clear_error(server, cache):
    server.routes[SQL_PATH] = Route(b"<html>\n<body>Server Error in '/' Application.\n</body>\n</html>\n")
    with pytest.raises(CatalogFormatError, match=r"DR17 SQL at .*: no APOGEE_ID/APOGEE, TELESCOPE/Tel, .* <html>"):
        query_apogee(source="sql", server=server.url, cache=cache)
    server.routes[SQL_PATH] = Route(b"#Table1\nerror_message\nIncorrect syntax near 'TOP'.\n")
    with pytest.raises(CatalogQueryError, match="the server reported an error"):
        query_apogee(source="sql", server=server.url, cache=cache, refresh=True)


def test_query_arguments_are_checked(cache):
    with pytest.raises(CatalogQueryError, match="expected both or neither"):
        query_apogee(center="10 20", cache=cache)
    with pytest.raises(CatalogQueryError, match="expected 2MASS-style ids"):
        query_apogee(apogee_ids=["x'; DROP TABLE apogeeStar"], source="sql", cache=cache)
    with pytest.raises(CatalogQueryError, match="use source='vizier' for a list of positions"):
        query_apogee(center=SkyCoord([1, 2], [3, 4], unit="deg"), radius=1 * u.arcsec, source="sql", cache=cache)


def galah_dr3_table() -> Table:
    t = Table()
    t["_RAJ2000"] = [10.00005, 30.0, 31.0, 32.0]
    t["_DEJ2000"] = [-5.0, -30.0, -31.0, -32.0]
    t["sobject_id"] = np.array([170418003701205, 170418003701206, 170418003701207, 170418003701208])
    t["[Fe/H]"] = [-2.9, -1.0, -0.5, -2.0]
    t["e_[Fe/H]"] = [0.12, 0.05, 0.05, 0.08]
    t["flag_sp"] = np.array([0, 0, 1, 0], dtype=np.int32)
    t["flag_fe_h"] = np.array([0, 0, 0, 1], dtype=np.int32)
    t["snr_c3_iraf"] = [45.0, 12.0, 80.0, 60.0]
    t["Teff"] = [4700.0, 5800.0, 5000.0, 4900.0]
    t["logg"] = [1.2, 4.2, 3.0, 2.0]
    t["vmic"] = [1.9, 1.1, 1.3, 1.5]
    return t


def test_query_galah_dr3_applies_the_recommended_cuts(server, cache):
    vizier_route(server, {"J/MNRAS/506/150/stars": galah_dr3_table()}, "J/MNRAS/506/150")
    rows = query_galah("dr3", server=server.url, cache=cache)
    assert list(rows.columns[: len(REFERENCE_COLUMNS)]) == list(REFERENCE_COLUMNS)
    assert rows["ref_id"].tolist() == ["170418003701205"]  # flag_sp, flag_fe_h and S/N > 30 cut the others
    assert rows.loc[0, "feh_ref"] == -2.9 and rows.loc[0, "feh_ref_err"] == 0.12
    assert rows.loc[0, "ref_citation"] == "Buder et al. 2021, MNRAS 506, 150"
    assert len(query_galah("dr3", recommended=False, snr_min=None, server=server.url, cache=cache)) == 4
    t = galah_dr3_table()
    t.remove_column("flag_sp")
    vizier_route(server, {"J/MNRAS/506/150/stars": t}, "J/MNRAS/506/150")
    with pytest.raises(CatalogFormatError, match="no flag_sp/f_sp/.* column for the recommended cuts"):
        query_galah("dr3", server=server.url, cache=cache, refresh=True)


def test_query_galah_dr4_comes_through_the_manifest(server, cache, tmp_path):
    cols = [
        fits.Column(name="sobject_id", format="K", array=np.array([1, 2, 3])),
        fits.Column(name="gaiadr3_source_id", format="K", array=np.array([11, 12, 13])),
        fits.Column(name="ra", format="D", array=np.array([10.0, 20.0, 30.0])),
        fits.Column(name="dec", format="D", array=np.array([-5.0, -6.0, -7.0])),
        fits.Column(name="fe_h", format="E", array=np.array([-2.5, -1.0, -3.0])),
        fits.Column(name="e_fe_h", format="E", array=np.array([0.1, 0.05, 0.2])),
        fits.Column(name="flag_sp", format="J", array=np.array([0, 1024, 0])),
        fits.Column(name="flag_fe_h", format="J", array=np.array([1, 0, 0])),
        fits.Column(name="snr_px_ccd3", format="E", array=np.array([50.0, 90.0, 20.0])),
        fits.Column(name="teff", format="E", array=np.array([4800.0, 5000.0, 4600.0])),
        fits.Column(name="logg", format="E", array=np.array([1.5, 2.5, 1.0])),
        fits.Column(name="vmic", format="E", array=np.array([1.8, 1.4, 2.0])),
    ]
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(buf)
    url = load_manifest()["galah_dr4_allstar"].url
    server.routes[urlsplit(url).path] = Route(buf.getvalue())
    rows = query_galah("dr4", mirror=server.url, cache=cache, **FAST)
    assert rows["ref_id"].tolist() == ["1"]  # flag_sp bit 1024 and S/N 20 cut; flag_fe_h is not used in DR4
    assert rows.loc[0, "gaia_id"] == "11" and rows.loc[0, "vmic"] == pytest.approx(1.8)
    assert (cache / urlsplit(url).path.lstrip("/")).is_file()
    query_galah("dr4", mirror=server.url, cache=cache)
    assert server.hits("/teamdata") == 1


def montelius_like() -> dict[str, Table]:
    notes = Table({"Name": ["HE 0000-0000"], "Note": ["x"]})
    t = Table()
    t["_RAJ2000"] = [10.0, 263.478467, 150.0]
    t["_DEJ2000"] = [-5.0, -27.884528, 2.0]
    t["APOGEE"] = ["2M00400000-0500000", "2M17335483-2753043", "2M10000000+0200000"]
    t["Teff"] = [4650.0, 3800.0, 4500.0]
    t["logg"] = [1.0, 0.8, 0.9]
    t["vt"] = MaskedColumn([2.0, 1.7, 0.0], mask=[False, False, True])
    t["[Fe/H]"] = [-3.2, -0.15, -2.8]
    t["e_[Fe/H]"] = [0.15, 0.05, 0.2]
    t["f_[Fe/H]"] = ["", "", ""]
    return {"J/A+A/707/A308/notes": notes, "J/A+A/707/A308/table2": t}


def test_load_reference_picks_the_table_with_positions_and_feh(server, cache):
    vizier_route(server, montelius_like(), "J/A+A/707/A308")
    ref = load_reference("montelius2026", server=server.url, cache=cache)
    assert list(ref.columns) == list(REFERENCE_COLUMNS)
    assert ref["ref_id"].tolist() == ["2M00400000-0500000", "2M17335483-2753043", "2M10000000+0200000"]
    assert ref["feh_ref"].tolist() == [-3.2, -0.15, -2.8] and ref["feh_ref_err"].tolist() == [0.15, 0.05, 0.2]
    assert ref["vmic"].iloc[0] == 2.0 and np.isnan(ref["vmic"].iloc[2])
    assert ref["ref_catalog"].iloc[0].endswith("table J/A+A/707/A308/table2")
    assert ref["ref_citation"].iloc[0].startswith("Montelius et al. 2026")
    assert "-source=J/A+A/707/A308" in server.log[-1]["body"] and "-out.max=unlimited" in server.log[-1]["body"]


def test_saga_is_only_read_from_a_file_the_user_exported(server, cache, tmp_path):
    with pytest.raises(ReferenceCatalogError, match=r"no path; expected the file you exported .*CC BY-NC-SA"):
        load_reference("saga", server=server.url, cache=cache)
    export = tmp_path / "saga_export.tsv"  # made-up rows in a SAGA-like export layout (no SAGA data)
    export.write_text("Object\tRA\tDec\t[Fe/H]\terr\tTeff\tlog g\tvt\n"
                      "FAKE-1\t00:40:00.0\t-05:00:00\t-3.50\t0.10\t4600\t0.9\t2.1\n"
                      "FAKE-2\t17:33:54.83\t-27:53:04.3\t-2.10\t0.12\t4800\t1.5\t1.8\n")
    ref = load_reference("saga", path=export, columns={"feh_ref_err": "err"})
    assert ref["ra"].round(4).tolist() == [10.0, 263.4785]
    assert ref["dec"].round(4).tolist() == [-5.0, -27.8845]
    assert ref["feh_ref_err"].tolist() == [0.1, 0.12] and ref["logg"].tolist() == [0.9, 1.5]
    assert ref["ref_licence"].iloc[0].startswith("CC BY-NC-SA")
    assert server.log == []  # nothing was asked of any service
    with pytest.raises(ReferenceCatalogError, match="expected one of jinabase, montelius2026"):
        load_reference("nope")


# ---------------------------------------------------------------------------------------------------------------
# cross-match
# ---------------------------------------------------------------------------------------------------------------
def test_crossmatch_builds_the_training_table(server, cache, apstar_files, tmp_path):
    vizier_route(server, {"III/286/catalog": apogee_vizier_table()})
    spectra = query_apogee(server=server.url, cache=cache)
    serve_sas(server, apstar_files, allstar_rows().iloc[:2])
    spectra = fetch_spectra(spectra.iloc[:2], cache=cache, mirror=server.url, progress=False)
    spectra = pd.concat([spectra, query_apogee(server=server.url, cache=cache).iloc[2:]], ignore_index=True)
    vizier_route(server, montelius_like(), "J/A+A/707/A308")
    refs = load_reference("montelius2026", server=server.url, cache=cache)

    table = crossmatch(spectra, refs, radius=1.5 * u.arcsec)
    assert list(table.columns[:6]) == list(TRAINING_COLUMNS)
    assert table["apogee_id"].tolist() == ["2M17335483-2753043", "2M00400000-0500000"]
    assert table["file"].iloc[0] == spectra["path"].iloc[0]  # the local file where it was fetched
    assert table["file"].iloc[1] == "asStar-dr17-2M00400000-0500000.fits"  # else the SAS file name
    assert table["feh_ref"].tolist() == [-0.15, -3.2] and table["feh_ref_err"].tolist() == [0.05, 0.15]
    assert table["teff"].tolist() == [3800.0, 4650.0] and set(table["teff_source"]) == {"reference"}
    assert table["sep_arcsec"].max() < 1.5 and table["n_ref_within"].tolist() == [1, 1]
    assert table["ref_citation"].str.startswith("Montelius").all()
    assert table["apogee_source"].str.startswith("VizieR III/286").all()

    aspcap = crossmatch(spectra, refs, radius=1.5, params="apogee")
    assert aspcap["teff"].tolist() == [3750.0, 4700.0] and set(aspcap["teff_source"]) == {"apogee"}

    out = tmp_path / "train.csv"
    table.to_csv(out, index=False)
    back = pd.read_csv(out)
    assert list(back.columns[:6]) == ["file", "feh_ref", "feh_ref_err", "teff", "logg", "vmic"]
    assert read_apogee(back["file"].iloc[0]).meta["star_id"].iloc[0] == "2M17335483-2753043"


def test_crossmatch_edge_cases():
    spectra = pd.DataFrame({"file": ["a.fits", "b.fits"], "ra": [1.0, np.nan], "dec": [1.0, 2.0]})
    refs = pd.DataFrame({"ra": [1.0, 1.0001], "dec": [1.0, 1.0], "feh_ref": [-3.0, -2.9]})
    table = crossmatch(spectra, refs, radius=1 * u.arcmin)
    assert table["file"].tolist() == ["a.fits"] and table["n_ref_within"].tolist() == [2]
    assert crossmatch(spectra, refs.iloc[:0], radius=1.0).empty
    assert list(crossmatch(spectra, refs, radius=0.001).columns[:6]) == list(TRAINING_COLUMNS)
    with pytest.raises(CrossmatchError, match=r"b \(references.*no feh_ref column; found ra, dec"):
        crossmatch(spectra, refs[["ra", "dec"]])
    with pytest.raises(CrossmatchError, match="no file or path column"):
        crossmatch(spectra[["ra", "dec"]], refs)


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------
def test_fehkit_fetch_command(server, cache, apstar_files, tmp_path, capsys):
    assert main(["fetch", "list"]) == 0
    out = capsys.readouterr().out
    assert "galah_dr4_allstar" in out and "saga" in out and "CC BY-NC-SA" in out

    rows = serve_sas(server, apstar_files).iloc[:2]
    table = tmp_path / "rows.csv"
    rows.to_csv(table, index=False)
    args = ["fetch", "spectra", str(table), "--cache", str(cache), "--mirror", server.url, "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "fetched.csv")]) == 0
    assert "2 rows: 2 downloaded, 0 already cached, 0 failed" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "fetched.csv")["fetch_status"].tolist() == ["downloaded", "downloaded"]
    assert main(args) == 0
    assert "0 downloaded, 2 already cached" in capsys.readouterr().out
    assert server.hits(STARS) == 2

    fits_rows = Table.from_pandas(rows)
    fits_rows["SNR_VISITS"] = np.ones((2, 3))  # allStar has multi-dimensional columns too
    fits_rows.write(tmp_path / "allStar-like.fits")
    assert main(["fetch", "spectra", str(tmp_path / "allStar-like.fits"), "--cache", str(cache), "--mirror",
                 server.url, "--no-progress"]) == 0
    assert "0 downloaded, 2 already cached" in capsys.readouterr().out

    assert main(["fetch", "product", "apstar_dr17", "--cache", str(cache), "--mirror", server.url,
                 "--field", "telescope=apo25m", "--field", "field=000+02", "--field", f"file={GIANT}"]) == 0
    assert capsys.readouterr().out.strip().endswith(GIANT)
    assert server.hits(STARS) == 2  # already cached by the spectra run

    damaged = Route(apstar_files[GIANT][:-2880] + b"\0" * 2880)
    server.routes[f"{STARS}/apo25m/000+02/{GIANT}"] = damaged
    assert main(["fetch", "spectra", str(table), "--cache", str(tmp_path / "c2"), "--mirror", server.url,
                 "--no-progress", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fehkit fetch: error: ") and "sha256 of the download is" in err
    assert main(["fetch", "product", "saga"]) == 2
    assert "link only" in capsys.readouterr().err
