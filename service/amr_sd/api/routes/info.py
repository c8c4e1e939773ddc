"""GET /v1/info, and the probes and metrics an orchestrator reads."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from amr_client.schemas import ProbeStatus
from amr_sd.api.http_common import ERROR_DOCS, RuntimeDep, errors, json_response
from amr_sd.config import engine_report
from amr_sd.runtime import Phase

router = APIRouter()


@router.get("/v1/info", responses=errors(401, 403, 503))
async def info(runtime: RuntimeDep):
    body = runtime.info()
    # Every engine setting; GetInfo's EngineSettings message (scoring.proto) has no LoRA or
    # data_parallel_size fields.
    body["engine_settings"] = engine_report(runtime.engine.settings)
    return json_response(body)


@router.get("/healthz", response_model=ProbeStatus)
async def healthz():
    return json_response({"status": "ok"})


@router.get("/readyz", response_model=ProbeStatus,
            responses={503: {"model": ProbeStatus, "description": "starting, draining or engine_dead"}})
async def readyz(runtime: RuntimeDep):
    phase = runtime.phase
    if phase is not Phase.READY:
        return json_response({"status": phase.value}, 503, headers={"Retry-After": "5"})
    return json_response({"status": "ready"})


# Declared by hand: with a text/plain route, `model=` would document the errors as text too.
@router.get("/metrics", response_class=PlainTextResponse, responses={
    code: {"description": ERROR_DOCS[code], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for code in (401, 403)})
async def prometheus(runtime: RuntimeDep):
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
