"""The HTTP service: [Fe/H] of one spectrum or a batch over HTTP, for survey pipelines (``fehkit serve``).

:func:`create_app` builds a FastAPI application around one saved model (``fehkit train`` or ``model/`` of
``fehkit demo``), loaded once and warmed by one prediction before the first request. ``POST /v1/feh`` takes one
spectrum, as an uploaded APOGEE file (apStar/asStar, aspcapStar or apVisit, plain or gzipped; multipart form) or as
JSON flux and inverse variance on the apStar grid, with the star's Teff, log g and vmic; ``POST /v1/feh/batch``
takes up to ``max_batch`` JSON spectra. Both answer with the columns of ``fehkit predict`` -- ``feh``, ``feh_err``,
``feh_upper``, the members, the classical value, ``n_lines``, ``flag`` and its reasons -- plus, on request, the
per-line EWs, and the model's version and hash. ``GET /healthz``, ``/readyz``, ``/v1/model`` (the model card) and
``/metrics`` (Prometheus text) complete it; docs/service.md describes every field, error and limit.

The science is the library's, unchanged: :func:`fehkit.training.spectra_features` (continuum, EWs, classical
method) and :func:`fehkit.training.predict_features` (members, fusion, errors, flags), with the forest and the
boosted trees run by fehkit's compiled walk (:class:`fehkit.infer.CompiledMembers`; float64 torch tensors,
:class:`fehkit.infer.TorchMembers`, without numba), equal to scikit-learn and XGBoost to float rounding. One
compute thread per process runs them: requests that arrive while it works are predicted together in its next
batch, so many clients cost little more than one, and the library (whose warning capture is one global state)
never runs in two threads at once. Uploads are parsed in memory (python-multipart, then astropy
on the size-limited buffer, :func:`fehkit.io.read_apogee_bytes`): a request writes nothing to disk.

Every request is validated (pydantic models that also make the OpenAPI schema; a plainly valid JSON spectrum's
pixel lists are read by simdjson and checked against the same limits in NumPy); a client's mistake is a 4xx
with a JSON body naming the field, what was found and what was expected, never a 500 or a stack trace. The body
size limit is checked on ``Content-Length`` before the body is read, and again while it is read. With the
environment variable ``FEHKIT_API_KEY`` set, every endpoint but the health checks requires it (header
``X-API-Key``). CORS is off unless origins are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import simdjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fehkit import __version__
from fehkit.errors import FehkitError, UsageError
from fehkit.features import DEFAULT_PARAM_ERRORS, PARAM_LIMITS
from fehkit.flags import split as split_flags
from fehkit.physics.cog import ALPHA_RANGE
from fehkit.spectra import APOGEE_FLUX_UNIT, APSTAR_NPIX, SpectrumBatch, apstar_wavelength

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_MB", "ServiceSettings", "app_from_environment",
           "create_app", "spectrum_payload"]

log = logging.getLogger("fehkit.service")

#: Environment variable holding the API key; when set, every endpoint but /healthz and /readyz requires it.
API_KEY_ENV = "FEHKIT_API_KEY"
#: Header that carries the API key.
API_KEY_HEADER = "X-API-Key"
#: Environment variable through which ``fehkit serve`` hands its settings (JSON) to each worker process.
SETTINGS_ENV = "FEHKIT_SERVICE_SETTINGS"
#: Spectra per call of ``POST /v1/feh/batch`` by default.
DEFAULT_MAX_BATCH = 100
#: Largest request body by default (MiB); a JSON spectrum is ~0.35 MB, a gzipped apStar file 0.5-5 MB.
DEFAULT_MAX_BODY_MB = 64
#: Spectra the compute thread predicts in one go at most (requests queued meanwhile are joined up to this).
COALESCE_SPECTRA = 256
#: Paths open without the API key.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
#: Buckets (seconds) of the request-latency histogram of /metrics.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Validation problems listed in one error response at most.
MAX_DETAILS = 20

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_WAVE = apstar_wavelength()
_WAVE.flags.writeable = False
_STAR_ID = r"^[A-Za-z0-9+_.:()\[\]\- ]{1,64}$"
_MEMBERS = ("rf", "xgb", "dnn")


# ---------------------------------------------------------------------------------------------------------------
# request and response models (they are the validation and the OpenAPI schema)
# ---------------------------------------------------------------------------------------------------------------
def _limit(name: str) -> dict[str, float]:
    lo, hi, closed = PARAM_LIMITS[name]
    bounds: dict[str, float] = {"ge" if closed else "gt": lo}
    if math.isfinite(hi):
        bounds["le"] = hi
    return bounds


class StellarParameters(BaseModel):
    """What the observer knows of the star: Teff, log g, vmic (required), their errors, [alpha/Fe], S/N."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    star_id: str | None = Field(None, pattern=_STAR_ID, description="Your id of the star, echoed in the response "
                                "(1-64 characters: letters, digits, space and + _ . : ( ) [ ] -). Default: the "
                                "file's OBJID for an upload, \"star\" for JSON.")
    teff: float = Field(**_limit("teff"), description="Effective temperature (K).", examples=[4800.0])
    logg: float = Field(**_limit("logg"), description="Surface gravity log10(g / cm s^-2) (dex).", examples=[1.5])
    vmic: float = Field(**_limit("vmic"), le=100.0, description="Microturbulence (km/s).", examples=[1.8])
    teff_err: float | None = Field(None, gt=0, le=5000, description="1-sigma error of teff (K); default "
                                   f"{DEFAULT_PARAM_ERRORS['teff']:g} K.")
    logg_err: float | None = Field(None, gt=0, le=5, description="1-sigma error of logg (dex); default "
                                   f"{DEFAULT_PARAM_ERRORS['logg']:g} dex.")
    vmic_err: float | None = Field(None, gt=0, le=5, description="1-sigma error of vmic (km/s); default "
                                   f"{DEFAULT_PARAM_ERRORS['vmic']:g} km/s.")
    alpha_fe: float = Field(0.4, ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1], description="[alpha/Fe] of the star's "
                            "atmosphere (dex); default +0.4, the halo's alpha enhancement.")
    snr: float | None = Field(None, gt=0, le=100000, description="Signal-to-noise ratio per pixel, for the "
                              "training-domain check (an upload's header SNR is used when this is absent).")


class SpectrumJSON(StellarParameters):
    """One spectrum as JSON arrays on the apStar grid, with the star's parameters."""

    flux: list[Annotated[float, Field(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]] = Field(
        min_length=APSTAR_NPIX, max_length=APSTAR_NPIX,
        description=f"Flux density on the apStar grid: {APSTAR_NPIX} pixels, vacuum rest-frame wavelength "
        "10**(4.179 + 6e-6 i) Angstrom, i = 0..8574 (15100.8-16999.8 A). Any linear unit (apStar's "
        f"{APOGEE_FLUX_UNIT}, or continuum-normalized): fehkit fits its own continuum. Finite numbers only; give "
        "pixels without data ivar 0 (or mask true).")
    ivar: list[Annotated[float, Field(ge=0, le=_FLOAT32_MAX)]] = Field(
        min_length=APSTAR_NPIX, max_length=APSTAR_NPIX,
        description="Inverse variance of flux (1 / flux unit^2), >= 0; 0 where a pixel has no data.")
    mask: list[bool] | None = Field(None, min_length=APSTAR_NPIX, max_length=APSTAR_NPIX,
                                    description="true for pixels not to use (optional; default none).")
    bitmask: list[Annotated[int, Field(ge=0, lt=2**31)]] | None = Field(
        None, min_length=APSTAR_NPIX, max_length=APSTAR_NPIX,
        description="APOGEE_PIXMASK of each pixel, as in apStar HDU3 (optional). Pixels with a bad bit are masked "
        "as the file readers mask them (BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY, "
        "NOT_ENOUGH_PSF, SIG_SKYLINE); SIG_TELLURIC pixels get the telluric residual added to their error. "
        "Send it to get the same answer as for the file.")


#: The fields of :class:`SpectrumJSON`.
_JSON_FIELDS = frozenset(SpectrumJSON.model_fields)


class SpectrumUpload(StellarParameters):
    """One APOGEE spectrum file as a multipart form upload, with the star's parameters as form fields."""

    file: bytes = Field(description="apStar/asStar, aspcapStar or apVisit FITS file, plain or gzipped; parsed in "
                        "memory, never stored.")
    kind: Literal["auto", "apStar", "aspcapStar", "apVisit"] = Field(
        "auto", description="File kind; auto decides from the uploaded file name, else from the HDU layout.")


class BatchJSON(BaseModel):
    """Several JSON spectra in one call (at most the server's max_batch)."""

    model_config = ConfigDict(extra="forbid")

    spectra: list[SpectrumJSON] = Field(min_length=1, description="The spectra, each with its parameters.")


class Members(BaseModel):
    """Each member's [Fe/H] (dex) before fusion."""

    rf: float | None = Field(None, description="Random forest (dex).")
    xgb: float | None = Field(None, description="Gradient-boosted trees, XGBoost (dex).")
    dnn: float | None = Field(None, description="Multilayer perceptron (dex).")


class LineEW(BaseModel):
    """One Fe I line's equivalent width (the columns of ``fehkit ew``)."""

    line_wave: float = Field(description="Vacuum wavelength of the line (Angstrom).")
    ew_mA: float | None = Field(description="Measured equivalent width (mA), also below detection; null when the "
                                "line is masked or its fit failed.")
    ew_err_mA: float | None = Field(description="1-sigma error of ew_mA (mA).")
    ew_upper_mA: float | None = Field(description="3-sigma upper limit of the EW (mA).")
    flag: str = Field(description="ok, upper_limit, masked, fit_failed or blend_suspect.")
    reason: str = Field(description="Why the flag applies (empty for a clean line).")


class FeHResult(BaseModel):
    """[Fe/H] of one spectrum: the columns of ``fehkit predict``."""

    star_id: str = Field(description="The request's star_id, else the file's OBJID, else \"star\".")
    feh: float | None = Field(description="[Fe/H] (dex); null when flag has upper_limit or no_usable_lines.")
    feh_err: float | None = Field(description="1-sigma error of feh (dex), calibrated on held-out stars.")
    feh_upper: float | None = Field(description="3-sigma upper limit of [Fe/H] (dex) where flag has upper_limit; "
                                    "else null.")
    feh_sys: float | None = Field(description="Code-to-code systematic of feh_cog (dex): MOOG against SME curves "
                                  "of growth.")
    feh_cog: float | None = Field(description="The classical value: joint-likelihood curve-of-growth [Fe/H] of "
                                  "all usable lines (dex).")
    members: Members = Field(description="Each member's [Fe/H] (dex).")
    n_lines: int = Field(description="Fe I lines measured with flag ok.")
    flag: str = Field(description="ok, or those that apply of upper_limit, no_usable_lines, out_of_domain, "
                      "grid_edge, grid_extrapolated, joined by ';'.")
    flags: list[str] = Field(description="The flags as a list (empty when flag is ok).")
    flag_reason: str = Field(description="Each flag spelled out: the quantity, its value and the range.")
    synthetic_spectrum: bool | None = Field(None, description="true when the uploaded file says it is a SYNTHETIC "
                                            "spectrum (fehkit simulate); null for JSON input.")
    lines: list[LineEW] | None = Field(None, description="Per-line equivalent widths, with ?lines=true.")


class ModelStamp(BaseModel):
    """Which model answered."""

    model_version: str = Field(description="When the model was saved (ISO 8601, UTC): changes with every model.")
    model_sha256: str = Field(description="SHA-256 of the model folder's checksums.sha256, which lists the "
                              "SHA-256 of every file of the folder: one hash for the whole model.")
    warning: str | None = Field(description="Set when the model was trained on SYNTHETIC spectra.")


class FeHResponse(FeHResult, ModelStamp):
    """``POST /v1/feh``: one spectrum's result and the model's stamp."""


class BatchResponse(ModelStamp):
    """``POST /v1/feh/batch``: one result per spectrum, in the request's order."""

    n: int = Field(description="Number of results.")
    results: list[FeHResult] = Field(description="One result per spectrum, in the request's order.")


class ModelCard(BaseModel):
    """The model card: what the model is, what it was trained on and its training domain."""

    model_version: str = Field(description="When the model was saved (ISO 8601, UTC).")
    model_sha256: str = Field(description="SHA-256 of checksums.sha256 (covers every file of the model).")
    synthetic: bool | None = Field(description="true when the model was trained on SYNTHETIC spectra.")
    warning: str | None = Field(description="Set when the model was trained on SYNTHETIC spectra.")
    training_data: str | None = Field(description="What the model was trained on.")
    n_train: int | None = Field(description="Training stars the members learnt from.")
    training_set_sha256: str | None = Field(description="SHA-256 of the training features and labels.")
    members: list[str] = Field(description="The ensemble's members.")
    weights: dict[str, float] = Field(description="Fusion weight of each member (sum 1).")
    domain: dict[str, Any] = Field(description="Training domain: ranges of teff (K), logg (dex), vmic (km/s), "
                                   "feh (dex) and snr, their tolerances, and the feature-space distance threshold.")
    label_range: list[float] = Field(description="Range of the training labels [Fe/H] (dex).")
    trained_with: dict[str, Any] = Field(description="Library versions that trained the model.")
    service: dict[str, Any] = Field(description="This service: fehkit version, max_batch, max_body_bytes.")
    card: dict[str, Any] = Field(description="The whole card.json of the model folder.")


class ErrorDetail(BaseModel):
    """One problem with a request."""

    field: str | None = Field(description="The field, e.g. flux[12] or spectra[3].teff; null for the whole body.")
    found: str | None = Field(description="What was found.")
    expected: str | None = Field(description="What was expected.")


class ErrorBody(BaseModel):
    """Every error response: a machine-readable kind, a sentence, and the problems found."""

    error: str = Field(description="Kind: invalid_json, invalid_request, validation_error, invalid_file, "
                       "invalid_form, too_many_spectra, body_too_large, unsupported_media_type, unauthorized, "
                       "not_found, method_not_allowed, cannot_predict or internal_error.")
    message: str = Field(description="What was found and what was expected, in one sentence.")
    field: str | None = Field(None, description="The first offending field.")
    found: str | None = Field(None, description="What was found there.")
    expected: str | None = Field(None, description="What was expected.")
    details: list[ErrorDetail] = Field(default_factory=list, description="All problems (at most 20).")


class Health(BaseModel):
    """Liveness and readiness."""

    status: str = Field(description="ok (healthz), ready or not_ready (readyz).")
    pid: int = Field(description="Process id of the worker that answered.")
    model_sha256: str | None = Field(None, description="The loaded model (readyz).")


_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "The body is not valid JSON or not a readable multipart form."),
    (401, "The API key is missing or wrong (only when the server has one)."),
    (413, "The body is larger than the server's limit."),
    (415, "Content-Type is neither application/json nor multipart/form-data."),
    (422, "A field is missing, malformed or out of range, or the uploaded file is not a readable APOGEE spectrum."),
)}


# ---------------------------------------------------------------------------------------------------------------
# settings and the app
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ServiceSettings:
    """What a service needs besides its model.

    Attributes
    ----------
    max_batch : int
        Spectra per call of ``POST /v1/feh/batch`` at most.
    max_body_mb : float
        Largest request body (MiB); an uploaded gzipped file may expand to 4 times this.
    cors_origins : list of str
        Origins allowed by CORS (none: CORS off, the default).
    api_key : str, optional
        Required for every endpoint but the health checks; default the environment variable ``FEHKIT_API_KEY``.
    """

    max_batch: int = DEFAULT_MAX_BATCH
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    cors_origins: list[str] = field(default_factory=list)
    api_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> ServiceSettings:
        """Return self after checking every value (UsageError naming the setting otherwise)."""
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise UsageError(f"max_batch = {self.max_batch!r}: expected a whole number >= 1")
        if not (isinstance(self.max_body_mb, int | float) and math.isfinite(self.max_body_mb)
                and self.max_body_mb > 0):
            raise UsageError(f"max_body_mb = {self.max_body_mb!r}: expected a number of MiB > 0")
        for origin in self.cors_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise UsageError(f"CORS origin {origin!r}: expected '*' or scheme://host[:port], e.g. "
                                 "https://pipeline.example.org")
        return self


def create_app(model_dir: str | os.PathLike[str], settings: ServiceSettings | None = None) -> FastAPI:
    """Build the FastAPI application serving the model in ``model_dir``.

    The model is loaded here, once (every file checked, :meth:`fehkit.models.FeHEnsemble.load`), and warmed by
    one prediction of a packaged real spectrum, so that the first request is as fast as the others. A bad model
    folder raises its :class:`~fehkit.errors.FehkitError` here, before anything is served.

    Parameters
    ----------
    model_dir : path
        A model folder (``fehkit train``, or ``model/`` of ``fehkit demo``).
    settings : ServiceSettings, optional
        Batch and body limits, CORS origins, API key (default: the environment variable ``FEHKIT_API_KEY``).

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (``fehkit serve`` does), or call it with ``fastapi.testclient.TestClient``.
    """
    settings = (settings or ServiceSettings()).check()
    api_key = settings.api_key if settings.api_key is not None else os.environ.get(API_KEY_ENV) or None
    predictor = _Predictor(Path(model_dir))
    compute = _ComputeThread(predictor)
    predictor.warm_up(compute)
    metrics = _Metrics()
    stamp = predictor.stamp()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        compute.start()
        yield
        compute.stop()  # the work queued is done first; a later request (a restarted app) starts it again

    app = FastAPI(
        title="fehkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="[Fe/H] of extremely metal-poor stars from APOGEE H-band spectra. Post a spectrum (an APOGEE "
        "file or JSON flux/ivar on the apStar grid) with Teff, log g and vmic; get [Fe/H], its error or 3-sigma "
        "upper limit, the members, the classical curve-of-growth value and quality flags. Units are in each "
        "field's description.",
    )

    # ---- errors: always JSON, never a stack trace --------------------------------------------------------------
    @app.exception_handler(_ServiceError)
    async def _service_error(request: Request, exc: _ServiceError) -> Response:
        metrics.error(exc.kind)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        err = _from_pydantic(list(exc.errors()), "")
        metrics.error(err.kind)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.error(kind)
        what = f"{request.method} {request.url.path}"
        expected = ("one of GET /healthz, /readyz, /v1/model, /metrics, /openapi.json; POST /v1/feh, /v1/feh/batch")
        err = _ServiceError(exc.status_code, kind, f"{what}: {exc.detail}; expected {expected}", found=what,
                            expected=expected)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        metrics.error("internal_error")
        err = _ServiceError(500, "internal_error", "the server failed on this request; the error is in its log "
                            "(please report it)")
        return JSONResponse(err.body(), status_code=500)

    # ---- health, model card, metrics ---------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers.")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "pid": os.getpid(), "model_sha256": None})

    @app.get("/readyz", response_model=Health, summary="Readiness: the model is loaded and warmed.",
             responses={503: {"model": Health, "description": "The compute thread cannot run."}})
    async def readyz() -> Response:
        # a worker accepts connections only once create_app has loaded and warmed the model
        ready = compute.alive() or compute.start()
        return JSONResponse({"status": "ready" if ready else "not_ready", "pid": os.getpid(),
                             "model_sha256": stamp["model_sha256"]}, status_code=200 if ready else 503)

    card_body = json.dumps(_finite(predictor.card_summary(settings))).encode()

    @app.get("/v1/model", response_model=ModelCard, responses={401: _ERRORS[401]},
             summary="The model card: version, hash, training data and domain, whether it is synthetic.")
    async def model_card() -> Response:
        return Response(card_body, media_type="application/json")

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: _ERRORS[401]},
             summary="Prometheus text: requests, latency histogram, errors by kind, spectra predicted.")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(stamp["model_sha256"]),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- predictions --------------------------------------------------------------------------------------------
    lines_query = Query(False, description="Add the per-line equivalent widths (lines).")

    @app.post("/v1/feh", response_model=FeHResponse, responses=dict(_ERRORS),
              summary="[Fe/H] of one spectrum: an uploaded APOGEE file or JSON flux/ivar on the apStar grid.")
    async def feh(request: Request, lines: bool = lines_query) -> Response:
        _only_known_query(request)
        ctype, options = _content_type(request)
        if ctype not in ("application/json", "multipart/form-data"):
            raise _unsupported(ctype, "application/json or multipart/form-data")
        body = await _read_body(request, settings.max_body_bytes)
        if ctype == "application/json":
            spectrum, params, extra = _json_spectrum(body)
        else:  # multipart parsing and FITS reading run in the compute thread, off the event loop
            spectrum, params, extra = await compute.call(_upload_spectrum, body, options,
                                                         4 * settings.max_body_bytes)
        results = await compute.predict(spectrum, params, lines)
        metrics.spectra(1)
        return JSONResponse({**results[0], **extra, **stamp})

    @app.post("/v1/feh/batch", response_model=BatchResponse, responses=dict(_ERRORS),
              summary=f"[Fe/H] of up to max_batch (default {DEFAULT_MAX_BATCH}) JSON spectra in one call.")
    async def feh_batch(request: Request, lines: bool = lines_query) -> Response:
        _only_known_query(request)
        ctype, _ = _content_type(request)
        if ctype != "application/json":
            raise _unsupported(ctype, "application/json (a batch is JSON; upload files one per call)")
        body = await _read_body(request, settings.max_body_bytes)
        spectrum, params = _json_batch(body, settings.max_batch)
        results = await compute.predict(spectrum, params, lines)
        metrics.spectra(len(results))
        return JSONResponse({"n": len(results), "results": results, **stamp})

    app.openapi = _openapi_builder(app, settings, api_key is not None)
    app.add_middleware(_Guard, api_key=api_key, max_body=settings.max_body_bytes, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", API_KEY_HEADER])
    app.add_middleware(_Timing, metrics=metrics)
    app.state.predictor = predictor
    app.state.compute = compute
    app.state.settings = settings
    return app


def spectrum_payload(batch: SpectrumBatch, i: int, params: Any, *, star_id: str | None = None) -> dict[str, Any]:
    """Return the JSON body of ``POST /v1/feh`` for spectrum ``i`` of a batch on the apStar grid.

    Pixels without data (masked, non-finite flux, ivar <= 0) are sent as flux 0 with ivar 0 and mask true: JSON has
    no NaN. The APOGEE bitmask goes along when the batch has one (its telluric bits weigh in the EW errors).
    ``params`` is a mapping or a table row with ``teff``, ``logg``, ``vmic`` (and optionally their ``*_err``,
    ``alpha_fe``, ``snr``; else ``meta["snr"]`` when the batch has it); ``star_id`` defaults to the batch's
    ``meta["star_id"]``.

    Examples
    --------
    >>> from fehkit.synth import make_benchmark
    >>> sim = make_benchmark(1, seed=1)
    >>> body = spectrum_payload(sim.batch, 0, {"teff": 4800, "logg": 1.5, "vmic": 1.8})
    >>> len(body["flux"]), body["star_id"] == sim.batch.meta["star_id"][0]
    (8575, True)
    """
    if batch.n_pixels != APSTAR_NPIX or not np.allclose(batch.wave, _WAVE, rtol=1e-9, atol=0):
        raise UsageError(f"batch: {batch.n_pixels} pixels from {batch.wave[0]:.2f} A; expected the apStar grid "
                         f"({APSTAR_NPIX} pixels from {_WAVE[0]:.2f} A): resample it first")
    flux = np.asarray(batch.flux[i], np.float64)
    ivar = np.asarray(batch.ivar[i], np.float64)
    bad = batch.mask[i] | ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0)
    body: dict[str, Any] = {
        "star_id": str(star_id if star_id is not None else batch.meta["star_id"].iloc[i]
                       if "star_id" in batch.meta else "star"),
        "flux": np.where(bad, 0.0, flux).tolist(), "ivar": np.where(bad, 0.0, ivar).tolist(),
        "mask": bad.tolist()}
    if batch.bitmask is not None:
        body["bitmask"] = np.asarray(batch.bitmask[i], np.int64).tolist()
    for k in ("teff", "logg", "vmic", "teff_err", "logg_err", "vmic_err", "alpha_fe", "snr"):
        v = params.get(k) if hasattr(params, "get") else None
        if v is not None and np.isfinite(float(v)):
            body[k] = float(v)
    if "snr" not in body and "snr" in batch.meta and np.isfinite(float(batch.meta["snr"].iloc[i])):
        body["snr"] = float(batch.meta["snr"].iloc[i])  # as the library uses it: for the S/N domain check
    return body


def app_from_environment() -> FastAPI:
    """Build the app from ``FEHKIT_SERVICE_SETTINGS`` (JSON: model and settings), in each ``fehkit serve`` worker."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise UsageError(f"{SETTINGS_ENV} is not set; expected the JSON settings that fehkit serve passes to its "
                         "workers (start the service with fehkit serve --model DIR)")
    conf = json.loads(raw)
    model = conf.pop("model")
    return create_app(model, ServiceSettings(**conf))


# ---------------------------------------------------------------------------------------------------------------
# the model and the compute thread
# ---------------------------------------------------------------------------------------------------------------
class _Predictor:
    """The loaded ensemble, its tree members packed for a fast walk, and the path from spectra to response rows."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from fehkit.infer import CompiledMembers, TorchMembers
        from fehkit.models.ensemble import FeHEnsemble
        from fehkit.models.persist import CHECKSUMS
        from fehkit.models.trees import compiled_available
        from fehkit.threads import n_threads

        torch.set_num_threads(n_threads())
        self.model_dir = model_dir
        self.ensemble = FeHEnsemble.load(model_dir, device="cpu")
        # the compiled walk (or float64 tensors) gives scikit-learn's and XGBoost's numbers to rounding without the
        # libraries' fixed cost per call (the forest starts a thread pool at every call), which dominates for one
        # spectrum; the compiled walk takes ~0.2 ms for the forest where the tensors take ~0.5-1 ms
        self.members: CompiledMembers | TorchMembers = (
            CompiledMembers(self.ensemble) if compiled_available()
            else TorchMembers(self.ensemble, "cpu", torch.float64))
        self.card: dict[str, Any] = dict(self.ensemble.card_)
        self.sha256 = hashlib.sha256((model_dir / CHECKSUMS).read_bytes()).hexdigest()

    def stamp(self) -> dict[str, Any]:
        synthetic = self.card.get("synthetic")
        warning = None
        if synthetic:
            warning = ("SYNTHETIC: this model was trained on simulated spectra (fehkit's synthetic benchmark); on "
                       "real stars its [Fe/H] carries the synthetic-to-real gap. See GET /v1/model.")
        return {"model_version": str(self.card.get("created", "unknown")), "model_sha256": self.sha256,
                "warning": warning}

    def card_summary(self, settings: ServiceSettings) -> dict[str, Any]:
        from fehkit.files import jsonable

        e = self.card.get("ensemble", {})
        stamp = self.stamp()
        return jsonable({
            "model_version": stamp["model_version"], "model_sha256": self.sha256,
            "synthetic": self.card.get("synthetic"), "warning": stamp["warning"],
            "training_data": _text_or_none(self.card.get("training_data")), "n_train": e.get("n_train"),
            "training_set_sha256": _text_or_none(self.card.get("training_set_sha256")),
            "members": list(self.card.get("members", [])), "weights": dict(e.get("weights", {})),
            "domain": {**e.get("domain", {}), "units": {"teff": "K", "logg": "dex", "vmic": "km/s", "feh": "dex",
                                                        "snr": ""}},
            "label_range": list(e.get("label_range", [])), "trained_with": dict(self.card.get("versions", {})),
            "service": {"fehkit": __version__, "max_batch": settings.max_batch,
                        "max_body_bytes": settings.max_body_bytes},
            "card": self.card,
        })

    def predict(self, batch: SpectrumBatch, params: Mapping[str, np.ndarray], lines: bool) -> list[dict[str, Any]]:
        """Return one response row per spectrum (the columns of ``fehkit predict``, and the lines on request)."""
        from fehkit.errors import FehkitWarning
        from fehkit.training import prediction_columns, spectra_features

        # the parameters were checked against PARAM_LIMITS by the request models; build_features checks them again
        with warnings.catch_warnings():
            # what the warnings say (a parameter clipped to the grid) is in each star's flag_reason
            warnings.simplefilter("ignore", FehkitWarning)
            feats = spectra_features(batch, params)
            columns = prediction_columns(self.ensemble, feats, member_predictor=self.members)
        rows = _rows(columns)
        if lines and feats.ew is not None:
            for row, ews in zip(rows, _line_rows(feats.ew), strict=True):
                row["lines"] = ews
        return rows

    def warm_up(self, compute: _ComputeThread) -> None:
        """Predict one packaged real DR17 spectrum (read as an upload), so that the first request is not slow."""
        from fehkit.examples import example_paths
        from fehkit.io import read_apogee_bytes

        path = example_paths()[-1]
        t0 = time.perf_counter()

        def run() -> None:
            batch = read_apogee_bytes(path.read_bytes(), path.name, max_bytes=64 * 1024 * 1024)
            batch.meta["star_id"] = batch.meta["star_id"].astype(str)
            self.predict(batch, _params_columns([StellarParameters(teff=5500.0, logg=4.5, vmic=1.0)]), True)

        compute.run_now(run)
        log.info("model %s loaded and warmed in %.2f s", self.sha256[:12], time.perf_counter() - t0)


@dataclass
class _Job:
    """Work for the compute thread: a plain call, or spectra to predict (joined with other predict jobs).

    ``future`` and ``loop`` take the result back to the request's event loop (none for a call at start-up).
    """

    future: asyncio.Future | None
    loop: asyncio.AbstractEventLoop | None
    call: Callable[[], Any] | None = None
    batch: SpectrumBatch | None = None
    params: dict[str, np.ndarray] | None = None
    lines: bool = False


class _ComputeThread:
    """One thread that runs the library for this process: file parsing and predictions, in arrival order.

    Predict jobs waiting together are joined into one batch (up to :data:`COALESCE_SPECTRA` spectra): each row of
    a batch is computed on its own, so a spectrum's result does not depend on its neighbours (the MLP's float32
    matrix products may differ in the last bit). If a joined batch fails, its jobs are rerun one by one so that
    each error reaches its own request.
    """

    def __init__(self, predictor: _Predictor) -> None:
        self.predictor = predictor
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.start()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> bool:
        """Start the thread unless it runs; return whether it runs."""
        with self.lock:
            if not self.alive():
                self.thread = threading.Thread(target=self._loop, name="fehkit-compute", daemon=True)
                self.thread.start()
        return self.alive()

    def stop(self) -> None:
        """Stop the thread once the work queued before is done."""
        with self.lock:
            if self.alive():
                self.jobs.put(None)
                self.thread.join(60)

    def run_now(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the compute thread and wait for it (no event loop needed: start-up)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def wrapped() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed back to the caller below
                box["error"] = exc
            finally:
                done.set()

        self.jobs.put(_Job(None, None, call=wrapped))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.jobs.put(_Job(fut, loop, call=lambda: fn(*args)))
        return await fut

    async def predict(self, batch: SpectrumBatch, params: dict[str, np.ndarray],
                      lines: bool) -> list[dict[str, Any]]:
        self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.jobs.put(_Job(fut, loop, batch=batch, params=params, lines=lines))
        return await fut

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            pending = [job]
            while True:  # take whatever else is waiting now: it is answered in the same pass
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # stop after this pass
                    self.jobs.put(None)
                    break
                pending.append(more)
            try:
                self._run(pending)
            except Exception as exc:  # never let the thread die: every request still waiting gets the error
                log.error("compute thread failed", exc_info=exc)
                for j in pending:
                    self._finish(j, None, exc)

    def _run(self, pending: list[_Job]) -> None:
        group: list[_Job] = []
        for j in pending:
            if j.call is not None:
                self._finish(j, *_attempt(j.call))
                continue
            if group and (sum(g.batch.n_spectra for g in group) + j.batch.n_spectra > COALESCE_SPECTRA
                          or j.batch.flux_unit != group[0].batch.flux_unit):
                self._predict(group)
                group = []
            group.append(j)
        if group:
            self._predict(group)

    def _predict(self, group: list[_Job]) -> None:
        group = [j for j in group if not (j.future and j.future.cancelled())]  # the client went away
        if not group:
            return
        if len(group) == 1:
            j = group[0]
            self._finish(j, *_attempt(lambda: self.predictor.predict(j.batch, j.params, j.lines)))
            return
        def joined() -> list[dict[str, Any]]:
            batch = SpectrumBatch.concat([j.batch for j in group])
            params = {k: np.concatenate([j.params[k] for j in group]) for k in group[0].params}
            return self.predictor.predict(batch, params, any(j.lines for j in group))

        rows, error = _attempt(joined)
        if error is not None:
            for j in group:  # find whose spectrum it was: each job alone
                self._predict([j])
            return
        start = 0
        for j in group:
            part = rows[start:start + j.batch.n_spectra]
            start += j.batch.n_spectra
            if not j.lines:
                part = [{k: v for k, v in r.items() if k != "lines"} for r in part]
            self._finish(j, part, None)

    @staticmethod
    def _finish(job: _Job, value: Any, error: BaseException | None) -> None:
        future, loop = job.future, job.loop
        if future is None or loop is None or loop.is_closed():
            return

        def settle() -> None:
            if future.done():  # cancelled (the client went away), or settled already
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass


def _attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except _ServiceError as exc:  # a refused upload: already the client's error
        return None, exc
    except FehkitError as exc:
        # what the library refuses (a parameter no star has, a spectrum it cannot use) is the client's to fix
        return None, _ServiceError(422, "cannot_predict", " ".join(str(exc).split()))
    except Exception as exc:  # reported as a 500 without its trace; the trace goes to the log
        log.error("prediction failed", exc_info=exc)
        return None, exc


# ---------------------------------------------------------------------------------------------------------------
# requests: body, content type, JSON, multipart
# ---------------------------------------------------------------------------------------------------------------
class _ServiceError(Exception):
    """A request the service refuses: HTTP status, kind, message and the problems found."""

    def __init__(self, status: int, kind: str, message: str, *, field: str | None = None, found: str | None = None,
                 expected: str | None = None, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.field, self.found, self.expected = field, found, expected
        self.details = list(details) or ([{"field": field, "found": found, "expected": expected}]
                                         if (field or found or expected) else [])

    def body(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, "field": self.field, "found": self.found,
                "expected": self.expected, "details": self.details}


async def _read_body(request: Any, limit: int) -> bytes:
    """Read the body, up to ``limit`` bytes (413 beyond; Content-Length was checked before any was read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit} bytes (sent without Content-Length)", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _only_known_query(request: Request) -> None:
    """Refuse query parameters other than ``lines`` (a typo such as ``?line=true`` would pass unnoticed)."""
    unknown = sorted(set(request.query_params) - {"lines"})
    if unknown:
        found = f"query parameter {unknown[0]!r}"
        raise _ServiceError(422, "validation_error", f"{found}; expected only 'lines' (true or false)",
                            field=unknown[0], found=found, expected="only the query parameter lines")


def _too_large(found: str, limit: int) -> _ServiceError:
    expected = f"at most {limit} bytes (the server's --max-body-mb)"
    return _ServiceError(413, "body_too_large", f"request body: {found}; expected {expected}", field="body",
                         found=found, expected=expected)


def _content_type(request: Any) -> tuple[str, dict[str, str]]:
    raw = request.headers.get("content-type", "")
    main, _, rest = raw.partition(";")
    options = {}
    for part in rest.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            options[key.lower()] = value.strip().strip('"')
    return main.strip().lower(), options


def _unsupported(ctype: str, expected: str) -> _ServiceError:
    found = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
    return _ServiceError(415, "unsupported_media_type", f"{found}; expected {expected}", field="Content-Type",
                         found=found, expected=expected)


def _json_spectrum(body: bytes) -> tuple[SpectrumBatch, dict[str, np.ndarray], dict[str, Any]]:
    spectra, arrays = _read_json(body, batch=False)
    batch, params = _spectra(spectra, arrays)
    return batch, params, {}


def _json_batch(body: bytes, max_batch: int) -> tuple[SpectrumBatch, dict[str, np.ndarray]]:
    spectra, arrays = _read_json(body, batch=True)
    if len(spectra) > max_batch:
        found, expected = f"{len(spectra)} spectra", f"at most {max_batch} per call (the server's --max-batch)"
        raise _ServiceError(422, "too_many_spectra", f"spectra: {found}; expected {expected}", field="spectra",
                            found=found, expected=expected)
    return _spectra(spectra, arrays)


#: A JSON spectrum's flux and ivar (float64), mask (bool or None) and bitmask (int64 or None) as arrays.
_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def _read_json(body: bytes, batch: bool) -> tuple[list[StellarParameters], list[_Arrays]]:
    """Return a JSON request's spectra (their parameters) and their arrays, as the documented models read them.

    :func:`_read_plain` reads a request that is plainly valid straight into arrays; anything else (an error, or
    what only the documented models' lax reading accepts, such as a number as a string) is validated by
    :class:`SpectrumJSON` or :class:`BatchJSON`, whose errors the client gets, all of them.
    """
    plain = _read_plain(body, batch)
    if plain is not None:
        return plain
    try:
        model = BatchJSON.model_validate_json(body) if batch else SpectrumJSON.model_validate_json(body)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False), "") from None
    spectra = model.spectra if batch else [model]
    return spectra, [_pixel_arrays(s) for s in spectra]


#: The fields of a JSON spectrum that are lists of pixels.
_PIXEL_FIELDS = ("flux", "ivar", "mask", "bitmask")


def _read_plain(body: bytes, batch: bool) -> tuple[list[StellarParameters], list[_Arrays]] | None:
    """Read a plainly valid JSON request with simdjson, its lists straight into arrays; None for anything else.

    Reading ~26,000 numbers into Python objects (pydantic's JSON reader) is a quarter of a one-spectrum request's
    time; simdjson reads them into arrays of doubles without making the objects (~2 ms less a request on
    loopback). Plainly valid: an object (for a batch, ``{"spectra": [objects]}``) of known, distinct fields whose
    pixel lists have :data:`APSTAR_NPIX` values each -- numbers in flux and ivar within :class:`SpectrumJSON`'s
    limits, true/false (or 1/0) in mask, whole numbers within its limits in bitmask, or null for the optional
    two -- and no list nested in another (the body's ``[`` are exactly the lists read). The parameters are validated by
    :class:`StellarParameters`, the same fields as :class:`SpectrumJSON`'s, in JSON. Whatever this accepts, the
    documented models accept too, with the same values; the rest goes to them.
    """
    try:
        root = simdjson.Parser().parse(body)  # a parser per call: what it returns stays valid, threads are safe
        objects = [root]
        n_lists = 0
        if batch:
            if not isinstance(root, simdjson.Object) or list(root.keys()) != ["spectra"]:
                return None
            objects = root["spectra"]
            if not isinstance(objects, simdjson.Array) or len(objects) == 0:
                return None
            n_lists = 1
        spectra, arrays = [], []
        for obj in objects:
            got = _plain_spectrum(obj)
            if got is None:
                return None
            spectra.append(got[0])
            arrays.append(got[1])
            n_lists += sum(a is not None for a in got[1])
    except (ValueError, TypeError, RuntimeError, UnicodeDecodeError, KeyError, IndexError, OverflowError):
        return None  # not JSON simdjson reads, or a value of another type than asked
    # a list nested in a list would be read flattened: only the lists read may open a bracket
    if _count_brackets(body, n_lists + 1) != n_lists:
        return None
    return spectra, arrays


def _count_brackets(body: bytes, limit: int) -> int:
    """Count the ``[`` in ``body``, up to ``limit`` (``bytes.find`` is ~20 times faster than ``bytes.count``)."""
    n, at = 0, body.find(b"[")
    while at >= 0 and n < limit:
        n += 1
        at = body.find(b"[", at + 1)
    return n


def _plain_spectrum(obj: Any) -> tuple[StellarParameters, _Arrays] | None:
    """One spectrum's object of :func:`_read_plain`: its parameters and arrays, or None if not plainly valid."""
    if not isinstance(obj, simdjson.Object):
        return None
    keys = list(obj.keys())
    if len(set(keys)) != len(keys) or not set(keys) <= _JSON_FIELDS:
        return None
    got: dict[str, np.ndarray | None] = {}
    for name in _PIXEL_FIELDS:
        value = obj[name] if name in keys else None
        if value is None:
            if name in ("flux", "ivar"):
                return None
            got[name] = None
            continue
        if not isinstance(value, simdjson.Array) or len(value) != APSTAR_NPIX:
            return None
        if name == "mask":
            # values equal to true or false: true, false and the 1, 0, 1.0, 0.0 the documented model reads as them
            items = value.as_list()
            if items.count(True) + items.count(False) != APSTAR_NPIX:
                return None
            values = np.fromiter(items, bool, APSTAR_NPIX)
        elif name == "bitmask":
            values = np.frombuffer(value.as_buffer(of_type="i"), np.int64)
        else:
            values = np.frombuffer(value.as_buffer(of_type="d"), np.float64)
        if values.shape != (APSTAR_NPIX,):
            return None
        got[name] = values
    flux, ivar, mask, bits = (got[k] for k in _PIXEL_FIELDS)
    if not _in_limits(flux, ivar, bits):
        return None
    rest = {k: obj[k] for k in keys if k not in _PIXEL_FIELDS}
    if any(isinstance(v, (simdjson.Object, simdjson.Array)) for v in rest.values()):
        return None
    try:
        params = StellarParameters.model_validate_json(json.dumps(rest))
    except ValidationError:
        return None
    return params, (flux, ivar, mask, bits)


def _in_limits(flux: np.ndarray, ivar: np.ndarray, bits: np.ndarray | None) -> bool:
    """Whether a spectrum's arrays keep :class:`SpectrumJSON`'s per-value limits (NaN does not)."""
    if not (np.all(np.abs(flux) <= _FLOAT32_MAX) and np.all((ivar >= 0) & (ivar <= _FLOAT32_MAX))):
        return False
    return bits is None or bool(np.all((bits >= 0) & (bits < 2**31)))


def _pixel_arrays(spec: SpectrumJSON) -> _Arrays:
    """Return the pixel lists of a spectrum validated by :class:`SpectrumJSON` as arrays."""
    flux = np.fromiter(spec.flux, np.float64, APSTAR_NPIX)
    ivar = np.fromiter(spec.ivar, np.float64, APSTAR_NPIX)
    mask = None if spec.mask is None else np.fromiter(spec.mask, bool, APSTAR_NPIX)
    bits = None if spec.bitmask is None else np.fromiter(spec.bitmask, np.int64, APSTAR_NPIX)
    return flux, ivar, mask, bits


def _spectra(specs: Sequence[StellarParameters],
             arrays: Sequence[_Arrays] | None = None) -> tuple[SpectrumBatch, dict[str, np.ndarray]]:
    """JSON spectra (validated) as one batch on the apStar grid, and their parameter columns.

    ``arrays``: each spectrum's flux, ivar, mask and bitmask (default: made from ``specs``, :class:`SpectrumJSON`).
    """
    n = len(specs)
    from fehkit.io import bad_bits_value

    flux = np.empty((n, APSTAR_NPIX), np.float32)
    ivar = np.empty((n, APSTAR_NPIX), np.float32)
    mask = np.zeros((n, APSTAR_NPIX), bool)
    bits = np.zeros((n, APSTAR_NPIX), np.int64)  # zeros: no bit set, the same as no bitmask
    for i, s in enumerate(specs):
        f, v, m, b = arrays[i] if arrays is not None else _pixel_arrays(s)
        flux[i], ivar[i] = f, v
        if m is not None:
            mask[i] = m
        if b is not None:
            bits[i] = b
    # a spectrum without a usable pixel is valid input: its answer is the flag no_usable_lines
    mask |= (bits & bad_bits_value()) != 0
    # the meta columns as arrays: the table is built only if something asks for it
    columns: dict[str, np.ndarray] = {"star_id": np.array([s.star_id or "star" for s in specs], dtype=object),
                                      "file": np.full(n, "json", dtype=object)}
    snr = [s.snr for s in specs]
    if any(v is not None for v in snr):
        columns["snr"] = np.array([np.nan if v is None else v for v in snr], float)
    batch = SpectrumBatch(_WAVE, flux, ivar, mask, columns, bitmask=bits)
    return batch, _params_columns(specs)


def _params_columns(rows: Sequence[StellarParameters]) -> dict[str, np.ndarray]:
    """Return the parameter columns of :func:`fehkit.training.spectra_features`, absent errors as the defaults."""
    out = {k: np.array([float(getattr(r, k)) for r in rows]) for k in ("teff", "logg", "vmic", "alpha_fe")}
    for k, default in DEFAULT_PARAM_ERRORS.items():
        given = (getattr(r, f"{k}_err") for r in rows)
        out[f"{k}_err"] = np.array([default if v is None else float(v) for v in given])
    return out


def _upload_spectrum(body: bytes, options: dict[str, str],
                     max_file: int) -> tuple[SpectrumBatch, dict[str, np.ndarray], dict[str, Any]]:
    """Parse a multipart form in memory: one file part and the parameter fields; read the file with astropy."""
    from fehkit.errors import SpectrumFileError
    from fehkit.io import read_apogee_bytes

    fields, files = _multipart(body, options)
    if len(files) != 1 or "file" not in files:
        found = f"file parts {sorted(files) or 'none'}"
        expected = "exactly one file part named 'file' (e.g. curl -F file=@apStar-....fits.gz)"
        raise _ServiceError(422, "invalid_form", f"form: {found}; expected {expected}", field="file", found=found,
                            expected=expected)
    name, data = files["file"]
    values: dict[str, Any] = dict(fields)
    values["file"] = b""  # validated apart: its bytes are read by astropy below
    try:
        form = SpectrumUpload.model_validate(values)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False), "") from None
    label = _safe_name(name)
    try:
        batch = read_apogee_bytes(data, label, kind=form.kind, max_bytes=max_file)
    except SpectrumFileError as exc:
        problem = " ".join(exc.problem.split())
        raise _ServiceError(422, "invalid_file", f"file {label}: {problem}", field="file", found=problem,
                            expected="an APOGEE apStar/asStar, aspcapStar or apVisit FITS file, plain or "
                            "gzipped") from None
    except FehkitError as exc:
        raise _ServiceError(422, "invalid_file", f"file {label}: {' '.join(str(exc).split())}",
                            field="file") from None
    meta = batch.meta
    header_id = str(meta["star_id"].iloc[0]) if "star_id" in meta and pd.notna(meta["star_id"].iloc[0]) else ""
    meta["star_id"] = form.star_id or header_id or "star"
    if form.snr is not None:
        meta["snr"] = float(form.snr)
    synthetic = bool(meta["synthetic"].iloc[0]) if "synthetic" in meta and pd.notna(meta["synthetic"].iloc[0]) \
        else False
    keep = [c for c in ("star_id", "file", "snr") if c in meta]
    batch.meta = meta[keep].reset_index(drop=True)
    if batch.bitmask is None:  # aspcapStar: none; zeros join other requests' batches without changing a thing
        batch.bitmask = np.zeros(batch.flux.shape, np.int64)
    return batch, _params_columns([form]), {"synthetic_spectrum": synthetic}


def _multipart(body: bytes, options: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Fields and files of a multipart/form-data body, parsed in memory (nothing is written to disk)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import FormParser

    boundary = options.get("boundary")
    if not boundary:
        raise _ServiceError(400, "invalid_form", "multipart/form-data without a boundary; expected Content-Type: "
                            "multipart/form-data; boundary=...", field="Content-Type",
                            found="no boundary parameter", expected="multipart/form-data; boundary=...")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    problems: list[str] = []

    def on_field(f: Any) -> None:
        name = (f.field_name or b"").decode("utf-8", "replace")
        if name in fields:
            problems.append(f"field {name!r} given twice")
        value = f.value
        fields[name] = "" if value is None else value.decode("utf-8", "replace")

    def on_file(f: Any) -> None:
        name = (f.field_name or b"").decode("utf-8", "replace")
        f.file_object.seek(0)
        if name in files:
            problems.append(f"file part {name!r} given twice")
        files[name] = ((f.file_name or b"upload").decode("utf-8", "replace"), f.file_object.read())

    # every file stays in memory: the body is already held there, within the size limit
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "UPLOAD_DIR": None, "MAX_FIELDS": 64,
              "MAX_FIELD_SIZE": 4096}
    try:
        parser = FormParser("multipart/form-data", on_field, on_file, boundary=boundary.encode("latin-1"),
                            config=config)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError, UnicodeEncodeError) as exc:
        found = " ".join(str(exc).split()) or type(exc).__name__
        raise _ServiceError(400, "invalid_form", f"multipart body: {found}; expected a multipart/form-data body "
                            "with the boundary of its Content-Type", field="body", found=found,
                            expected="a well-formed multipart/form-data body") from None
    if problems:
        raise _ServiceError(422, "invalid_form", f"form: {problems[0]}; expected each field once", field="body",
                            found=problems[0], expected="each field once")
    return fields, files


def _safe_name(name: str) -> str:
    """Return the upload's base name in safe characters: a label and a kind hint, never a path."""
    base = re.split(r"[\\/]", name)[-1]
    return re.sub(r"[^A-Za-z0-9+_.-]", "_", base)[:128] or "upload"


def _from_pydantic(errors: Sequence[dict[str, Any]], where: str) -> _ServiceError:
    """Make a 400 (not JSON) or 422 (a field) naming each problem: the field, what was found and expected."""
    details = []
    for e in errors[:MAX_DETAILS]:
        loc = [x for x in e.get("loc", ()) if x not in ("body", "query")]
        name = where
        for x in loc:
            name += f"[{x}]" if isinstance(x, int) else (f".{x}" if name else str(x))
        details.append({"field": name or None, "found": _found(e), "expected": _expected(e)})
    first = details[0]
    more = f" ({len(errors)} problems, the first shown)" if len(errors) > 1 else ""
    invalid_json = errors[0].get("type") == "json_invalid"
    where_text = first["field"] or "body"
    return _ServiceError(400 if invalid_json else 422, "invalid_json" if invalid_json else "validation_error",
                         f"{where_text}: found {first['found']}; expected {first['expected']}{more}",
                         field=first["field"], found=first["found"], expected=first["expected"], details=details)


def _found(e: dict[str, Any]) -> str:
    kind, value, ctx = e.get("type", ""), e.get("input"), e.get("ctx") or {}
    if kind == "missing":
        return "nothing"
    if kind == "json_invalid":
        return f"invalid JSON ({ctx.get('error', e.get('msg'))})"
    if kind in ("too_short", "too_long") and "actual_length" in ctx:
        return f"{ctx['actual_length']} values"
    if kind == "extra_forbidden":
        return "an unknown field"
    if isinstance(value, list | dict | bytes):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(e: dict[str, Any]) -> str:
    kind, msg, ctx = e.get("type", ""), str(e.get("msg", "")), e.get("ctx") or {}
    if kind == "missing":
        return "a value (required)"
    if kind == "json_invalid":
        return "a JSON object (see the OpenAPI schema at /openapi.json)"
    if kind in ("too_short", "too_long"):
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        n = lo if kind == "too_short" else hi
        grid = " (the apStar grid)" if n == APSTAR_NPIX else ""
        return f"{'at least' if kind == 'too_short' else 'at most'} {n} values{grid}"
    if kind == "extra_forbidden":
        return "only the fields of the schema (see /openapi.json)"
    if msg.startswith("Input should be "):
        return msg[len("Input should be "):]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg


# ---------------------------------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _rows(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Response rows from the columns of :func:`fehkit.training.prediction_columns`."""
    out = []
    for i in range(len(cols["star_id"])):
        flag = str(cols["flag"][i])
        reason = cols["flag_reason"][i]
        n_lines = _num(cols["n_lines"][i])
        out.append({
            "star_id": str(cols["star_id"][i]),
            "feh": _num(cols["feh"][i]), "feh_err": _num(cols["feh_err"][i]),
            "feh_upper": _num(cols["feh_upper"][i]), "feh_sys": _num(cols["feh_sys"][i]),
            "feh_cog": _num(cols["feh_cog"][i]),
            "members": {m: _num(cols[f"feh_{m}"][i]) for m in _MEMBERS},
            "n_lines": int(n_lines) if n_lines is not None else 0,
            "flag": flag, "flags": split_flags(flag),
            "flag_reason": "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) else str(reason),
        })
    return out


def _line_rows(ew: Any) -> list[list[dict[str, Any]]]:
    """Per star, its lines as the ``fehkit ew`` columns (NaN as null)."""
    waves = ew.lines["wave_vac"].to_numpy(float)
    flags, reasons = ew.flag, ew.reasons
    out = []
    for i in range(ew.n_spectra):
        out.append([{"line_wave": float(waves[k]), "ew_mA": _num(ew.ew_mA[i, k]),
                     "ew_err_mA": _num(ew.ew_err_mA[i, k]), "ew_upper_mA": _num(ew.ew_upper_mA[i, k]),
                     "flag": str(flags[i, k]), "reason": str(reasons[i, k])} for k in range(len(waves))])
    return out


def _text_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------------
# middleware: API key and body size before anything is read; timing and counts for /metrics
# ---------------------------------------------------------------------------------------------------------------
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Guard:
    """Refuse a request without the API key (401) or with a Content-Length above the limit (413), unread."""

    def __init__(self, app: Any, api_key: str | None, max_body: int, metrics: _Metrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            given = headers.get(API_KEY_HEADER.lower(), "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key.encode("utf-8")):
                found = "a wrong API key" if given else "no API key"
                expected = f"the server's key in the {API_KEY_HEADER} header"
                err = _ServiceError(401, "unauthorized", f"{found}; expected {expected}", field=API_KEY_HEADER,
                                    found=found, expected=expected)
                await self._refuse(err, send, {"www-authenticate": API_KEY_HEADER})
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size < 0:
                err = _ServiceError(400, "invalid_request", f"Content-Length {length!r}; expected a whole number "
                                    "of bytes", field="Content-Length", found=repr(length),
                                    expected="a whole number of bytes")
                await self._refuse(err, send)
                return
            if size > self.max_body:
                await self._refuse(_too_large(f"Content-Length {size} bytes", self.max_body), send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, err: _ServiceError, send: Send, extra: dict[str, str] | None = None) -> None:
        self.metrics.error(err.kind)
        body = json.dumps(err.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Timing:
    """Count every request by route, method and status, and time it (the outermost middleware)."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.metrics.observe(path, scope["method"], status["code"], time.perf_counter() - t0)


class _Metrics:
    """Counters and a latency histogram of this worker process, as Prometheus text (label ``worker``: the pid)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # per route: bucket counts, then sum, then count
        self.errors: dict[str, int] = {}
        self.n_spectra = 0
        self.started = time.time()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (route, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for b, edge in enumerate(LATENCY_BUCKETS):
                if seconds <= edge:
                    h[b] += 1
            h[-2] += seconds
            h[-1] += 1

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def spectra(self, n: int) -> None:
        with self.lock:
            self.n_spectra += n

    def render(self, model_sha256: str) -> str:
        w = f'worker="{os.getpid()}"'
        lines = ["# HELP fehkit_requests_total HTTP requests answered, by route, method and status.",
                 "# TYPE fehkit_requests_total counter"]
        with self.lock:
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'fehkit_requests_total{{{w},route="{_label(route)}",method="{method}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP fehkit_request_duration_seconds Time from request to response, by route.",
                      "# TYPE fehkit_request_duration_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                r = _label(route)
                for edge, n in zip(LATENCY_BUCKETS, h, strict=False):
                    lines.append(f'fehkit_request_duration_seconds_bucket{{{w},route="{r}",le="{edge:g}"}} {int(n)}')
                lines.append(f'fehkit_request_duration_seconds_bucket{{{w},route="{r}",le="+Inf"}} {int(h[-1])}')
                lines.append(f'fehkit_request_duration_seconds_sum{{{w},route="{r}"}} {h[-2]:.6f}')
                lines.append(f'fehkit_request_duration_seconds_count{{{w},route="{r}"}} {int(h[-1])}')
            lines += ["# HELP fehkit_errors_total Refused or failed requests, by kind (the error field).",
                      "# TYPE fehkit_errors_total counter"]
            for kind, n in sorted(self.errors.items()):
                lines.append(f'fehkit_errors_total{{{w},kind="{_label(kind)}"}} {n}')
            lines += ["# HELP fehkit_spectra_total Spectra predicted.", "# TYPE fehkit_spectra_total counter",
                      f"fehkit_spectra_total{{{w}}} {self.n_spectra}"]
        lines += ["# HELP fehkit_model_info The model this worker serves.", "# TYPE fehkit_model_info gauge",
                  f'fehkit_model_info{{{w},model_sha256="{model_sha256}"}} 1',
                  "# HELP fehkit_process_start_time_seconds Start of this worker (Unix time).",
                  "# TYPE fehkit_process_start_time_seconds gauge",
                  f"fehkit_process_start_time_seconds{{{w}}} {self.started:.3f}"]
        return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---------------------------------------------------------------------------------------------------------------
# OpenAPI: both request bodies of /v1/feh, the batch limit, the API key
# ---------------------------------------------------------------------------------------------------------------
def _openapi_builder(app: Any, settings: ServiceSettings, with_key: bool) -> Callable[[], dict[str, Any]]:
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SpectrumJSON, SpectrumUpload, BatchJSON):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
        comps["BatchJSON"]["properties"]["spectra"]["maxItems"] = settings.max_batch

        def ref(name: str) -> dict[str, str]:
            return {"$ref": f"#/components/schemas/{name}"}

        schema["paths"]["/v1/feh"]["post"]["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref("SpectrumJSON")},
            "multipart/form-data": {"schema": ref("SpectrumUpload"), "encoding": {
                "file": {"contentType": "application/fits, application/gzip, application/octet-stream"}}},
        }}
        schema["paths"]["/v1/feh/batch"]["post"]["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref("BatchJSON")}}}
        if with_key:
            schema["components"]["securitySchemes"] = {"ApiKey": {"type": "apiKey", "in": "header",
                                                                  "name": API_KEY_HEADER}}
            for path, ops in schema["paths"].items():
                for op in ops.values():
                    op["security"] = [] if path in PUBLIC_PATHS else [{"ApiKey": []}]
        app.openapi_schema = schema
        return schema

    return build
