"""A streamed score over HTTP (NDJSON) and gRPC (ScoreStream) alike: the deadline of each next
group, the end of the drain timeout, a refusal at the policy gate and the Idempotency-Key, in
process over the stand-in engine."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import grpc
import pytest

from harness import Outcome, body, grpc_outcome, to_proto
from amr_client.grpc_codec import to_dict

NDJSON = {"Accept": "application/x-ndjson"}


@dataclass
class Streamed:
    indices: list[int] = field(default_factory=list)  # the groups, in the order they came
    end: dict | None = None
    error: Outcome | None = None  # the refusal before the stream, or the error that ended it
    replayed: bool = False


async def stream_http(svc, request: dict, *, key: str | None = None,
                      timeout_s: float | None = None) -> Streamed:
    headers = dict(NDJSON)
    if key:
        headers["Idempotency-Key"] = key
    if timeout_s:
        headers["X-Request-Timeout"] = str(timeout_s)
    out = Streamed()
    async with svc.http.stream("POST", "/v1/score", json=request, headers=headers) as r:
        out.replayed = r.headers.get("idempotent-replayed") == "true"
        if r.status_code != 200:
            error = json.loads(await r.aread())["error"]
            out.error = Outcome(r.status_code, error["type"], error.get("field"))
            return out
        async for line in r.aiter_lines():
            item = json.loads(line) if line else {}
            if item.get("type") == "error":
                error = item["error"]
                out.error = Outcome(item["status"], error["type"], error.get("field"),
                                    item["retry_after_s"])
            elif item.get("type") == "end":
                out.end = item
            elif item:
                out.indices.append(item["index"])
    return out


async def stream_grpc(svc, request: dict, *, key: str | None = None,
                      timeout_s: float | None = None) -> Streamed:
    metadata = [("idempotency-key", key)] if key else []
    out = Streamed()
    try:
        async for message in svc.stub.ScoreStream(to_proto(request), metadata=metadata,
                                                  timeout=timeout_s):
            if message.WhichOneof("kind") == "end":
                out.end = to_dict(message.end)
            else:
                out.indices.append(message.group.index)
    except grpc.aio.AioRpcError as err:
        out.error = grpc_outcome(err)
    return out


STREAMS = {"http": stream_http, "grpc": stream_grpc}


@pytest.fixture(params=sorted(STREAMS))
def stream(request):
    return STREAMS[request.param]


async def settled(svc) -> None:
    """Wait until the service has let go of every request: no engine work, nothing in flight."""
    async with asyncio.timeout(5):
        while svc.engine.unfinished_requests() or svc.runtime.in_flight:
            await asyncio.sleep(0.02)
    assert svc.runtime.admission.pending_sequences == 0


def test_no_group_within_the_deadline_ends_the_stream_504_and_aborts_the_engine_work(service, tokenizer,
                                                                                     stream):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 30.0
            out = await stream(svc, body(tokenizer), timeout_s=1.0)
            assert (out.indices, out.end) == ([], None)
            assert (out.error.status, out.error.type) == (504, "deadline_exceeded")
            await settled(svc)
    asyncio.run(main())


def test_the_end_of_the_drain_timeout_ends_a_running_stream_503_draining(service, tokenizer, stream):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 30.0
            running = asyncio.ensure_future(stream(svc, body(tokenizer)))
            await asyncio.sleep(0.3)
            svc.runtime.begin_drain()
            assert not running.done()
            svc.runtime.stop_in_flight()  # the drain timeout ends
            out = await asyncio.wait_for(running, 5)
            assert (out.error.status, out.error.type, out.error.retry_after) == (503, "draining", 5)
            await settled(svc)
    asyncio.run(main())


def test_a_stream_refused_at_the_policy_gate_frees_its_room_and_its_key(service, tokenizer, stream):
    async def main():
        async with service() as svc:
            request = body(tokenizer, policy={"version": "step-9"})
            for _ in range(2):  # the key was freed: the retry is refused again, not 409 conflict
                out = await stream(svc, request, key="gate-1")
                assert (out.error.status, out.error.type) == (409, "policy_mismatch")
            await settled(svc)
    asyncio.run(main())


def test_a_streamed_answer_is_replayed_for_its_key_without_engine_work(service, tokenizer, stream):
    async def main():
        async with service() as svc:
            request = body(tokenizer, groups=2)
            first = await stream(svc, request, key="stream-1")
            assert sorted(first.indices) == [0, 1] and first.error is None
            calls = (svc.engine.generate_calls, svc.engine.score_calls)
            again = await stream(svc, request, key="stream-1")
            assert again.indices == [0, 1] and again.end["stats"] == first.end["stats"]
            assert (svc.engine.generate_calls, svc.engine.score_calls) == calls
            await settled(svc)
    asyncio.run(main())
