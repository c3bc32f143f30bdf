"""The HTTP service (fehkit serve): the library's answers over HTTP, validated input, a documented schema, faults.

A small ensemble trained on 200 SYNTHETIC stars serves; requests go through FastAPI's test client (in process),
through schemathesis (generated from the OpenAPI schema), and through a real ``fehkit serve --workers 2`` on
loopback, under load and with a worker killed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import httpx
import numpy as np
import pytest
from astropy.io import fits

from fehkit.cli import main
from fehkit.examples import example_paths
from fehkit.io import read_apogee
from fehkit.models.ensemble import FeHEnsemble
from fehkit.service import ServiceSettings, create_app, spectrum_payload
from fehkit.spectra import APSTAR_NPIX
from fehkit.synth import make_benchmark
from fehkit.training import predict_spectra, reference_params, spectra_features
from tests.test_infer import _quiet

with warnings.catch_warnings():  # starlette's test client asks for httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MAX_BODY_MB = 4
MAX_BATCH = 5
NUMBERS = ("feh", "feh_err", "feh_upper", "feh_cog", "feh_sys")


@pytest.fixture(scope="module")
def model_dir(small_model):
    """The small ensemble trained on 200 SYNTHETIC stars, saved (model card: synthetic; conftest)."""
    return small_model[1]


@pytest.fixture(scope="module")
def stars():
    """Eight other SYNTHETIC stars, their reference parameters and JSON request bodies."""
    sim = make_benchmark(8, seed=32)
    params = reference_params(sim.truth)
    bodies = [spectrum_payload(sim.batch, i, params.iloc[i]) for i in range(8)]
    return sim, params, bodies


@pytest.fixture(scope="module")
def app(model_dir):
    return create_app(model_dir, ServiceSettings(max_batch=MAX_BATCH, max_body_mb=MAX_BODY_MB))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _same_as_library(got: dict, row, tol: float = 1e-4) -> None:
    """A response row against a row of fehkit predict's table (library members: scikit-learn, XGBoost)."""
    assert got["star_id"] == row["star_id"]
    assert got["flag"] == row["flag"] and got["flag_reason"] == row["flag_reason"]
    assert got["n_lines"] == int(row["n_lines"])
    for key, value in [*((k, row[k]) for k in NUMBERS), *((f"members.{m}", row[f"feh_{m}"]) for m in
                                                           ("rf", "xgb", "dnn"))]:
        mine = got["members"][key.split(".")[1]] if key.startswith("members.") else got[key]
        if not np.isfinite(value):
            assert mine is None, key
        else:
            assert mine == pytest.approx(float(value), abs=tol), key


# ---- answers ---------------------------------------------------------------------------------------------------
def test_a_json_spectrum_gets_the_library_answer(client, model_dir, stars):
    sim, params, bodies = stars
    ens = FeHEnsemble.load(model_dir)
    expected = _quiet(predict_spectra, ens, sim.batch, params)
    for i in (0, 1, 2, 3):
        r = client.post("/v1/feh", json=bodies[i])
        assert r.status_code == 200, r.text
        _same_as_library(r.json(), expected.iloc[i])
    assert "lines" not in r.json()


def test_a_batch_answers_each_star_in_order_as_alone(client, stars):
    _, _, bodies = stars
    alone = [client.post("/v1/feh", json=b).json() for b in bodies[:MAX_BATCH]]
    r = client.post("/v1/feh/batch", json={"spectra": bodies[:MAX_BATCH]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["n"] == MAX_BATCH
    for one, got in zip(alone, data["results"], strict=True):
        assert got["star_id"] == one["star_id"] and got["flag"] == one["flag"]
        for key in NUMBERS:
            assert (got[key] is None) == (one[key] is None)
            if got[key] is not None:
                assert got[key] == pytest.approx(one[key], abs=1e-6)


def test_an_uploaded_file_plain_or_gzipped_gets_the_file_readers_answer(client, model_dir):
    path = example_paths()[1]
    raw = path.read_bytes()
    form = {"teff": "5500", "logg": "4.5", "vmic": "1.0", "teff_err": "80"}
    ens = FeHEnsemble.load(model_dir)
    batch = read_apogee(path)
    p = reference_params(batch.meta.assign(teff_ref=5500.0, logg_ref=4.5, vmic_ref=1.0, teff_ref_err=80.0,
                                           logg_ref_err=0.2, vmic_ref_err=0.2))
    expected = _quiet(predict_spectra, ens, batch, p).iloc[0]
    for name, data in ((path.name, raw), (path.name[:-3], gzip.decompress(raw))):
        r = client.post("/v1/feh", files={"file": (name, data)}, data=form)
        assert r.status_code == 200, r.text
        got = r.json()
        _same_as_library(got, expected)
        assert got["star_id"] == "2M19485057+5005279"  # the file's OBJID
        assert got["synthetic_spectrum"] is False
    r = client.post("/v1/feh", files={"file": (path.name, raw)}, data={**form, "star_id": "my-star"})
    assert r.json()["star_id"] == "my-star"


def test_per_line_equivalent_widths_on_request(client, stars):
    sim, params, bodies = stars
    r = client.post("/v1/feh", params={"lines": "true"}, json=bodies[2])
    assert r.status_code == 200
    lines = r.json()["lines"]
    feats = _quiet(spectra_features, sim.batch.select([2]), params.iloc[[2]])
    table = feats.ew.to_frame()
    assert [x["line_wave"] for x in lines] == pytest.approx(table["line_wave"].to_list())
    assert [x["flag"] for x in lines] == table["flag"].to_list()
    measured = [(x["ew_mA"], v) for x, v in zip(lines, table["ew_mA"], strict=True) if np.isfinite(v)]
    assert measured and all(a == pytest.approx(b, abs=1e-3) for a, b in measured)
    assert sum(x["flag"] == "ok" for x in lines) == r.json()["n_lines"]


def test_the_model_card_says_synthetic_and_every_response_carries_the_models_hash(client, model_dir, stars):
    card = client.get("/v1/model").json()
    sha = hashlib.sha256((model_dir / "checksums.sha256").read_bytes()).hexdigest()
    assert card["model_sha256"] == sha and card["synthetic"] is True
    assert "SYNTHETIC" in card["warning"]
    assert set(card["domain"]["ranges"]) >= {"teff", "logg", "vmic", "feh"}
    assert card["domain"]["units"]["teff"] == "K"
    assert card["service"]["max_batch"] == MAX_BATCH
    assert card["card"]["training_data"].startswith("200 synthetic")
    r = client.post("/v1/feh", json=stars[2][0]).json()
    assert r["model_sha256"] == sha and r["model_version"] == card["model_version"] and "SYNTHETIC" in r["warning"]


def test_health_readiness_and_prometheus_metrics(client, stars):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"

    def count(text: str, prefix: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    before = client.get("/metrics").text
    client.post("/v1/feh", json=stars[2][0])
    client.post("/v1/feh", content=b"{", headers={"content-type": "application/json"})
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    w = f'worker="{os.getpid()}"'
    ok = f'fehkit_requests_total{{{w},route="/v1/feh",method="POST",status="200"}}'
    assert count(text, ok) == count(before, ok) + 1
    bad = f'fehkit_errors_total{{{w},kind="invalid_json"}}'
    assert count(text, bad) == count(before, bad) + 1
    assert f'fehkit_request_duration_seconds_bucket{{{w},route="/v1/feh",le="+Inf"}}' in text
    assert count(text, "fehkit_spectra_total") == count(before, "fehkit_spectra_total") + 1


# ---- bad requests: each a documented 4xx naming the field, never a 500 ------------------------------------------
def _json(body) -> dict:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def _with(body: dict, **changes) -> dict:
    out = {k: v for k, v in body.items() if changes.get(k, 0) is not None}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


def _fits_table() -> bytes:
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="TEFF", format="E", array=np.array([4800.0]))])
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


FORM = {"teff": "5500", "logg": "4.5", "vmic": "1.0"}


def _bad_requests(body: dict) -> list[tuple[str, str, dict, int, str, str | None]]:
    """(name, path, httpx keyword arguments, status, error kind, field) of each bad request."""
    raw = example_paths()[1].read_bytes()
    # JSON has no NaN or Infinity; Python's json writes them as bare tokens, as a careless client would
    nan_text = json.dumps(_with(body, flux=body["flux"][1:])).replace('"flux": [', '"flux": [NaN, ', 1)
    inf_text = json.dumps(_with(body, ivar=body["ivar"][1:])).replace('"ivar": [', '"ivar": [Infinity, ', 1)
    neg = list(body["ivar"])
    neg[100] = -1.0
    j = {"content-type": "application/json"}
    big = 5 * 1024 * 1024
    return [
        ("flux one pixel short", "/v1/feh", _json(_with(body, flux=body["flux"][:-1])), 422, "validation_error",
         "flux"),
        ("flux one pixel long", "/v1/feh", _json(_with(body, flux=[*body["flux"], 1.0])), 422, "validation_error",
         "flux"),
        ("ivar on another grid", "/v1/feh", _json(_with(body, ivar=body["ivar"][:4096])), 422, "validation_error",
         "ivar"),
        ("mask of the wrong length", "/v1/feh", _json(_with(body, mask=[False] * 10)), 422, "validation_error",
         "mask"),
        ("NaN in flux", "/v1/feh", {"content": nan_text.encode(), "headers": j}, 422, "validation_error",
         "flux[0]"),
        ("Infinity in ivar", "/v1/feh", {"content": inf_text.encode(), "headers": j}, 422, "validation_error",
         "ivar[0]"),
        ("negative ivar", "/v1/feh", _json(_with(body, ivar=neg)), 422, "validation_error", "ivar[100]"),
        ("flux beyond float32", "/v1/feh", _json(_with(body, flux=[1e39, *body["flux"][1:]])), 422,
         "validation_error", "flux[0]"),
        ("bitmask beyond 31 bits", "/v1/feh", _json(_with(body, bitmask=[2**40] * APSTAR_NPIX)), 422,
         "validation_error", "bitmask[0]"),
        ("bitmask beyond int64", "/v1/feh", _json(_with(body, bitmask=[2**70] * APSTAR_NPIX)), 422,
         "validation_error", "bitmask[0]"),
        ("missing teff", "/v1/feh", _json(_with(body, teff=None)), 422, "validation_error", "teff"),
        ("teff no star has", "/v1/feh", _json(_with(body, teff=20000.0)), 422, "validation_error", "teff"),
        ("logg out of range", "/v1/feh", _json(_with(body, logg=-3.0)), 422, "validation_error", "logg"),
        ("vmic zero", "/v1/feh", _json(_with(body, vmic=0.0)), 422, "validation_error", "vmic"),
        ("teff not a number", "/v1/feh", _json(_with(body, teff="hot")), 422, "validation_error", "teff"),
        ("negative teff error", "/v1/feh", _json(_with(body, teff_err=-50.0)), 422, "validation_error",
         "teff_err"),
        ("alpha_fe off the grid", "/v1/feh", _json(_with(body, alpha_fe=1.5)), 422, "validation_error", "alpha_fe"),
        ("unknown field", "/v1/feh", _json(_with(body, metallicity=-2.0)), 422, "validation_error", "metallicity"),
        ("star_id with a slash", "/v1/feh", _json(_with(body, star_id="../etc/passwd")), 422, "validation_error",
         "star_id"),
        ("truncated JSON", "/v1/feh", {"content": json.dumps(body).encode()[:5000], "headers": j}, 400,
         "invalid_json", None),
        ("a JSON list, not an object", "/v1/feh", _json([1, 2, 3]), 422, "validation_error", None),
        ("plain text", "/v1/feh", {"content": b"teff=4800", "headers": {"content-type": "text/plain"}}, 415,
         "unsupported_media_type", "Content-Type"),
        ("no content type", "/v1/feh", {"content": b"{}"}, 415, "unsupported_media_type", "Content-Type"),
        ("body over the limit", "/v1/feh", {"content": b" " * big, "headers": j}, 413, "body_too_large", "body"),
        ("chunked body over the limit", "/v1/feh",
         {"content": (b" " * (1 << 20) for _ in range(MAX_BODY_MB + 1)), "headers": j}, 413, "body_too_large",
         "body"),
        ("lines not a boolean", "/v1/feh?lines=maybe", _json(body), 422, "validation_error", "lines"),
        ("random bytes as a file", "/v1/feh", {"files": {"file": ("apStar-x.fits", os.urandom(5000))},
                                               "data": FORM}, 422, "invalid_file", "file"),
        ("truncated gzip upload", "/v1/feh", {"files": {"file": ("apStar-x.fits.gz", raw[:len(raw) // 2])},
                                              "data": FORM}, 422, "invalid_file", "file"),
        ("truncated FITS upload", "/v1/feh", {"files": {"file": ("apStar-x.fits", gzip.decompress(raw)[:30000])},
                                              "data": FORM}, 422, "invalid_file", "file"),
        ("a FITS table, not a spectrum", "/v1/feh", {"files": {"file": ("catalog.fits", _fits_table())},
                                                     "data": FORM}, 422, "invalid_file", "file"),
        ("a gzip bomb", "/v1/feh", {"files": {"file": ("apStar-x.fits.gz", gzip.compress(bytes(20 << 20)))},
                                    "data": FORM}, 422, "invalid_file", "file"),
        ("an upload without teff", "/v1/feh", {"files": {"file": ("apStar-x.fits.gz", raw)},
                                               "data": {"logg": "4.5", "vmic": "1.0"}}, 422, "validation_error",
         "teff"),
        ("a form without a file", "/v1/feh", {"files": {"other": ("x.txt", b"abc")}, "data": FORM}, 422,
         "invalid_form", "file"),
        ("multipart without a boundary", "/v1/feh", {"content": b"--x--",
                                                     "headers": {"content-type": "multipart/form-data"}}, 400,
         "invalid_form", "Content-Type"),
        ("too many spectra", "/v1/feh/batch", _json({"spectra": [body] * (MAX_BATCH + 1)}), 422,
         "too_many_spectra", "spectra"),
        ("an empty batch", "/v1/feh/batch", _json({"spectra": []}), 422, "validation_error", "spectra"),
        ("one bad spectrum in a batch", "/v1/feh/batch", _json({"spectra": [body, _with(body, teff=None)]}), 422,
         "validation_error", "spectra[1].teff"),
        ("a file to the batch endpoint", "/v1/feh/batch", {"files": {"file": ("apStar-x.fits.gz", raw)},
                                                           "data": FORM}, 415, "unsupported_media_type",
         "Content-Type"),
    ]


def test_the_corpus_of_bad_requests_is_large_enough(stars):
    assert len(_bad_requests(stars[2][0])) >= 20


@pytest.mark.parametrize("case", range(35))
def test_a_bad_request_gets_its_documented_4xx_naming_what_was_found_and_expected(client, stars, case):
    name, path, kwargs, status, kind, field = _bad_requests(stars[2][2])[case]
    r = client.post(path, **kwargs)
    assert r.status_code == status, (name, r.text[:300])
    err = r.json()
    assert err["error"] == kind, name
    assert err["field"] == field, (name, err)
    assert err["message"] and "Traceback" not in r.text
    if status in (413, 415, 422) and kind not in ("invalid_file",):
        assert err["found"] and err["expected"], (name, err)


def test_json_spectra_read_once_answer_as_the_documented_model(stars):
    """A plainly valid request is read straight into arrays; what only the documented model's lax reading
    accepts gets its values, a request outside its limits its own errors, every one of them."""
    from pydantic import ValidationError

    from fehkit.service import SpectrumJSON, _from_pydantic, _json_batch, _json_spectrum, _ServiceError, _spectra

    body = stars[2][0]
    batch, params, _ = _json_spectrum(json.dumps(body).encode())
    ref_batch, ref_params = _spectra([SpectrumJSON.model_validate(body)])
    for name in ("flux", "ivar", "mask", "bitmask"):
        assert np.array_equal(getattr(batch, name), getattr(ref_batch, name)), name
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params) and params.keys() == ref_params.keys()
    # what only the documented model's lax reading accepts: whole numbers, a number as a string, 0/1 in the mask
    lax = _with(body, flux=[1, "2.5", *body["flux"][2:]], mask=[int(v) for v in body["mask"]])
    lax_batch, _, _ = _json_spectrum(json.dumps(lax).encode())
    ref_lax, _ = _spectra([SpectrumJSON.model_validate_json(json.dumps(lax))])
    assert lax_batch.flux[0, :2].tolist() == [1.0, 2.5]
    for name in ("flux", "ivar", "mask", "bitmask"):
        assert np.array_equal(getattr(lax_batch, name), getattr(ref_lax, name), equal_nan=name == "flux"), name
    neg = list(body["ivar"])
    neg[7] = -2.0
    bad = [_with(body, ivar=neg, teff=None), _with(body, flux=[float("nan"), *body["flux"][1:]]),
           _with(body, bitmask=[-1] * APSTAR_NPIX), _with(body, bitmask=[2**64] * APSTAR_NPIX),
           _with(body, flux=[-1e39] * APSTAR_NPIX, mask=[0] * 3)]
    for b in bad:
        raw = json.dumps(b).encode()
        with pytest.raises(ValidationError) as exc:
            SpectrumJSON.model_validate_json(raw)
        expected = _from_pydantic(exc.value.errors(include_url=False), "").body()
        for call in (lambda r: _json_spectrum(r), lambda r: _json_batch(b'{"spectra": [' + r + b"]}", 5)):
            with pytest.raises(_ServiceError) as err:
                call(raw)
            # in a batch each field is named from the list of spectra down
            got = json.loads(json.dumps(err.value.body()).replace("spectra[0].", ""))
            assert got == expected, b.keys()


def test_only_plainly_valid_json_is_read_by_simdjson_and_the_rest_as_the_documented_model_reads_it(stars):
    """The simdjson reader declines whatever it could read differently from the documented model (a list in a
    list, a field twice, 1.0 where a whole number belongs, "true" for true, a bracket in a star id, an unknown
    field); the documented model then answers, with the same arrays or its own error. 0/1 in a mask is read by
    both as false/true."""
    from fehkit.service import SpectrumJSON, _json_batch, _json_spectrum, _read_plain, _ServiceError, _spectra

    body = stars[2][0]
    raw = json.dumps(body).encode()
    assert _read_plain(raw, batch=False) is not None
    assert _read_plain(b'{"spectra": [' + raw + b", " + raw + b"]}", batch=True) is not None
    # a list inside flux, the length kept: simdjson would read it flattened
    nested = json.dumps(_with(body, flux=[[], [1.0, 2.0], *body["flux"][2:]])).encode()
    twice = raw[:-1] + b', "teff": 5000.0}'
    lax = [_with(body, mask=[str(v).lower() for v in body["mask"]]),
           _with(body, bitmask=[float(v) for v in body["bitmask"]]), _with(body, star_id="star[1]")]
    ones = json.dumps(_with(body, mask=[int(v) for v in body["mask"]])).encode()
    assert np.array_equal(_read_plain(ones, batch=False)[1][0][2], np.array(body["mask"], bool))
    for r in (nested, twice, json.dumps(_with(body, colour="red")).encode(), b"[1, 2]", *(json.dumps(b).encode()
                                                                                           for b in lax)):
        assert _read_plain(r, batch=False) is None, r[:80]
        assert _read_plain(b'{"spectra": [' + r + b"]}", batch=True) is None, r[:80]
    for r in (nested, json.dumps(_with(body, colour="red")).encode()):
        with pytest.raises(_ServiceError) as err:
            _json_spectrum(r)
        assert err.value.status == 422
    for b in lax:  # answered as the documented model reads them
        got, _, _ = _json_spectrum(json.dumps(b).encode())
        ref, _ = _spectra([SpectrumJSON.model_validate_json(json.dumps(b))])
        for name in ("flux", "ivar", "mask", "bitmask"):
            assert np.array_equal(getattr(got, name), getattr(ref, name)), name
        assert got.meta_columns(["star_id"])["star_id"].tolist() == [b["star_id"]]
    got, _ = _json_batch(json.dumps({"spectra": [body, lax[2]]}).encode(), 5)
    assert got.meta_columns(["star_id"])["star_id"].tolist() == [body["star_id"], "star[1]"]


def test_a_spectrum_without_a_usable_pixel_is_answered_with_its_flag(client, stars):
    r = client.post("/v1/feh", json=_with(stars[2][0], ivar=[0.0] * APSTAR_NPIX))
    assert r.status_code == 200
    assert r.json()["flags"] == ["no_usable_lines"] and r.json()["feh"] is None and r.json()["feh_upper"] is None


def test_requests_waiting_together_are_predicted_in_one_pass_and_an_error_stays_with_its_request(app, stars):
    """Five requests queued while the compute thread is busy: one pass of five spectra, each answer as alone; a
    sixth whose parameters the library refuses (teff 20000 K, past the request models) fails alone."""
    import asyncio

    from fehkit.service import SpectrumJSON, _ServiceError, _spectra

    compute, predictor = app.state.compute, app.state.predictor
    items = [_spectra([SpectrumJSON.model_validate(b)]) for b in stars[2][:5]]
    alone = [predictor.predict(batch, params, False)[0] for batch, params in items]
    bad_batch, bad_params = _spectra([SpectrumJSON.model_validate(stars[2][5])])
    bad_params["teff"][0] = 20000.0
    sizes = []
    real = predictor.predict

    def counting(batch, params, lines):
        sizes.append(batch.n_spectra)
        return real(batch, params, lines)

    async def main(with_bad: bool):
        busy = asyncio.ensure_future(compute.call(time.sleep, 0.5))
        await asyncio.sleep(0.05)  # the thread is now asleep: what follows queues up
        jobs = [compute.predict(batch, params, False) for batch, params in items]
        if with_bad:
            jobs.append(compute.predict(bad_batch, bad_params, False))
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await busy
        return out

    predictor.predict = counting
    try:
        out = asyncio.run(main(False))
        assert sizes == [5]
        for got, ref in zip(out, alone, strict=True):
            assert got[0]["star_id"] == ref["star_id"] and _answers_match(got[0], ref)
        sizes.clear()
        out = asyncio.run(main(True))
    finally:
        predictor.predict = real
    assert sizes[0] == 6 and sorted(sizes[1:]) == [1] * 6  # the joined pass failed: each job alone
    for got, ref in zip(out[:5], alone, strict=True):
        assert got[0]["star_id"] == ref["star_id"] and _answers_match(got[0], ref)
    assert isinstance(out[5], _ServiceError) and out[5].status == 422 and "teff" in out[5].message


def test_the_app_answers_again_after_a_server_stopped_it(app, stars):
    for _ in range(2):  # each with-block runs the app's start-up and shutdown
        with TestClient(app) as c:
            assert c.post("/v1/feh", json=stars[2][1]).status_code == 200
            assert c.get("/readyz").json()["status"] == "ready"


def test_unknown_paths_and_methods_are_json_errors(client):
    r = client.get("/v2/feh")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/v1/feh")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_a_failure_inside_is_a_500_without_a_stack_trace(app, client, stars, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.state.predictor, "predict", broken)
    r = client.post("/v1/feh", json=stars[2][0])
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text


def test_a_request_writes_nothing_to_disk(client, giant_bytes, monkeypatch):
    """An uncompressed 3-visit apStar file (> 1 MB, where form parsers spill to a temporary file) is parsed in
    memory: every way to create or write a file fails the request while it runs, and none is tried."""
    import builtins
    import tempfile

    tried: list[str] = []

    def refuse(name, real):
        def wrapped(*args, **kwargs):
            tried.append(f"{name}{args[:2]}")
            raise PermissionError(f"{name}: no file may be written during a request")
        return wrapped

    real_open, real_os_open = builtins.open, os.open

    def open_read_only(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            return refuse("open", real_open)(file, mode)
        return real_open(file, mode, *args, **kwargs)

    def os_open_read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            return refuse("os.open", real_os_open)(path, flags)
        return real_os_open(path, flags, *args, **kwargs)

    assert len(giant_bytes) > 1 << 20
    with monkeypatch.context() as m:
        for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
            m.setattr(tempfile, name, refuse(f"tempfile.{name}", getattr(tempfile, name)))
        m.setattr(builtins, "open", open_read_only)
        m.setattr(os, "open", os_open_read_only)
        r = client.post("/v1/feh", files={"file": ("apStar-giant.fits", giant_bytes)},
                        data={"teff": "4000", "logg": "1.0", "vmic": "1.5"})
        j = client.post("/v1/feh", params={"lines": "true"}, json={
            "teff": 4800, "logg": 1.5, "vmic": 1.5, "flux": [1.0] * APSTAR_NPIX, "ivar": [1e4] * APSTAR_NPIX})
    assert tried == []
    assert r.status_code == 200, r.text
    assert j.status_code == 200, j.text


def test_the_api_key_guards_all_but_the_health_checks_and_cors_is_off_by_default(model_dir, client, stars):
    r = client.get("/v1/model", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    keyed = create_app(model_dir, ServiceSettings(api_key="s3cret", cors_origins=["https://pipeline.example"]))
    with TestClient(keyed, raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        for path in ("/v1/model", "/metrics", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
            assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
        r = c.post("/v1/feh", json=stars[2][0])
        assert r.status_code == 401
        assert c.post("/v1/feh", json=stars[2][0], headers={"X-API-Key": "s3cret"}).status_code == 200
        r = c.get("/healthz", headers={"Origin": "https://pipeline.example"})
        assert r.headers["access-control-allow-origin"] == "https://pipeline.example"
        schema = c.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()
        assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"


def test_the_openapi_schema_documents_every_field_with_units(client):
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    for name in ("SpectrumJSON", "SpectrumUpload", "BatchJSON", "FeHResponse", "FeHResult", "BatchResponse",
                 "LineEW", "Members", "ModelCard", "ErrorBody", "ErrorDetail", "Health"):
        for field, prop in comps[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    spec = comps["SpectrumJSON"]["properties"]
    assert "(K)" in spec["teff"]["description"] and "(km/s)" in spec["vmic"]["description"]
    assert "dex" in spec["logg"]["description"] and "8575" in spec["flux"]["description"]
    assert spec["flux"]["minItems"] == spec["flux"]["maxItems"] == APSTAR_NPIX
    out = comps["FeHResult"]["properties"]
    assert all("dex" in out[k]["description"] for k in NUMBERS)
    assert "(mA)" in comps["LineEW"]["properties"]["ew_mA"]["description"]
    assert comps["BatchJSON"]["properties"]["spectra"]["maxItems"] == MAX_BATCH
    body = schema["paths"]["/v1/feh"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"400", "413", "415", "422"} <= set(schema["paths"]["/v1/feh"]["post"]["responses"])


# ---- schemathesis: generated requests from the schema --------------------------------------------------------------
def _operations(app):
    import schemathesis

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return {op.label: op for op in (r.ok() for r in schema.get_all_operations())}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(app, mode):
    """Requests generated from /openapi.json, valid and invalid, for every operation: its checks (no 5xx, status
    codes, content types and bodies as documented, invalid input refused) all pass. schemathesis's pytest
    integration (from_fixture) does not run under pytest 9, so each operation is driven by hypothesis here."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    ops = _operations(app)
    assert {"POST /v1/feh", "POST /v1/feh/batch", "GET /v1/model", "GET /metrics", "GET /healthz",
            "GET /readyz"} <= set(ops)
    for label, op in ops.items():
        if mode == "negative" and not label.startswith("POST"):
            continue  # the GET endpoints take no input to get wrong
        # hypothesis builds each spectrum's 8575-pixel arrays: a batch of them is slow to generate
        examples = {"POST /v1/feh": 8, "POST /v1/feh/batch": 3}.get(label, 3)

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(GenerationMode(mode)))
        def check(case):
            # a schema cannot say "a readable FITS file": bytes that fit it are refused with the documented 422
            upload = case.media_type == "multipart/form-data"
            case.call_and_validate(excluded_checks=[positive_data_acceptance] if upload else [])

        check()


# ---- a real server: fehkit serve --workers 2 on loopback -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busiest(pids: list[int]) -> int:
    """The worker holding the most sockets: the clients' connections (the kernel may give them all to one)."""
    def sockets(pid: int) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return n

    return max(pids, key=sockets)


def _workers(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    out = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(kid)
        except OSError:
            pass
    return sorted(out)


@pytest.fixture(scope="module")
def served(model_dir):
    """``fehkit serve --workers 2`` as a subprocess on a free loopback port, ready."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fehkit", "serve", "--model", str(model_dir), "--port",
                             str(port), "--workers", "2", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while len(_workers(proc.pid)) < 2 or not _ready(url):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "fehkit serve not ready in 120 s"
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _answers_match(got: dict, ref: dict) -> bool:
    """The answer a spectrum gets among other requests is the one it gets alone (to float32 rounding of the MLP)."""
    if got["flag"] != ref["flag"]:
        return False
    for key in ("feh", "feh_err", "feh_upper"):
        if (got[key] is None) != (ref[key] is None) or (got[key] is not None and abs(got[key] - ref[key]) > 1e-5):
            return False
    return True


def _load(url: str, bodies: list[bytes], refs: list[dict], clients: int, per_client: int,
          stop: threading.Event | None = None) -> list[tuple[float, float, str]]:
    """Send requests from ``clients`` threads; each outcome as (start, end, "ok" or what went wrong)."""
    outcomes: list[tuple[float, float, str]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            k = 0
            while (k < per_client) if stop is None else not stop.is_set():
                j = (c * 7 + k) % len(bodies)
                sid = f"C{c}-R{k}-S{j}"
                t0 = time.time()
                try:
                    r = http.post("/v1/feh", content=bodies[j].replace(b"@ID@", sid.encode()),
                                  headers={"content-type": "application/json"})
                    what = "ok" if r.status_code == 200 and r.json()["star_id"] == sid and \
                        _answers_match(r.json(), refs[j]) else f"status {r.status_code} or a mixed-up answer"
                except httpx.HTTPError as exc:
                    what = type(exc).__name__
                with lock:
                    outcomes.append((t0, time.time(), what))
                k += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _templates(url: str, stars) -> tuple[list[bytes], list[dict]]:
    """Request bodies with a star id to fill in, and each spectrum's answer alone."""
    bodies = [json.dumps({**b, "star_id": "@ID@"}).encode() for b in stars[2]]
    refs = [httpx.post(url + "/v1/feh", json=b, timeout=60).json() for b in stars[2]]
    return bodies, refs


def test_eight_concurrent_clients_each_get_their_own_answers(served, stars):
    _, url = served
    bodies, refs = _templates(url, stars)
    outcomes = _load(url, bodies, refs, clients=8, per_client=200)
    assert len(outcomes) == 1600
    assert [w for _, _, w in outcomes if w != "ok"] == []


def test_a_killed_worker_is_restarted_and_only_its_requests_in_flight_fail(served, stars):
    proc, url = served
    bodies, refs = _templates(url, stars)
    before = _workers(proc.pid)
    assert len(before) == 2
    stop = threading.Event()
    result: dict = {}

    def run() -> None:
        result["outcomes"] = _load(url, bodies, refs, clients=4, per_client=0, stop=stop)

    loader = threading.Thread(target=run)
    loader.start()
    time.sleep(2.0)
    victim = _busiest(before)
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    deadline = time.time() + 120
    while True:  # uvicorn's supervisor starts a new worker; it answers once it has loaded and warmed the model
        now = _workers(proc.pid)
        if len(now) == 2 and victim not in now:
            break
        assert time.time() < deadline, f"no new worker after 120 s: {now}"
        time.sleep(0.3)
    time.sleep(1.0)
    stop.set()
    loader.join()
    outcomes = result["outcomes"]
    failed = [(t0, w) for t0, _, w in outcomes if w != "ok"]
    # each of the 4 clients has one request in flight at most: those sent before the kill (or as it happened)
    assert len(failed) <= 4, failed
    assert all(t0 <= killed_at + 0.5 for t0, _ in failed), (killed_at, failed)
    assert all("mixed-up" not in w for _, w in failed)
    assert sum(t0 > killed_at + 0.5 for t0, _, w in outcomes if w == "ok") > 10  # the service kept answering
    new = (set(now) - set(before)).pop()
    deadline = time.time() + 120
    while True:  # the new worker answers once it has loaded the model: new connections reach it in time
        if httpx.get(url + "/healthz", timeout=10).json()["pid"] == new:
            break
        assert time.time() < deadline, f"worker {new} never answered"
        time.sleep(0.05)


# ---- the command ---------------------------------------------------------------------------------------------------
def test_serve_refuses_a_missing_model_and_a_port_in_use(model_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    assert "card.json" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}" in err and "cannot listen" in err
