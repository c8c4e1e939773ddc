"""The Redis idempotency store against a real redis-server: what replicas share."""

import asyncio

import pytest
import redis

from amr_sd.guards.idempotency import RedisStore, Stored
from amr_sd.errors import Conflict, InvalidRequest

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    return lambda: RedisStore(redis_url, ttl_s=60, pending_ttl_s=120)


def run(store_factory, steps):
    async def go():
        s = store_factory()
        try:
            return [await step(s) for step in steps]
        finally:
            await s.close()
    return asyncio.run(go())


def test_a_finished_key_replays_byte_for_byte_from_another_replica(store):
    body = b'{"groups": [], "x": "\\u00e9"}'
    run(store, [lambda s: s.begin("k1", "fp"), lambda s: s.finish("k1", "fp", 200, body)])
    assert run(store, [lambda s: s.begin("k1", "fp")]) == [Stored(200, body)]  # a new client


def test_a_key_in_flight_on_another_replica_is_409(store):
    run(store, [lambda s: s.begin("k2", "fp")])
    with pytest.raises(Conflict):
        run(store, [lambda s: s.begin("k2", "fp")])


def test_a_key_reused_with_another_body_is_422(store):
    run(store, [lambda s: s.begin("k3", "fp1"), lambda s: s.finish("k3", "fp1", 200, b"{}")])
    with pytest.raises(InvalidRequest) as err:
        run(store, [lambda s: s.begin("k3", "fp2")])
    assert err.value.field == "Idempotency-Key"


def test_a_released_key_runs_again(store):
    assert run(store, [lambda s: s.begin("k4", "fp"), lambda s: s.release("k4"),
                       lambda s: s.begin("k4", "fp")]) == [None, None, None]


def test_a_claim_expires_with_its_pending_ttl(store, redis_url):
    run(store, [lambda s: s.begin("k5", "fp")])
    ttl = redis.Redis.from_url(redis_url).ttl(next(iter(redis.Redis.from_url(redis_url).keys("*"))))
    assert 0 < ttl <= 120  # a crashed replica's claim does not block the key for ever


def test_redis_down_lets_the_request_run_without_replay_protection(own_redis):
    errors = []
    url = own_redis.url
    own_redis.kill()

    async def go():
        s = RedisStore(url, ttl_s=60, pending_ttl_s=120, on_error=lambda: errors.append(1))
        try:
            return await s.begin("k6", "fp"), await s.finish("k6", "fp", 200, b"{}")
        finally:
            await s.close()

    assert asyncio.run(go()) == (None, None)
    assert len(errors) == 2
