"""Each guard in front of the scorer, over real HTTP to a real `amr-sd serve` process.

401/403 (API keys; /metrics behind them too here), 409/422/replay (Idempotency-Key), 413 (caps, chunked bodies too), 429 with
Retry-After (pending-work bound), 504 and client disconnects with the engine's own count of
unfinished requests back at 0, and a Redis outage in the middle of a run.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

KEY = "k-test-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
PENDING_SEQUENCES = 4
MAX_ROLLOUTS = 8
# Real engine work of a few seconds: reflections for a mixed group, greedy, no retries.
SLOW = {"max_retries": 0, "max_reflection_tokens": 64}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, launch_server):
    env = {"AMR_API_KEYS": f"{KEY},k-test-2", "AMR_MAX_PENDING_SEQUENCES": str(PENDING_SEQUENCES),
           "AMR_MAX_ROLLOUTS": str(MAX_ROLLOUTS), "AMR_METRICS_REQUIRE_KEY": "true"}
    with launch_server(tmp_path_factory.mktemp("guarded") / "server.log", env=env) as server:
        yield server


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", headers=AUTH).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def post(base_url, body, headers=None, timeout=120.0):
    return httpx.post(f"{base_url}/v1/score", json=body, headers={**AUTH, **(headers or {})},
                      timeout=timeout)


def in_background(fn):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()))
    thread.start()
    return thread, result


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def engine_idle(base_url):
    return metric(base_url, "amr_sd_engine_unfinished_requests") == 0


# --- API keys ------------------------------------------------------------------------------------


def test_without_a_key_is_401_and_a_wrong_key_403_while_probes_stay_open(guarded, example_groups):
    body = {"groups": example_groups[:1], "step": 50}
    missing = httpx.post(f"{guarded.base_url}/v1/score", json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthenticated"
    wrong = httpx.post(f"{guarded.base_url}/v1/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    assert httpx.get(f"{guarded.base_url}/v1/info").status_code == 401
    assert post(guarded.base_url, body).status_code == 200
    assert post(guarded.base_url, body, {"Authorization": "Bearer k-test-2"}).status_code == 200
    for open_path in ("/healthz", "/readyz"):
        assert httpx.get(f"{guarded.base_url}{open_path}").status_code == 200
    assert httpx.get(f"{guarded.base_url}/metrics").status_code == 401  # AMR_METRICS_REQUIRE_KEY
    assert httpx.get(f"{guarded.base_url}/metrics", headers=AUTH).status_code == 200
    assert KEY not in guarded.log_path.read_text()  # keys never reach the log


# --- size caps -----------------------------------------------------------------------------------


def test_over_the_rollout_cap_is_413_naming_the_cap(guarded, example_groups):
    answer = post(guarded.base_url, {"groups": example_groups[:3], "step": 50})  # 12 > 8
    assert answer.status_code == 413
    assert f"the cap is {MAX_ROLLOUTS}" in answer.json()["error"]["message"]


def test_a_request_larger_than_the_pending_bound_is_413(guarded, example_groups):
    answer = post(guarded.base_url, {"groups": example_groups[:2], "step": 50})  # 8 > 4
    assert answer.status_code == 413
    assert f"the pending-work cap is {PENDING_SEQUENCES}" in answer.json()["error"]["message"]


def test_a_chunked_body_over_the_byte_cap_is_413_before_it_is_read(guarded):
    def chunks():
        yield b'{"groups": ['
        for _ in range(70):
            yield b" " * 1_000_000  # 70 MB of JSON whitespace, over the 64 MiB default cap
        yield b"]}"

    answer = httpx.post(f"{guarded.base_url}/v1/score", content=chunks(),
                        headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "the cap is 67108864" in answer.json()["error"]["message"]


# --- idempotency ---------------------------------------------------------------------------------


def test_a_repeated_key_is_409_in_flight_then_replays_byte_identical_without_engine_work(
        guarded, example_groups):
    body = {"groups": example_groups[3:4], "step": 0, "config": SLOW}
    headers = {"Idempotency-Key": "replay-1"}
    thread, first = in_background(lambda: post(guarded.base_url, body, headers))
    wait_until(lambda: metric(guarded.base_url, "amr_sd_pending_sequences") > 0)
    in_flight = post(guarded.base_url, body, headers)
    assert in_flight.status_code == 409 and in_flight.json()["error"]["type"] == "conflict"
    thread.join()
    assert first["value"].status_code == 200

    scored_before = metric(guarded.base_url, "amr_sd_tokens_scored_total")
    generated_before = metric(guarded.base_url, "amr_sd_reflections_generated_total")
    replay = post(guarded.base_url, body, headers)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == first["value"].content
    assert metric(guarded.base_url, "amr_sd_tokens_scored_total") == scored_before
    assert metric(guarded.base_url, "amr_sd_reflections_generated_total") == generated_before

    reused = post(guarded.base_url, {**body, "step": 1}, headers)
    assert reused.status_code == 422 and reused.json()["error"]["field"] == "Idempotency-Key"


# --- admission -----------------------------------------------------------------------------------


def test_over_the_pending_bound_is_429_with_retry_after_before_engine_work(guarded, example_groups):
    thread, first = in_background(
        lambda: post(guarded.base_url, {"groups": example_groups[4:5], "step": 0, "config": SLOW}))
    wait_until(lambda: metric(guarded.base_url, "amr_sd_pending_sequences") == PENDING_SEQUENCES)
    rejected_before = metric(guarded.base_url, 'amr_sd_admission_rejected_total{reason="overloaded"}')
    answer = post(guarded.base_url, {"groups": example_groups[5:6], "step": 50})
    assert answer.status_code == 429 and answer.json()["error"]["type"] == "overloaded"
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    thread.join()
    assert first["value"].status_code == 200
    assert metric(guarded.base_url, 'amr_sd_admission_rejected_total{reason="overloaded"}') == \
        rejected_before + 1
    assert post(guarded.base_url, {"groups": example_groups[5:6], "step": 50}).status_code == 200


# --- deadlines and disconnects -------------------------------------------------------------------


def test_a_passed_deadline_is_504_and_the_engine_holds_no_request_of_it(guarded, example_groups):
    answer = post(guarded.base_url, {"groups": example_groups[6:7], "step": 0, "config": SLOW},
                  {"X-Request-Timeout": "0.5"})
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "deadline_exceeded"
    wait_until(lambda: engine_idle(guarded.base_url), timeout_s=5)
    assert metric(guarded.base_url, "amr_sd_pending_sequences") == 0


def test_a_bad_deadline_header_is_422_naming_it(guarded, example_groups):
    answer = post(guarded.base_url, {"groups": example_groups[:1], "step": 50},
                  {"X-Request-Timeout": "forever"})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "X-Request-Timeout"


def test_a_client_that_leaves_has_its_engine_work_aborted(guarded, example_groups):
    before = metric(guarded.base_url, "amr_sd_client_disconnects_total")
    with pytest.raises(httpx.ReadTimeout):
        post(guarded.base_url, {"groups": example_groups[7:8], "step": 0, "config": SLOW}, timeout=1.0)
    wait_until(lambda: metric(guarded.base_url, "amr_sd_client_disconnects_total") == before + 1)
    wait_until(lambda: engine_idle(guarded.base_url), timeout_s=5)
    assert metric(guarded.base_url, "amr_sd_pending_sequences") == 0


# --- Redis outage --------------------------------------------------------------------------------


def test_redis_down_mid_run_scores_uncached_then_caches_again(own_redis, tmp_path, launch_server,
                                                             example_groups):
    body = {"groups": example_groups[8:9], "step": 0, "config": SLOW}
    with launch_server(tmp_path / "server.log", "--redis-url", own_redis.url) as server:
        url = server.base_url
        first = httpx.post(f"{url}/v1/score", json=body, timeout=120).json()
        assert first["stats"]["reflections_generated"] > 0

        own_redis.kill()
        down = httpx.post(f"{url}/v1/score", json=body, timeout=120)
        assert down.status_code == 200
        assert down.json()["stats"]["reflections_cached"] == 0  # the cache is gone, scoring is not
        again = httpx.post(f"{url}/v1/score", json=body, timeout=120)
        assert again.status_code == 200
        assert metric(url, "amr_sd_cache_errors_total") >= 2
        assert server.log_path.read_text().count("redis cache unavailable") == 1  # once per outage

        own_redis.start()  # empty: it kept nothing
        httpx.post(f"{url}/v1/score", json=body, timeout=120)  # writes the cache again
        back = httpx.post(f"{url}/v1/score", json=body, timeout=120).json()
        assert back["stats"]["reflections_generated"] == 0
        assert back["stats"]["reflections_cached"] == back["stats"]["reflections_requested"] > 0
