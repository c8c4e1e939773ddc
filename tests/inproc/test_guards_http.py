"""The HTTP-only guards in front of the runtime, in process: API keys (and /metrics behind
them), the size caps' messages, a chunked body over the byte cap, the deadline header, the
Idempotency-Key's byte-identical replay and Retry-After on 429. The guards that need vLLM's own
count of aborted requests stay in tests/e2e/test_http_guards.py."""

from __future__ import annotations

import asyncio
import logging

from harness import body

KEY = "k-test-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
GUARDED = {"api_keys": f"{KEY},k-test-2", "max_pending_sequences": 4, "max_rollouts": 8,
           "metrics_require_key": True}


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics(svc, name: str) -> float:
    return metric((await svc.http.get("/metrics", headers=AUTH)).text, name)


def test_without_a_key_is_401_and_a_wrong_key_403_while_probes_stay_open(service, tokenizer, caplog):
    async def main():
        async with service(**GUARDED) as svc:
            request = body(tokenizer, step=50)
            missing = await svc.http.post("/v1/score", json=request)
            assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
            assert missing.json()["error"]["type"] == "unauthenticated"
            wrong = await svc.http.post("/v1/score", json=request, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
            assert (await svc.http.get("/v1/info")).status_code == 401
            assert (await svc.http.post("/v1/score", json=request, headers=AUTH)).status_code == 200
            other = {"Authorization": "Bearer k-test-2"}
            assert (await svc.http.post("/v1/score", json=request, headers=other)).status_code == 200
            for open_path in ("/healthz", "/readyz"):
                assert (await svc.http.get(open_path)).status_code == 200
            assert (await svc.http.get("/metrics")).status_code == 401  # metrics_require_key
            assert (await svc.http.get("/metrics", headers=AUTH)).status_code == 200
    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert caplog.records and KEY not in caplog.text  # keys never reach the log


def test_over_the_rollout_cap_is_413_naming_the_cap(service, tokenizer):
    async def main():
        async with service(**GUARDED) as svc:
            answer = await svc.http.post("/v1/score", json=body(tokenizer, groups=5, step=50), headers=AUTH)
            assert answer.status_code == 413  # 10 rollouts > 8
            assert "the cap is 8" in answer.json()["error"]["message"]
    asyncio.run(main())


def test_a_request_larger_than_the_pending_bound_is_413(service, tokenizer):
    async def main():
        async with service(**GUARDED) as svc:
            answer = await svc.http.post("/v1/score", json=body(tokenizer, groups=3, step=50), headers=AUTH)
            assert answer.status_code == 413  # 6 rollouts > the pending bound of 4
            assert "the pending-work cap is 4" in answer.json()["error"]["message"]
    asyncio.run(main())


def test_a_chunked_body_over_the_byte_cap_is_413_before_it_is_read(service):
    async def chunks():
        yield b'{"groups": ['
        for _ in range(70):
            yield b" " * 1_000_000  # 70 MB of JSON whitespace, over the 64 MiB default cap
        yield b"]}"

    async def main():
        async with service(**GUARDED) as svc:
            answer = await svc.http.post("/v1/score", content=chunks(),
                                         headers={**AUTH, "Content-Type": "application/json"})
            assert answer.status_code == 413 and "the cap is 67108864" in answer.json()["error"]["message"]
    asyncio.run(main())


def test_a_bad_deadline_header_is_422_naming_it(service, tokenizer):
    async def main():
        async with service(**GUARDED) as svc:
            answer = await svc.http.post("/v1/score", json=body(tokenizer, step=50),
                                         headers={**AUTH, "X-Request-Timeout": "forever"})
            assert answer.status_code == 422 and answer.json()["error"]["field"] == "X-Request-Timeout"
    asyncio.run(main())


def test_a_repeated_key_is_409_in_flight_then_replays_byte_identical_without_engine_work(service, tokenizer):
    async def main():
        async with service(**GUARDED) as svc:
            svc.engine.delay_s = 0.5
            headers = {**AUTH, "Idempotency-Key": "replay-1"}
            first = asyncio.ensure_future(svc.http.post("/v1/score", json=body(tokenizer), headers=headers))
            await asyncio.sleep(0.2)
            in_flight = await svc.http.post("/v1/score", json=body(tokenizer), headers=headers)
            assert in_flight.status_code == 409 and in_flight.json()["error"]["type"] == "conflict"
            first = await first
            assert first.status_code == 200
            calls = (svc.engine.generate_calls, svc.engine.score_calls)
            replay = await svc.http.post("/v1/score", json=body(tokenizer), headers=headers)
            assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
            assert replay.content == first.content
            assert (svc.engine.generate_calls, svc.engine.score_calls) == calls
            assert await metrics(svc, "amr_sd_idempotent_replays_total") == 1
    asyncio.run(main())


def test_over_the_pending_bound_is_429_with_retry_after_and_counted(service, tokenizer):
    async def main():
        async with service(**GUARDED) as svc:
            svc.engine.delay_s = 0.5
            first = asyncio.ensure_future(
                svc.http.post("/v1/score", json=body(tokenizer, groups=2), headers=AUTH))
            await asyncio.sleep(0.2)
            answer = await svc.http.post("/v1/score", json=body(tokenizer, step=50), headers=AUTH)
            assert answer.status_code == 429 and answer.json()["error"]["type"] == "overloaded"
            assert 1 <= int(answer.headers["Retry-After"]) <= 60
            assert (await first).status_code == 200
            assert await metrics(svc, 'amr_sd_admission_rejected_total{reason="overloaded"}') == 1
            assert (await svc.http.post("/v1/score", json=body(tokenizer, step=50),
                                        headers=AUTH)).status_code == 200
    asyncio.run(main())
