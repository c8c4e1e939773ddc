"""Every error status and field path, idempotency, deadlines, start-up and drain, over HTTP and
gRPC alike (parametrised), in process over the stand-in engine."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import Outcome, body, grpc_outcome, to_proto
from amr_client.grpc_codec import to_dict
from amr_client.schemas import ScoreResponse


async def over_http(svc, request: dict, *, key: str | None = None, api_key: str | None = None,
                    timeout_s: float | None = None) -> Outcome:
    headers = {}
    if key:
        headers["Idempotency-Key"] = key
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if timeout_s:
        headers["X-Request-Timeout"] = str(timeout_s)
    r = await svc.http.post("/v1/score", json=request, headers=headers)
    data = r.json()
    if r.status_code != 200:
        error = data["error"]
        ra = r.headers.get("retry-after")
        return Outcome(r.status_code, error["type"], error.get("field"), float(ra) if ra else None)
    return Outcome(200, answer=data, replayed=r.headers.get("idempotent-replayed") == "true")


async def over_grpc(svc, request: dict, *, key: str | None = None, api_key: str | None = None,
                    timeout_s: float | None = None) -> Outcome:
    metadata = []
    if key:
        metadata.append(("idempotency-key", key))
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    try:
        answer = await svc.stub.Score(to_proto(request), metadata=metadata, timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        return grpc_outcome(err)
    return Outcome(200, answer=to_dict(answer))


TRANSPORTS = {"http": over_http, "grpc": over_grpc}


@pytest.fixture(params=sorted(TRANSPORTS))
def send(request):
    return TRANSPORTS[request.param]


def test_both_transports_give_the_same_advantages(service, tokenizer):
    async def main():
        async with service() as svc:
            request = body(tokenizer, groups=2, **{"return": {"cig": True}})
            over = [await over_http(svc, request), await over_grpc(svc, request)]
            assert [o.status for o in over] == [200, 200]
            h, g = (ScoreResponse.model_validate(o.answer) for o in over)
            assert len(h.groups) == len(g.groups) == 2
            for gh, gg in zip(h.groups, g.groups):
                for rh, rg in zip(gh.rollouts, gg.rollouts):
                    assert np.array_equal(np.float32(rh.advantages), np.float32(rg.advantages))
                    assert np.array_equal(np.float32(rh.cig), np.float32(rg.cig))
                    assert rh.gated == rg.gated and rh.base_advantage == rg.base_advantage
                    # The second request found the first one's reflections in the cache.
                    assert rh.reflection.model_copy(update={"cached": True}) == rg.reflection
            # ... and its scoring passes in the score cache: nothing reached the engine.
            assert h.stats.tokens_scored > 0 and h.stats.scores_cached == 0
            assert g.stats.tokens_scored == 0 and g.stats.scores_cached == 8  # 2 x 2 rollouts x 2
    asyncio.run(main())


@pytest.mark.parametrize("mutate, field, message", [
    (lambda b: b["groups"][0]["rollouts"][0]["token_ids"].__setitem__(2, -1),
     "groups[0].rollouts[0].token_ids[2]", "greater than or equal to 0"),
    (lambda b: b["groups"][0]["rollouts"][1].pop("reward"), "groups[0].rollouts[1].reward", "required"),
    (lambda b: b.update(config={"kappa": 0.0}), "config.kappa", "greater than 0"),
    (lambda b: b.update(config={"schedule": "sawtooth"}), "config.schedule", "linear"),
    (lambda b: b["groups"][0]["prompt"].update(text="x"), "groups[0].prompt", "exactly one"),
])
def test_an_invalid_field_is_named_with_the_same_path(service, tokenizer, send, mutate, field, message):
    async def main():
        async with service() as svc:
            request = body(tokenizer)
            mutate(request)
            out = await send(svc, request)
            assert (out.status, out.type, out.field) == (422, "invalid_request", field)
            assert svc.engine.generate_calls == svc.engine.score_calls == 0
    asyncio.run(main())


def test_over_a_size_cap_is_413_before_any_engine_work(service, tokenizer, send):
    async def main():
        async with service(max_groups=1) as svc:
            out = await send(svc, body(tokenizer, groups=2))
            assert (out.status, out.type, out.field) == (413, "payload_too_large", "groups")
            assert svc.engine.score_calls == 0
    asyncio.run(main())


def test_no_key_is_401_and_a_wrong_key_403(service, tokenizer, send):
    async def main():
        async with service(api_keys="right") as svc:
            assert (await send(svc, body(tokenizer))).status == 401
            assert (await send(svc, body(tokenizer), api_key="wrong")).status == 403
            assert (await send(svc, body(tokenizer), api_key="right")).status == 200
    asyncio.run(main())


def test_a_repeated_key_is_replayed_without_engine_work(service, tokenizer, send):
    async def main():
        async with service() as svc:
            first = await send(svc, body(tokenizer), key="k-1")
            calls = (svc.engine.generate_calls, svc.engine.score_calls)
            again = await send(svc, body(tokenizer), key="k-1")
            assert (svc.engine.generate_calls, svc.engine.score_calls) == calls
            assert again.answer == first.answer
            other = await send(svc, body(tokenizer, step=3), key="k-1")
            assert (other.status, other.field) == (422, "Idempotency-Key")
    asyncio.run(main())


def test_a_key_still_in_flight_is_409_and_retryable(service, tokenizer, send):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 1.0
            first = asyncio.ensure_future(send(svc, body(tokenizer), key="k-2"))
            await asyncio.sleep(0.3)
            second = await send(svc, body(tokenizer), key="k-2")
            assert (second.status, second.type) == (409, "conflict") and second.retry_after == 5
            assert (await first).status == 200
    asyncio.run(main())


def test_a_passed_deadline_is_504_and_the_engine_work_is_aborted(service, tokenizer, send):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 30.0
            out = await send(svc, body(tokenizer), timeout_s=0.5)
            assert (out.status, out.type) == (504, "deadline_exceeded")
            assert svc.engine.unfinished_requests() == 0
    asyncio.run(main())


def test_over_the_pending_bound_is_429_with_a_retry_delay(service, tokenizer, send):
    async def main():
        async with service(max_pending_sequences=3) as svc:
            svc.engine.delay_s = 1.0
            first = asyncio.ensure_future(send(svc, body(tokenizer)))
            await asyncio.sleep(0.3)
            out = await send(svc, body(tokenizer))
            assert (out.status, out.type) == (429, "overloaded") and out.retry_after >= 1
            assert (await first).status == 200
    asyncio.run(main())


def test_another_policy_version_is_409_policy_mismatch(service, tokenizer, send):
    async def main():
        async with service() as svc:
            out = await send(svc, body(tokenizer, policy={"version": "step-9"}))
            assert (out.status, out.type, out.field) == (409, "policy_mismatch", "policy.version")
    asyncio.run(main())


async def health(svc) -> int:
    stub = health_pb2_grpc.HealthStub(svc.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service="amr_sd.v1.Scoring"))).status


def test_while_starting_requests_are_503_and_health_not_serving(service, tokenizer, send):
    async def main():
        async with service(ready=False) as svc:
            await asyncio.sleep(0.1)  # the health mirror runs on the next loop turns
            assert await health(svc) == health_pb2.HealthCheckResponse.NOT_SERVING
            out = await send(svc, body(tokenizer))
            assert (out.status, out.type, out.retry_after) == (503, "not_ready", 5)
            svc.engine.warm.set()
            await svc.wait_ready()
            await asyncio.sleep(0.1)
            assert await health(svc) == health_pb2.HealthCheckResponse.SERVING
            assert (await send(svc, body(tokenizer))).status == 200
    asyncio.run(main())


def test_a_drain_refuses_new_work_and_its_timeout_answers_what_still_runs_503(service, tokenizer, send):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 30.0
            running = asyncio.ensure_future(send(svc, body(tokenizer)))
            await asyncio.sleep(0.3)
            svc.runtime.begin_drain()
            await asyncio.sleep(0.1)
            assert await health(svc) == health_pb2.HealthCheckResponse.NOT_SERVING
            refused = await send(svc, body(tokenizer))
            assert (refused.status, refused.type) == (503, "draining")
            assert not running.done()
            svc.runtime.stop_in_flight()  # the drain timeout ends
            out = await asyncio.wait_for(running, 5)
            assert (out.status, out.type, out.retry_after) == (503, "draining", 5)
            assert svc.engine.unfinished_requests() == 0
            async with asyncio.timeout(2):  # the handler counts itself out just after answering
                while svc.runtime.in_flight:
                    await asyncio.sleep(0.01)
    asyncio.run(main())


def test_a_stream_gives_every_group_once_then_the_end_over_both(service, tokenizer):
    async def main():
        async with service() as svc:
            request = body(tokenizer, groups=3)
            lines = []
            async with svc.http.stream("POST", "/v1/score", json=request,
                                       headers={"Accept": "application/x-ndjson"}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        lines.append(json.loads(line))
            assert sorted(x["index"] for x in lines[:-1]) == [0, 1, 2] and lines[-1]["type"] == "end"
            messages = [m async for m in svc.stub.ScoreStream(to_proto(request))]
            assert sorted(m.group.index for m in messages[:-1]) == [0, 1, 2]
            assert messages[-1].WhichOneof("kind") == "end"
            assert messages[-1].end.stats.groups == lines[-1]["stats"]["groups"] == 3
            for m in messages[:-1]:
                http_group = next(x["group"] for x in lines[:-1] if x["index"] == m.group.index)
                for rh, rg in zip(http_group["rollouts"], m.group.group.rollouts):
                    assert np.array_equal(np.float32(rh["advantages"]), np.float32(rg.advantages))
    asyncio.run(main())


def test_a_cancelled_grpc_stream_aborts_its_engine_work(service, tokenizer):
    async def main():
        async with service() as svc:
            svc.engine.delay_s = 30.0
            call = svc.stub.ScoreStream(to_proto(body(tokenizer)))
            await asyncio.sleep(0.5)
            assert svc.engine.unfinished_requests() > 0
            call.cancel()
            async with asyncio.timeout(5):
                while svc.engine.unfinished_requests() or svc.runtime.in_flight:
                    await asyncio.sleep(0.02)
            assert svc.runtime.admission.pending_sequences == 0
    asyncio.run(main())


def test_the_request_id_is_echoed_over_both(service, tokenizer):
    async def main():
        async with service() as svc:
            r = await svc.http.post("/v1/score", json=body(tokenizer, step=50), headers={"X-Request-ID": "rid-7"})
            assert r.headers["x-request-id"] == "rid-7"
            call = svc.stub.Score(to_proto(body(tokenizer, step=50)), metadata=(("x-request-id", "rid-8"),))
            await call
            assert ("x-request-id", "rid-8") in tuple(await call.initial_metadata())
            generated = svc.stub.Score(to_proto(body(tokenizer, step=50)))
            await generated
            assert len(dict(await generated.initial_metadata())["x-request-id"]) == 32
    asyncio.run(main())
