"""The guards that need the real engine, over real HTTP to a real `amr-sd serve` process: 504
and client disconnects with vLLM's own count of unfinished requests back at 0, and a Redis
outage in the middle of a run. The other guards (keys, caps, idempotency, 429) run in process:
tests/inproc/test_http_guards.py and test_envelope.py.
"""

from __future__ import annotations

import time

import httpx
import pytest
from long_work import long_scoring

pytestmark = pytest.mark.e2e

# Real reflection writing: a mixed group, greedy, no retries (the Redis outage test needs the
# writer and the cache; work that must stay in flight comes from long_work.py).
SLOW = {"max_retries": 0, "max_reflection_tokens": 64}


@pytest.fixture(scope="module")
def base_url(amr_server):
    return amr_server  # the session's shared server: these tests need only its engine


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def post(base_url, body, headers=None, timeout=120.0):
    return httpx.post(f"{base_url}/v1/score", json=body, headers=headers or {}, timeout=timeout)


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def engine_idle(base_url):
    return metric(base_url, "amr_sd_engine_unfinished_requests") == 0


# --- deadlines and disconnects -------------------------------------------------------------------


def test_a_passed_deadline_is_504_and_the_engine_holds_no_request_of_it(base_url, example_groups):
    answer = post(base_url, {"groups": long_scoring(example_groups[6:7]), "step": 0},
                  {"X-Request-Timeout": "0.5"})
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "deadline_exceeded"
    wait_until(lambda: engine_idle(base_url), timeout_s=5)
    assert metric(base_url, "amr_sd_pending_sequences") == 0


def test_a_client_that_leaves_has_its_engine_work_aborted(base_url, example_groups):
    before = metric(base_url, "amr_sd_client_disconnects_total")
    with pytest.raises(httpx.ReadTimeout):
        post(base_url, {"groups": long_scoring(example_groups[7:8]), "step": 0}, timeout=1.0)
    wait_until(lambda: metric(base_url, "amr_sd_client_disconnects_total") == before + 1)
    wait_until(lambda: engine_idle(base_url), timeout_s=5)
    assert metric(base_url, "amr_sd_pending_sequences") == 0


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
