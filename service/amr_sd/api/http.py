"""The HTTP API: parse, guard, call the scorer, return. No scoring logic lives here.

Routes: POST /v1/score, GET|POST /v1/policy, GET /v1/info, GET /healthz, GET /readyz, GET /metrics.
Errors: `{"error": {"type", "message", "field"}}` (amr_sd.errors lists every status).

A score request passes, in order: API key (401/403), draining (503), body cap (413), schema
(422), readiness (503), size caps (413), Idempotency-Key (replay, 409, 422), admission (429),
then the policy gate (503 during a long reload, 409 for another version) and the scorer, under a
deadline (504) that also ends when the client disconnects. Whatever ends a request early cancels
its scoring task, and vLLM aborts the engine requests of a cancelled task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Callable

import orjson
from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from amr_client.schemas import (ErrorResponse, PolicyStatus, PolicyUpdate, ProbeStatus, ScoreRequest,
                                ScoreResponse, ScoringConfig, StreamedEnd, StreamedError,
                                StreamedGroup)
from amr_sd.algo.reflection import TEMPLATE_VERSION
from amr_sd.api.admission import Admission
from amr_sd.api.auth import check_bearer
from amr_sd.api.body_limit import BodyLimit
from amr_sd.api.idempotency import fingerprint, make_store, scoped_key
from amr_sd.cache import make_cache
from amr_sd.config import Settings
from amr_sd.engine import create_engine
from amr_sd.errors import (AmrError, DeadlineExceeded, Draining, EngineDead, InvalidRequest,
                           NotAcceptable, Overloaded, PayloadTooLarge, ServiceNotReady, field_path)
from amr_sd import mathcheck
from amr_sd.metrics import Metrics
from amr_sd.policy import PolicyManager
from amr_sd.scorer import Scorer

log = logging.getLogger("amr_sd.http")

HEALTH_INTERVAL_S = 1.0
NDJSON = "application/x-ndjson"
_PRODUCES = ("application/json", NDJSON)
# Final answers a retry would get again are stored for replay; the rest free the key.
_REPLAYABLE_ERRORS = {400, 401, 403, 404, 413, 422}

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



def _errors(*statuses: int) -> dict:
    return {code: {"model": ErrorResponse, "description": _ERROR_DOCS[code]} for code in statuses}


_ERROR_DOCS = {
    401: "No `Authorization: Bearer <key>` while API keys are configured",
    403: "The bearer token is not one of the configured keys, or loading weights from a folder "
         "is off (no AMR_POLICY_ROOT)",
    409: "A request with this Idempotency-Key is still in flight (retry later), or the request "
         "requires another policy version than the one in service (`policy_mismatch`)",
    413: "Over a size cap (body, groups, rollouts, tokens); the message names the cap",
    422: "A field or header is invalid; `error.field` names it",
    406: "The Accept header names no type this route produces (application/json, application/x-ndjson)",
    429: "The pending-work bound is full; retry after `Retry-After` seconds",
    500: "A bug in the service",
    503: "Not ready, draining, reloading weights, or the engine failed; retry after `Retry-After` seconds",
    504: "The request's deadline passed; its engine work was aborted",
}


_STREAM_LINE = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"}
                          for m in (StreamedGroup, StreamedEnd, StreamedError)]}


def _with_stream_schemas(app: FastAPI) -> None:
    """Put the stream's line models into the OpenAPI components: only routes' own models get
    there by themselves, and the NDJSON lines are declared by reference."""
    from pydantic.json_schema import models_json_schema

    make = app.openapi

    def openapi():
        if app.openapi_schema is None:
            document = make()
            _, top = models_json_schema([(m, "serialization") for m in (StreamedGroup, StreamedEnd,
                                                                        StreamedError)],
                                        ref_template="#/components/schemas/{model}")
            schemas = document["components"]["schemas"]
            for name, schema in top.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def json_response(body, status_code: int = 200, headers: dict | None = None) -> Response:
    # orjson: large advantage arrays serialise several times faster than the stdlib encoder.
    return Response(orjson.dumps(body), status_code=status_code, headers=headers,
                    media_type="application/json")


def create_app(settings: Settings | None = None, engine_factory: Callable | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    keys = settings.keys()
    admission = Admission(settings.max_pending_sequences, settings.max_pending_tokens)
    metrics.pending_sequences.set_function(lambda: admission.pending_sequences)
    metrics.pending_tokens.set_function(lambda: admission.pending_tokens)

    def make_engine():
        if engine_factory:
            return engine_factory(settings)
        engine_settings = settings.engine_settings()
        for line in engine_settings.explain():
            log.info("%s", line)
        return create_engine(settings.engine, settings.model, engine_settings)

    async def load_engine(app: FastAPI, creating: asyncio.Future) -> None:
        """Load and warm up the engine while the port is already open (/readyz: 503 starting)."""
        try:
            engine = await asyncio.shield(creating)  # a stop mid-load still gets it, to close it
            app.state.engine = engine
            await engine.warmup()
            app.state.cache = make_cache(settings.redis_url, ttl_s=settings.cache_ttl_s,
                                         max_entries=settings.cache_max_entries,
                                         on_error=metrics.cache_errors.inc)
            app.state.store = make_store(settings.redis_url, ttl_s=settings.idempotency_ttl_s,
                                         pending_ttl_s=settings.max_request_timeout_s + 60,
                                         on_error=metrics.cache_errors.inc)
            app.state.policies = PolicyManager(
                engine, root=settings.policy_root, version=settings.policy_version,
                lora_modules=settings.lora_module_paths(), wait_s=settings.policy_wait_s)
            app.state.policies.check_modules()
            app.state.scorer = Scorer(engine, cache=app.state.cache)
            metrics.engine_unfinished.set_function(engine.unfinished_requests)
            app.state.monitor = asyncio.create_task(_watch_engine(app, engine))
            app.state.ready = True
            log.info("ready: model=%s engine=%s cache=%s", engine.model_id, settings.engine,
                     app.state.cache.name)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Same exit as a dead engine: `amr-sd serve` stops with code 3 for a restart.
            log.exception("the engine failed to start")
            app.state.engine_dead = True

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # vLLM's engine takes tens of seconds to load; a thread keeps the loop, and so the port
        # and the probes, answering meanwhile.
        creating = asyncio.ensure_future(asyncio.to_thread(make_engine))
        starting = asyncio.create_task(load_engine(app, creating))
        try:
            yield
        finally:
            app.state.ready = False
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            if app.state.monitor is not None:
                app.state.monitor.cancel()
            for closable in (app.state.store, app.state.cache):
                if closable is not None:
                    await closable.close()
            with contextlib.suppress(Exception):
                await (await creating).close()
            await asyncio.to_thread(mathcheck.close)

    app = FastAPI(title="amr-sd", version="0.1.0", lifespan=lifespan,
                  description="AMR-SD token-level credit assignment for LLM reinforcement learning.")
    app.state.metrics = metrics
    app.state.ready = False
    app.state.draining = False  # set on SIGTERM by `amr-sd serve`
    app.state.engine_dead = False
    app.state.in_flight = 0  # /v1/* requests being served, for the drain
    app.state.monitor = app.state.cache = app.state.store = None
    # Innermost: runs after the key and drain checks below, before the body is parsed.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        path = request.url.path
        route = path if path in _ROUTES else "other"
        api = path.startswith("/v1/")
        metrics.in_flight.inc()
        app.state.in_flight += api
        start = time.perf_counter()
        status = 500
        try:
            try:
                if keys and (api or (path == "/metrics" and settings.metrics_require_key)):
                    check_bearer(request.headers.get("authorization"), keys)
                if api and app.state.draining:
                    raise Draining("the service is shutting down; retry (another replica)")
                response = await call_next(request)
            except AmrError as exc:
                response = json_response(exc.to_dict(), exc.status_code, headers=exc.headers or None)
            status = response.status_code
        finally:
            metrics.in_flight.dec()
            app.state.in_flight -= api
            metrics.requests.labels(route=route, status=str(status)).inc()
            metrics.request_duration.labels(route=route).observe(time.perf_counter() - start)
        response.headers["X-Request-ID"] = request_id
        # One line per request; never bodies, keys or reflections.
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
        message = str(first["msg"]).removeprefix("Value error, ")
        if loc[:1] == ("header",):  # named as users write it: "Idempotency-Key"
            field = "-".join(part.capitalize() for part in str(loc[1]).split("-"))
        else:
            field = field_path(loc[1:] if loc[:1] == ("body",) else loc) or None
        return json_response(InvalidRequest(message, field=field).to_dict(), 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # The framework's own errors (unknown route, wrong method, an unreadable body) in the
        # same envelope as ours.
        if exc.status_code == 400:  # FastAPI could not read the body: not UTF-8, not JSON
            return json_response(InvalidRequest("body is not valid JSON (UTF-8)").to_dict(), 422)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response({"error": {"type": kind, "message": str(exc.detail)}},
                             exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error, id=%s", getattr(request.state, "request_id", "-"))
        error = AmrError("internal error; quote the X-Request-ID when reporting it")
        return json_response(error.to_dict(), 500)

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={**_errors(401, 403, 406, 409, 413, 422, 429, 500, 503, 504),
                         200: {"description": "The scored groups: one JSON document, or with "
                                              "`Accept: application/x-ndjson` one line per group "
                                              "as it completes, then an `end` (or `error`) line",
                               "content": {NDJSON: {"schema": _STREAM_LINE}}}})
    async def score(request: Request,
                    body: Annotated[ScoreRequest, Body(openapi_examples={
                        "one group": {"summary": "A group of two rollouts", "value": _EXAMPLE}})],
                    x_request_timeout: Annotated[str | None, Header(
                        description="Seconds this request may take (default and cap: see /v1/info "
                                    "limits); past it: 504 and its engine work is aborted.")] = None,
                    idempotency_key: Annotated[str | None, Header(
                        min_length=1, max_length=200, description="One key per logical request, resent on every retry: a repeat "
                                    "is answered from the first attempt, never scored twice.")] = None):
        scorer = _scorer(request)
        media = _answer_type(request.headers.get("accept"))
        timeout_s = _timeout_s(x_request_timeout, settings)
        rollouts, tokens = _check_caps(body, settings)
        key = fp = None
        store = request.app.state.store
        if idempotency_key is not None:
            key = scoped_key(idempotency_key, request.headers.get("authorization"))
            fp = fingerprint(await request.body())
            stored = await store.begin(key, fp)
            if stored is not None:
                metrics.idempotent_replays.inc()
                headers = {"Idempotent-Replayed": "true"}
                if media == NDJSON and stored.status == 200:
                    return Response(_as_ndjson(stored.body), media_type=NDJSON, headers=headers)
                return Response(stored.body, status_code=stored.status, media_type="application/json",
                                headers=headers)
        if media == NDJSON:
            try:
                job = await _start_stream(request, scorer, body, (rollouts, tokens), admission, metrics)
            except BaseException as exc:
                await _settle_key(store, key, fp, exc)
                raise
            return StreamingResponse(_stream_lines(request.app, job, timeout_s, store, key, fp, metrics),
                                     media_type=NDJSON)
        try:
            payload = await _score_admitted(request, scorer, request.app.state.policies, body,
                                            (rollouts, tokens), timeout_s, admission, metrics)
        except _ClientGone:
            await _settle_key(store, key, fp, None)
            metrics.client_disconnects.inc()
            return Response(status_code=499)  # nobody reads it; the log and metrics do
        except BaseException as exc:
            if isinstance(exc, EngineDead):  # unready now, not at the monitor's next look
                request.app.state.engine_dead, request.app.state.ready = True, False
            await _settle_key(store, key, fp, exc)
            raise
        if key is not None:
            await store.finish(key, fp, 200, payload)
        return Response(payload, media_type="application/json")

    @app.post("/v1/policy", response_model=PolicyStatus,
              responses=_errors(401, 403, 422, 500, 503, 504))
    async def set_policy(request: Request, body: PolicyUpdate,
                         x_request_timeout: Annotated[str | None, Header(
                             description="Seconds the reload may wait for requests in flight "
                                         "(default: the request timeout); past it: 504, weights "
                                         "unchanged.")] = None):
        """Load new full weights into the running engine; later requests report `version`."""
        _scorer(request)  # 503 until the engine is ready
        policies: PolicyManager = request.app.state.policies
        timeout_s = _timeout_s(x_request_timeout, settings)
        try:
            status, outcome = await policies.reload(body, timeout_s)
        except AmrError as exc:
            if isinstance(exc, EngineDead):
                request.app.state.engine_dead, request.app.state.ready = True, False
            metrics.policy_reloads.labels(outcome="failed" if exc.status_code >= 500 else "rejected").inc()
            raise
        metrics.policy_reloads.labels(outcome=outcome).inc()
        if outcome == "loaded":
            metrics.policy_reload_seconds.observe(status.reload_s)
        return json_response(status.model_dump(mode="json"))

    @app.get("/v1/policy", response_model=PolicyStatus, responses=_errors(401, 403, 503))
    async def get_policy(request: Request):
        """The full-weight version in service, and the LoRA adapters loaded."""
        _scorer(request)
        status = await request.app.state.policies.status()
        return json_response(status.model_dump(mode="json"))

    @app.get("/v1/info", responses=_errors(401, 403, 503))
    async def info(request: Request):
        scorer = _scorer(request)
        engine = scorer.engine
        return json_response({
            "model": engine.model_id, "model_path": engine.model_path,
            "policy_version": engine.policy_version, "lora_enabled": bool(engine.max_lora_rank),
            "engine": settings.engine,
            "max_model_len": engine.max_model_len, "vocab_size": engine.vocab_size,
            "engine_settings": engine.settings.describe(),
            "template_version": TEMPLATE_VERSION, "cache": request.app.state.cache.name,
            "limits": settings.limits(), "defaults": ScoringConfig().model_dump(),
        })

    @app.get("/healthz", response_model=ProbeStatus)
    async def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=ProbeStatus,
             responses={503: {"model": ProbeStatus, "description": "starting, draining or engine_dead"}})
    async def readyz(request: Request):
        state = request.app.state
        status = ("engine_dead" if state.engine_dead else "draining" if state.draining
                  else "ready" if state.ready else "starting")
        if status != "ready":
            return json_response({"status": status}, 503, headers={"Retry-After": "5"})
        return json_response({"status": "ready"})

    # Declared by hand: with a text/plain route, `model=` would document the errors as text too.
    @app.get("/metrics", response_class=PlainTextResponse, responses={
        code: {"description": _ERROR_DOCS[code], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for code in (401, 403)})
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _with_stream_schemas(app)
    return app


_ROUTES = {"/v1/score", "/v1/policy", "/v1/info", "/healthz", "/readyz", "/metrics"}


async def _watch_engine(app: FastAPI, engine) -> None:
    """Turn unready for good when the engine dies; `amr-sd serve` then exits non-zero."""
    while True:
        await asyncio.sleep(HEALTH_INTERVAL_S)
        try:
            await engine.check_health()
        except EngineDead as exc:
            log.error("engine died (%s): not ready; the process exits for a restart", exc)
            app.state.engine_dead = True
            app.state.ready = False
            return


def _scorer(request: Request) -> Scorer:
    state = request.app.state
    if state.engine_dead:
        raise EngineDead("the engine process died; this replica is restarting")
    scorer = getattr(state, "scorer", None)
    if scorer is None or not state.ready:
        raise ServiceNotReady("the engine is still starting")
    return scorer


def _timeout_s(header: str | None, settings: Settings) -> float:
    if header is None:
        return settings.request_timeout_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not 0 < value <= settings.max_request_timeout_s:  # NaN fails too
        raise InvalidRequest(f"must be a number of seconds > 0 and <= {settings.max_request_timeout_s:g}, "
                             f"got {header!r}", field="X-Request-Timeout")
    return value


async def _score_admitted(request: Request, scorer: Scorer, policies: PolicyManager,
                          body: ScoreRequest, size: tuple[int, int], timeout_s: float,
                          admission: Admission, metrics: Metrics) -> bytes:
    """Admit the request (`size`: its rollouts and response tokens), score it under its
    deadline with one policy throughout, and return the JSON answer."""
    try:
        ticket = admission.admit(*size)
    except (Overloaded, PayloadTooLarge) as exc:
        metrics.admission_rejected.labels(reason=exc.type).inc()
        raise

    async def under_one_policy():
        async with policies.serving(body.policy) as policy:
            return await scorer.score(body, policy.adapter)

    completed = False
    try:
        response = await _bounded(under_one_policy(), timeout_s, request)
        completed = True
    except DeadlineExceeded:
        metrics.deadline_exceeded.inc()
        raise
    finally:
        admission.release(ticket, completed=completed)
    metrics.observe_scoring(response.stats)
    # A 512 x 1024 answer takes ~1 s to encode: off the loop, which keeps probes answering.
    return await asyncio.to_thread(_encode, response)


def _encode(response: ScoreResponse) -> bytes:
    return orjson.dumps(response.model_dump(mode="json"))


def _answer_type(accept: str | None) -> str:
    """The media type a score answer takes, from Accept (highest q wins); 406 if none fits."""
    best, best_q = None, 0.0
    for part in (accept or "application/json").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        produced = NDJSON if media == NDJSON else \
            "application/json" if media in ("application/json", "application/*", "*/*", "") else None
        if produced is not None and q > best_q:
            best, best_q = produced, q
    if best is None:
        raise NotAcceptable(f"cannot answer {accept!r}; this route produces {', '.join(_PRODUCES)}",
                            field="Accept")
    return best


async def _settle_key(store, key: str | None, fp: str | None, exc: BaseException | None) -> None:
    """Keep a final error for replay; free the key for anything a retry could change."""
    if key is None:
        return
    if isinstance(exc, AmrError) and exc.status_code in _REPLAYABLE_ERRORS:
        await store.finish(key, fp, exc.status_code, orjson.dumps(exc.to_dict()))
    else:
        await store.release(key)


def _as_ndjson(payload: bytes) -> bytes:
    """A stored unary answer as the stream it would have been (groups in request order)."""
    response = orjson.loads(payload)
    lines = [StreamedGroup(index=g, group=group).model_dump(mode="json")
             for g, group in enumerate(response.pop("groups"))]
    lines.append({"type": "end", **response})
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


@dataclass
class _StreamJob:
    task: asyncio.Task  # the scoring, under one policy, admitted
    groups: asyncio.Queue  # (index, ScoredGroup) as each completes
    ticket: object
    admission: Admission


async def _start_stream(request: Request, scorer: Scorer, body: ScoreRequest, size: tuple[int, int],
                        admission: Admission, metrics: Metrics) -> _StreamJob:
    """Admit and enter the policy gate before the stream begins, so their errors keep their status."""
    try:
        ticket = admission.admit(*size)
    except (Overloaded, PayloadTooLarge) as exc:
        metrics.admission_rejected.labels(reason=exc.type).inc()
        raise
    groups: asyncio.Queue = asyncio.Queue()
    entered = asyncio.get_running_loop().create_future()

    async def score():
        async with request.app.state.policies.serving(body.policy) as policy:
            entered.set_result(None)
            return await scorer.score(body, policy.adapter,
                                      on_group=lambda g, group: groups.put((g, group)))

    task = asyncio.ensure_future(score())
    try:
        await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not entered.done():
            task.result()  # the gate's error (409 policy_mismatch, 503 reloading): a real status
    except BaseException:
        task.cancel()
        entered.cancel()
        admission.release(ticket, completed=False)
        raise
    return _StreamJob(task, groups, ticket, admission)


async def _stream_lines(app: FastAPI, job: _StreamJob, idle_timeout_s: float, store, key, fp,
                        metrics: Metrics):
    """NDJSON lines as groups complete. The deadline bounds the wait for each next line, so a
    long batch never has to fit one deadline as a whole. Stored for replay as the unary answer."""
    completed, failure = False, None
    app.state.in_flight += 1  # the middleware stopped counting when the stream began; the drain waits
    try:
        while True:
            getter = asyncio.ensure_future(job.groups.get())
            done, _ = await asyncio.wait({getter, job.task}, timeout=idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                g, group = getter.result()
                yield orjson.dumps(StreamedGroup(index=g, group=group).model_dump(mode="json")) + b"\n"
                continue
            getter.cancel()
            if job.task not in done:
                metrics.deadline_exceeded.inc()
                raise DeadlineExceeded(f"no group finished within {idle_timeout_s:g} s; the "
                                       "request's engine work was aborted")
            while not job.groups.empty():
                g, group = job.groups.get_nowait()
                yield orjson.dumps(StreamedGroup(index=g, group=group).model_dump(mode="json")) + b"\n"
            response = job.task.result()
            completed = True
            metrics.observe_scoring(response.stats)
            if key is not None:
                await store.finish(key, fp, 200, await asyncio.to_thread(_encode, response))
            end = response.model_dump(mode="json", exclude={"groups"})
            yield orjson.dumps({"type": "end", **end}) + b"\n"
            return
    except Exception as exc:
        if not isinstance(exc, AmrError):
            log.exception("internal error in a streamed answer")
            exc = AmrError("internal error; quote the X-Request-ID when reporting it")
        failure = exc
        if isinstance(exc, EngineDead):
            app.state.engine_dead, app.state.ready = True, False
        retry_after = exc.headers.get("Retry-After")
        line = StreamedError(status=exc.status_code, error=exc.to_dict()["error"],
                             retry_after_s=float(retry_after) if retry_after else None)
        yield orjson.dumps(line.model_dump(mode="json")) + b"\n"
    finally:
        if not job.task.done():
            job.task.cancel()  # deadline, error or client gone: vLLM aborts the engine work
            with contextlib.suppress(BaseException):
                await job.task
        job.admission.release(job.ticket, completed=completed)
        app.state.in_flight -= 1
        if not completed:
            await _settle_key(store, key, fp, failure)


async def _bounded(coro, timeout_s: float, request: Request):
    """`coro` under a deadline that also ends when the client disconnects; cancels it either way."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping this request
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    # Wait until the cancellation has reached the engine, so the work is aborted when we answer.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if gone in done:
        raise _ClientGone()
    raise DeadlineExceeded(f"the deadline of {timeout_s:g} s passed; the request's engine work "
                           "was aborted")


async def _disconnected(request: Request) -> None:
    # The body is read by now, so the next ASGI message is the disconnect, whenever it comes.
    # (Request.is_disconnected() polls with an instantly cancelled receive, which never sees it
    # through the middleware's wrapped receive.)
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


def _check_caps(body: ScoreRequest, settings: Settings) -> tuple[int, int]:
    """Refuse a request over a size cap; return its (rollouts, response tokens)."""
    rollouts = sum(len(g.rollouts) for g in body.groups)
    tokens = sum(len(r.token_ids) for g in body.groups for r in g.rollouts)
    for what, value, cap in (("groups", len(body.groups), settings.max_groups),
                             ("rollouts", rollouts, settings.max_rollouts),
                             ("response tokens", tokens, settings.max_tokens)):
        if value > cap:
            raise PayloadTooLarge(f"{value} {what} in one request; the cap is {cap}",
                                  field="groups")
    return rollouts, tokens
