"""The HTTP API over the runtime: FastAPI routes that parse, call the runtime and answer.

Routes (api/routes/, one module per resource): POST /v1/score, GET|POST /v1/policy, GET /v1/info,
GET /healthz, GET /readyz, GET /metrics. Errors: `{"error": {"type", "message", "field"}}`
(amr_sd.errors lists every status). Before a route runs: the API key (401/403), draining (503)
and the body cap (413); then the schema (422); the rest of a request's path is the runtime's.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from amr_sd.api.body_limit import BodyLimit
from amr_sd.api.http_common import json_response
from amr_sd.api.routes import info, policy, score
from amr_sd.errors import AmrError, InvalidRequest, field_path
from amr_sd.runtime import Runtime

log = logging.getLogger("amr_sd.http")

_ROUTES = {"/v1/score", "/v1/policy", "/v1/info", "/healthz", "/readyz", "/metrics"}


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()  # returns at once; /readyz says 503 starting until the engine is warm
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(title="amr-sd", version="0.1.0", lifespan=lifespan,
                  description="AMR-SD token-level credit assignment for LLM reinforcement learning.")
    app.state.runtime = runtime
    # Innermost: runs after the key and drain checks of `_observe`, before the body is parsed.
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_body_bytes)
    app.middleware("http")(_observe)
    app.add_exception_handler(AmrError, _amr_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    for resource in (score, policy, info):
        app.include_router(resource.router)
    _with_stream_schemas(app)
    return app


async def _observe(request: Request, call_next):
    """Key and drain checks, the request id, metrics and one log line for every request."""
    runtime: Runtime = request.app.state.runtime
    metrics = runtime.metrics
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request.state.request_id = request_id
    path = request.url.path
    route = path if path in _ROUTES else "other"
    api = path.startswith("/v1/")
    metrics.in_flight.inc()
    start = time.perf_counter()
    status = 500
    try:
        with runtime.tracking() if api else contextlib.nullcontext():
            try:
                if api or (path == "/metrics" and runtime.settings.metrics_require_key):
                    runtime.authenticate(request.headers.get("authorization"))
                if api:
                    runtime.accept()
                response = await call_next(request)
            except AmrError as exc:
                response = _error_response(exc)
            status = response.status_code
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(route=route, status=str(status)).inc()
        metrics.request_duration.labels(route=route).observe(time.perf_counter() - start)
    response.headers["X-Request-ID"] = request_id
    # One line per request; never bodies, keys or reflections.
    log.info("%s %s %d %.3fs id=%s", request.method, route, status,
             time.perf_counter() - start, request_id)
    return response


def _error_response(exc: AmrError):
    return json_response(exc.to_dict(), exc.status_code, headers=exc.headers or None)


async def _amr_error(request: Request, exc: AmrError):
    return _error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError):
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        error = first.get("ctx", {}).get("error", "")
        return json_response(InvalidRequest(f"body is not valid JSON: {error}".strip()).to_dict(), 422)
    loc = tuple(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if loc[:1] == ("header",):  # named as users write it: "Idempotency-Key"
        field = "-".join(part.capitalize() for part in str(loc[1]).split("-"))
    else:
        field = field_path(loc[1:] if loc[:1] == ("body",) else loc) or None
    return json_response(InvalidRequest(message, field=field).to_dict(), 422)


async def _http_error(request: Request, exc: HTTPException):
    # The framework's own errors (unknown route, wrong method, an unreadable body) in the
    # same envelope as ours.
    if exc.status_code == 400:  # FastAPI could not read the body: not UTF-8, not JSON
        return json_response(InvalidRequest("body is not valid JSON (UTF-8)").to_dict(), 422)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response({"error": {"type": kind, "message": str(exc.detail)}},
                         exc.status_code, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception):
    log.exception("internal error, id=%s", getattr(request.state, "request_id", "-"))
    error = AmrError("internal error; quote the X-Request-ID when reporting it")
    return json_response(error.to_dict(), 500)


def _with_stream_schemas(app: FastAPI) -> None:
    """Put the stream's line models into the OpenAPI components: only routes' own models get
    there by themselves, and the NDJSON lines are declared by reference."""
    from pydantic.json_schema import models_json_schema

    make = app.openapi
    lines = score.STREAM_LINE_MODELS

    def openapi():
        if app.openapi_schema is None:
            document = make()
            _, top = models_json_schema([(m, "serialization") for m in lines],
                                        ref_template="#/components/schemas/{model}")
            schemas = document["components"]["schemas"]
            for name, schema in top.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
