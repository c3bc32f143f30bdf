"""fehkit.data against the real services (VizieR, SDSS SkyServer and SAS, GALAH at Data Central).

Skipped by default; run with ``pytest -m remote_data tests/test_data_remote.py``. Each uses a fresh cache, so it
really asks the service. The two stars are the packaged real examples, whose files and sha256 are known.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from fehkit.data import crossmatch, fetch_spectra, load_manifest, load_reference, query_apogee, query_galah

pytestmark = pytest.mark.remote_data

GIANT_ID = "2M17335483-2753043"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    for var in ("FEHKIT_CACHE", "FEHKIT_DATA_URL", "FEHKIT_VIZIER_SERVER", "FEHKIT_SKYSERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("source", ["vizier", "sql"])
def test_query_apogee_finds_the_packaged_giant(cache, source):
    rows = query_apogee(source=source, apogee_ids=[GIANT_ID], cache=cache, retries=2)
    assert GIANT_ID in set(rows["apogee_id"])
    row = rows[rows["apogee_id"] == GIANT_ID].iloc[0]
    assert row["telescope"] == "apo25m" and row["field"] == "000+02"
    assert row["file"] == f"apStar-dr17-{GIANT_ID}.fits"
    assert row["snr"] > 100


def test_cone_search_and_fetch_from_the_sas(cache):
    rows = query_apogee(center=SkyCoord(263.478467, -27.884528, unit="deg"), radius=5 * u.arcsec, cache=cache)
    rows = rows[rows["apogee_id"] == GIANT_ID]
    got = fetch_spectra(rows, cache=cache, progress=False)
    digest = hashlib.sha256(Path(got["path"].iloc[0]).read_bytes()).hexdigest()
    assert digest == load_manifest().known_sha256()[f"apStar-dr17-{GIANT_ID}.fits"]


def test_montelius_and_jinabase_references(cache):
    mont = load_reference("montelius2026", cache=cache)
    assert len(mont) > 100 and np.nanmedian(mont["feh_ref"]) < -2.0
    jina = load_reference("jinabase", cache=cache)
    assert len(jina) > 500 and (jina["feh_ref"] <= -2.5).mean() > 0.4


def test_real_training_table(cache):
    refs = load_reference("montelius2026", cache=cache)
    rows = query_apogee(center=SkyCoord(refs["ra"][:20], refs["dec"][:20], unit="deg"), radius=3 * u.arcsec,
                        cache=cache)
    table = crossmatch(rows, refs, radius=2 * u.arcsec)
    assert len(table) >= 10 and table["feh_ref"].max() < -1.5


def test_galah_dr3_cone(cache):
    rows = query_galah("dr3", center=SkyCoord(150.0, -30.0, unit="deg"), radius=1 * u.deg, cache=cache)
    assert len(rows) > 0 and rows["feh_ref"].notna().all()
