"""The HTTP API: parse, call the scorer, return. No scoring logic lives here.

Routes: POST /v1/score, GET /v1/info, GET /healthz, GET /readyz, GET /metrics.
Errors: `{"error": {"type", "message", "field"}}` with 422 for bad fields, 413 for size caps.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Callable

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from amr_client.schemas import ScoreRequest, ScoreResponse, ScoringConfig
from amr_sd.algo.reflection import TEMPLATE_VERSION
from amr_sd.cache import make_cache
from amr_sd.config import Settings
from amr_sd.engine import create_engine
from amr_sd.errors import AmrError, InvalidRequest, PayloadTooLarge, ServiceNotReady, field_path
from amr_sd.metrics import Metrics
from amr_sd.scorer import Scorer

log = logging.getLogger("amr_sd.http")

_EXAMPLE = {
    "step": 0,
    "groups": [{
        "prompt": {"messages": [{"role": "user", "content": "State the final answer: 6 + 0 ="}]},
        "rollouts": [
            {"token_ids": [504, 3403, 2988, 314, 216, 39, 30, 2], "reward": 0.0,
             "feedback": "The final answer 7 is incorrect."},
            {"token_ids": [504, 3403, 2988, 314, 216, 38, 30, 2], "reward": 1.0},
        ],
        "reference": {"answer": "6"},
    }],
    "return": {"cig": True},
}


def json_response(body, status_code: int = 200, headers: dict | None = None) -> Response:
    # orjson: large advantage arrays serialise several times faster than the stdlib encoder.
    return Response(orjson.dumps(body), status_code=status_code, headers=headers,
                    media_type="application/json")


def create_app(settings: Settings | None = None, engine_factory: Callable | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = False
        engine = (engine_factory(settings) if engine_factory else
                  create_engine(settings.engine, settings.model, settings.engine_settings()))
        cache = make_cache(settings.redis_url, ttl_s=settings.cache_ttl_s,
                           max_entries=settings.cache_max_entries)
        try:
            await engine.warmup()
            app.state.engine, app.state.cache = engine, cache
            app.state.scorer = Scorer(engine, cache=cache)
            app.state.ready = True
            log.info("ready: model=%s engine=%s cache=%s", engine.model_id, settings.engine, cache.name)
            yield
        finally:
            app.state.ready = False
            await cache.close()
            await engine.close()

    app = FastAPI(title="amr-sd", version="0.1.0", lifespan=lifespan,
                  description="AMR-SD token-level credit assignment for LLM reinforcement learning.")
    app.state.metrics = metrics
    app.state.ready = False

    @app.middleware("http")
    async def observe(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        route = request.url.path if request.url.path in _ROUTES else "other"
        metrics.in_flight.inc()
        start = time.perf_counter()
        status = 500
        try:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
                # Refuse before reading the body: a flood of huge bodies must not fill memory.
                exc = PayloadTooLarge(f"body of {length} bytes; the cap is {settings.max_body_bytes}")
                response = json_response(exc.to_dict(), exc.status_code)
            else:
                response = await call_next(request)
            status = response.status_code
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(route=route, status=str(status)).inc()
            metrics.request_duration.labels(route=route).observe(time.perf_counter() - start)
        response.headers["X-Request-ID"] = request_id
        log.info("%s %s %d %.3fs id=%s", request.method, route, status,
                 time.perf_counter() - start, request_id)
        return response

    @app.exception_handler(AmrError)
    async def amr_error(request: Request, exc: AmrError):
        return json_response(exc.to_dict(), exc.status_code, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            error = first.get("ctx", {}).get("error", "")
            return json_response(InvalidRequest(f"body is not valid JSON: {error}".strip()).to_dict(), 422)
        loc = tuple(first["loc"])
        loc = loc[1:] if loc and loc[0] == "body" else loc
        message = str(first["msg"]).removeprefix("Value error, ")
        return json_response(InvalidRequest(message, field=field_path(loc) or None).to_dict(), 422)

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={413: {"description": "Over a size cap"},
                         422: {"description": "A field is invalid; `error.field` names it"},
                         503: {"description": "Not ready or the engine failed"}})
    async def score(request: Request,
                    body: Annotated[ScoreRequest, Body(openapi_examples={
                        "one group": {"summary": "A group of two rollouts", "value": _EXAMPLE}})]):
        _check_caps(body, settings)
        scorer = _scorer(request)
        response = await scorer.score(body)
        metrics.observe_scoring(response.stats)
        return json_response(response.model_dump(mode="json"))

    @app.get("/v1/info")
    async def info(request: Request):
        scorer = _scorer(request)
        engine = scorer.engine
        return json_response({
            "model": engine.model_id, "model_path": engine.model_path,
            "policy_version": engine.policy_version, "engine": settings.engine,
            "max_model_len": engine.max_model_len, "vocab_size": engine.vocab_size,
            "template_version": TEMPLATE_VERSION, "cache": request.app.state.cache.name,
            "limits": settings.limits(), "defaults": ScoringConfig().model_dump(),
        })

    @app.get("/healthz")
    async def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request):
        if not request.app.state.ready:
            return json_response({"status": "starting"}, 503, headers={"Retry-After": "5"})
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


_ROUTES = {"/v1/score", "/v1/info", "/healthz", "/readyz", "/metrics"}


def _scorer(request: Request) -> Scorer:
    scorer = getattr(request.app.state, "scorer", None)
    if scorer is None or not request.app.state.ready:
        raise ServiceNotReady("the engine is still starting")
    return scorer


def _check_caps(body: ScoreRequest, settings: Settings) -> None:
    rollouts = sum(len(g.rollouts) for g in body.groups)
    tokens = sum(len(r.token_ids) for g in body.groups for r in g.rollouts)
    for what, value, cap in (("groups", len(body.groups), settings.max_groups),
                             ("rollouts", rollouts, settings.max_rollouts),
                             ("response tokens", tokens, settings.max_tokens)):
        if value > cap:
            raise PayloadTooLarge(f"{value} {what} in one request; the cap is {cap}",
                                  field="groups")
