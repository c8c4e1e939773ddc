"""What every HTTP route shares: the JSON answer, the documented error statuses, the runtime."""

from __future__ import annotations

import math
from typing import Annotated

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from amr_client.schemas import ErrorResponse
from amr_sd.config import Settings
from amr_sd.errors import InvalidRequest
from amr_sd.runtime import Runtime

NDJSON = "application/x-ndjson"

ERROR_DOCS = {
    401: "No `Authorization: Bearer <key>` while API keys are configured",
    403: "The bearer token is not one of the configured keys, or loading weights from a folder "
         "is off (no AMR_POLICY_ROOT)",
    409: "A request with this Idempotency-Key is still in flight (retry later), or the request "
         "requires another policy version than the one in service (`policy_mismatch`)",
    413: "Over a size cap (body, groups, rollouts, tokens); the message names the cap",
    422: "A field or header is invalid; `error.field` names it",
    406: "The Accept header names no type this route produces (application/json, "
         "application/x-ndjson, application/msgpack)",
    429: "The pending-work bound is full; retry after `Retry-After` seconds",
    500: "A bug in the service",
    503: "Not ready, draining, reloading weights, or the engine failed; retry after `Retry-After` seconds",
    504: "The request's deadline passed; its engine work was aborted",
}


def errors(*statuses: int) -> dict:
    return {code: {"model": ErrorResponse, "description": ERROR_DOCS[code]} for code in statuses}


def json_response(body, status_code: int = 200, headers: dict | None = None) -> Response:
    # orjson: large advantage arrays serialise several times faster than the stdlib encoder.
    return Response(orjson.dumps(body), status_code=status_code, headers=headers,
                    media_type="application/json")


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def request_timeout(header: str | None, settings: Settings) -> float:
    """The deadline an X-Request-Timeout header asks for (absent: the default)."""
    if header is None:
        return settings.request_timeout_s
    cap = settings.max_request_timeout_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not 0 < value <= cap:  # NaN fails too
        raise InvalidRequest(f"must be a number of seconds > 0 and <= {cap:g}, got {header!r}",
                             field="X-Request-Timeout")
    return value
