"""POST /v1/score: one JSON answer; with `Accept: application/x-ndjson` one line per group; with
`Accept: application/msgpack` one compact answer (amr_client.binary)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import Response, StreamingResponse

from amr_client.binary import MSGPACK, MSGPACK_ALIASES, encode_response
from amr_client.schemas import (ScoreRequest, ScoreResponse, StreamedEnd, StreamedError,
                                StreamedGroup)
from amr_sd.api.http_common import NDJSON, RuntimeDep, errors, request_timeout
from amr_sd.guards.idempotency import fingerprint
from amr_sd.errors import AmrError, NotAcceptable
from amr_sd.runtime import Answer, Call, CallerGone, GroupStream, encode

log = logging.getLogger("amr_sd.http")

router = APIRouter()

_PRODUCES = ("application/json", NDJSON, MSGPACK)

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

_MSGPACK_DOC = ("The ScoreResponse document as MessagePack, each per-token array of a rollout "
                "(advantages, cig, student_logprobs, teacher_logprobs) one bin of little-endian "
                "float32, `gated` one bin of uint8 0/1 per token")

STREAM_LINE_MODELS = (StreamedGroup, StreamedEnd, StreamedError)
_STREAM_LINE = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in STREAM_LINE_MODELS]}


@router.post("/v1/score", response_model=ScoreResponse,
             responses={**errors(401, 403, 406, 409, 413, 422, 429, 500, 503, 504),
                        200: {"description": "The scored groups: one JSON document, or with "
                                             "`Accept: application/x-ndjson` one line per group "
                                             "as it completes, then an `end` (or `error`) line",
                              "content": {NDJSON: {"schema": _STREAM_LINE},
                                          MSGPACK: {"schema": {
                                              "type": "string", "format": "binary",
                                              "description": _MSGPACK_DOC}}}}})
async def score(request: Request, runtime: RuntimeDep,
                body: Annotated[ScoreRequest, Body(openapi_examples={
                    "one group": {"summary": "A group of two rollouts", "value": _EXAMPLE}})],
                x_request_timeout: Annotated[str | None, Header(
                    description="Seconds this request may take (default and cap: see /v1/info "
                                "limits); past it: 504 and its engine work is aborted.")] = None,
                idempotency_key: Annotated[str | None, Header(
                    min_length=1, max_length=200, description="One key per logical request, resent on every retry: a repeat "
                                "is answered from the first attempt, never scored twice.")] = None):
    media = _answer_type(request.headers.get("accept"))
    call = Call(timeout_s=request_timeout(x_request_timeout, runtime.settings),
                idempotency_key=idempotency_key,
                fingerprint=fingerprint(await request.body()) if idempotency_key is not None else None,
                identity=request.headers.get("authorization"),
                gone=lambda: _disconnected(request))
    if media == NDJSON:
        opened = await runtime.open_stream(body, call)
        if isinstance(opened, Answer):
            return await _replay(opened, media)
        return StreamingResponse(_lines(opened), media_type=NDJSON)
    try:
        answer = await runtime.score(body, call)
    except CallerGone:
        return Response(status_code=499)  # nobody reads it; the log and metrics do
    if answer.replayed:
        return await _replay(answer, media)
    if media == MSGPACK:
        return Response(await asyncio.to_thread(_as_msgpack, answer), media_type=MSGPACK)
    payload = answer.json if answer.json is not None else await asyncio.to_thread(encode, answer.response)
    return Response(payload, media_type="application/json")


async def _replay(answer: Answer, media: str) -> Response:
    headers = {"Idempotent-Replayed": "true"}
    if media == NDJSON and answer.status == 200:
        return Response(_as_ndjson(answer.json), media_type=NDJSON, headers=headers)
    if media == MSGPACK and answer.status == 200:
        return Response(await asyncio.to_thread(_as_msgpack, answer), media_type=MSGPACK,
                        headers=headers)
    # A stored error stays the JSON envelope, whatever was asked for: errors are always JSON.
    return Response(answer.json, status_code=answer.status, media_type="application/json",
                    headers=headers)


def _as_msgpack(answer: Answer) -> bytes:
    wire = answer.response.model_dump(mode="json") if answer.response is not None \
        else orjson.loads(answer.json)
    return encode_response(wire)


def _line(model) -> bytes:
    return orjson.dumps(model.model_dump(mode="json")) + b"\n"


async def _lines(stream: GroupStream):
    """NDJSON lines as groups complete; a failure after the first line is an `error` line
    carrying the status and envelope a unary request would have got."""
    try:
        async with contextlib.aclosing(stream.items()) as items:
            async for item in items:
                if isinstance(item, ScoreResponse):
                    end = item.model_dump(mode="json", exclude={"groups"})
                    yield orjson.dumps({"type": "end", **end}) + b"\n"
                else:
                    yield _line(StreamedGroup(index=item[0], group=item[1]))
    except Exception as exc:
        if not isinstance(exc, AmrError):
            log.exception("internal error in a streamed answer")
            exc = AmrError("internal error; quote the X-Request-ID when reporting it")
        retry_after = exc.headers.get("Retry-After")
        yield _line(StreamedError(status=exc.status_code, error=exc.to_dict()["error"],
                                  retry_after_s=float(retry_after) if retry_after else None))


def _as_ndjson(payload: bytes) -> bytes:
    """A stored unary answer as the stream it would have been (groups in request order)."""
    response = orjson.loads(payload)
    lines = [StreamedGroup(index=g, group=group).model_dump(mode="json")
             for g, group in enumerate(response.pop("groups"))]
    lines.append({"type": "end", **response})
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


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
        produced = NDJSON if media == NDJSON else MSGPACK if media in MSGPACK_ALIASES else \
            "application/json" if media in ("application/json", "application/*", "*/*", "") else None
        if produced is not None and q > best_q:
            best, best_q = produced, q
    if best is None:
        raise NotAcceptable(f"cannot answer {accept!r}; this route produces {', '.join(_PRODUCES)}",
                            field="Accept")
    return best


async def _disconnected(request: Request) -> None:
    # The body is read by now, so the next ASGI message is the disconnect, whenever it comes.
    # (Request.is_disconnected() polls with an instantly cancelled receive, which never sees it
    # through the middleware's wrapped receive.)
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)
