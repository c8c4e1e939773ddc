"""Redis faults: with Redis down, hung, full or restarted, scoring goes on uncached.

Every test here runs its own redis-server (`own_redis` from tests/conftest.py, not the session's),
because it kills, pauses or fills it; the server comes back on the same port, as a restarted Redis pod does
behind its Service. Loopback only, no persistence; each server is stopped by its pid even when the
test fails.
"""

import asyncio
import logging
import socket
import time

import pytest

from amr_sd.cache import RedisCache, make_cache
from bench.common.procs import free_port

pytestmark = pytest.mark.integration

RECORD = {"kind": "hint", "text": "Check the sign of the last step.", "accepted": True}
@pytest.fixture
def dead_url():
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def cache_log(caplog):
    """The amr_sd.cache records, INFO and up."""
    caplog.set_level(logging.INFO, logger="amr_sd.cache")
    return lambda level: [r for r in caplog.records
                          if r.name == "amr_sd.cache" and r.levelno == level]


class ErrorCount:
    """An `on_error` callback that counts, as `metrics.cache_errors.inc` does."""

    def __init__(self):
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def run(coro_fn, cache):
    async def go():
        try:
            return await coro_fn(cache)
        finally:
            await cache.close()

    return asyncio.run(go())


# ---------------------------------------------------------------- Redis down from the start

def test_unreachable_redis_reads_miss(dead_url):
    got = run(lambda c: c.get_many(["k:a", "k:b"]), RedisCache(dead_url))
    assert got == [None, None]


def test_unreachable_redis_skips_writes(dead_url):
    assert run(lambda c: c.set_many({"k:a": RECORD}), RedisCache(dead_url)) is None


def test_unreachable_redis_answers_within_two_seconds(dead_url):
    async def go(cache):
        durations = []
        for op in (cache.get_many(["k"]), cache.set_many({"k": RECORD}), cache.get_many(["k"])):
            start = time.monotonic()
            await op
            durations.append(time.monotonic() - start)
        return durations

    assert max(run(go, RedisCache(dead_url))) < 2.0


def test_each_failed_operation_calls_on_error_once(dead_url):
    errors = ErrorCount()

    async def go(cache):
        for _ in range(3):
            await cache.get_many(["k:a", "k:b"])
        for _ in range(2):
            await cache.set_many({"k:a": RECORD, "k:b": RECORD})

    run(go, RedisCache(dead_url, on_error=errors))
    assert errors.n == 5  # 3 reads + 2 writes, whatever the number of keys


def test_an_outage_logs_one_warning(dead_url, cache_log):
    async def go(cache):
        for _ in range(3):
            await cache.get_many(["k"])
            await cache.set_many({"k": RECORD})

    run(go, RedisCache(dead_url))
    (warning,) = cache_log(logging.WARNING)
    assert warning.getMessage().startswith(f"redis cache unavailable at {dead_url}: "
                                           "ConnectionError: ")
    assert warning.getMessage().endswith("; scoring continues uncached")
    assert cache_log(logging.INFO) == []


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@127.0.0.1:{port}/0", "redis://:***@127.0.0.1:{port}/0"),
    ("redis://amr:s3cret@127.0.0.1:{port}/0", "redis://amr:***@127.0.0.1:{port}/0"),
    ("redis://127.0.0.1:{port}/0?password=s3cret", "redis://127.0.0.1:{port}/0?password=***"),
], ids=["password", "user-and-password", "query"])
def test_the_warning_hides_the_password(url, shown, cache_log):
    port = free_port()
    run(lambda c: c.get_many(["k"]), RedisCache(url.format(port=port)))
    (warning,) = cache_log(logging.WARNING)
    assert f" at {shown.format(port=port)}: " in warning.getMessage()
    assert "s3cret" not in warning.getMessage()


def test_make_cache_passes_on_error_to_redis(dead_url):
    errors = ErrorCount()
    run(lambda c: c.get_many(["k"]), make_cache(dead_url, on_error=errors))
    assert errors.n == 1


# ---------------------------------------------------------------- Redis goes away mid-run

def test_killed_redis_reads_miss_and_skips_writes(own_redis, cache_log):
    errors = ErrorCount()

    async def go(cache):
        await cache.set_many({"k": RECORD})
        before = await cache.get_many(["k"])
        own_redis.kill()
        after = await cache.get_many(["k"])
        await cache.set_many({"k2": RECORD})
        return before, after

    assert run(go, RedisCache(own_redis.url, on_error=errors)) == ([RECORD], [None])
    assert errors.n == 2
    assert len(cache_log(logging.WARNING)) == 1


def test_restarted_redis_serves_again_with_one_back_line(own_redis, cache_log):
    errors = ErrorCount()

    async def go(cache):
        await cache.set_many({"k": RECORD})
        own_redis.kill()
        await cache.get_many(["k"])
        await cache.set_many({"k": RECORD})
        own_redis.start()  # same port, empty: the old record is gone
        await cache.set_many({"k2": RECORD})
        return await cache.get_many(["k", "k2"])

    assert run(go, RedisCache(own_redis.url, on_error=errors)) == [None, RECORD]
    assert errors.n == 2  # only the two operations during the outage
    assert len(cache_log(logging.WARNING)) == 1
    (back,) = cache_log(logging.INFO)
    assert back.getMessage() == f"redis cache back at {own_redis.url}"


def test_restart_between_requests_costs_no_miss(own_redis, cache_log):
    # The pooled connection is open when redis-server dies and nothing uses it during the outage:
    # the first command on it fails, and the client's one retry reconnects.
    errors = ErrorCount()

    async def go(cache):
        await cache.set_many({"k": RECORD})
        own_redis.kill()
        own_redis.start()
        await cache.set_many({"k": RECORD})
        return await cache.get_many(["k"])

    assert run(go, RedisCache(own_redis.url, on_error=errors)) == [RECORD]
    assert errors.n == 0
    assert cache_log(logging.WARNING) == []


def test_a_new_outage_logs_a_new_warning(own_redis, cache_log):
    async def go(cache):
        for _ in range(2):
            own_redis.kill()
            await cache.get_many(["k"])
            await cache.get_many(["k"])
            own_redis.start()
            await cache.get_many(["k"])

    run(go, RedisCache(own_redis.url))
    assert len(cache_log(logging.WARNING)) == 2
    assert len(cache_log(logging.INFO)) == 2


def test_hung_redis_costs_one_socket_timeout_per_operation(own_redis):
    # A paused server accepts the connection and never answers: only socket_timeout ends the
    # wait, and a timeout is not retried (a retry would double the wait).
    async def go(cache):
        await cache.set_many({"k": RECORD})
        own_redis.pause()
        try:
            start = time.monotonic()
            during = await cache.get_many(["k"])
            elapsed = time.monotonic() - start
        finally:
            own_redis.resume()
        return during, elapsed, await cache.get_many(["k"])

    during, elapsed, after = run(go, RedisCache(own_redis.url, socket_timeout_s=0.4))
    assert during == [None]
    assert 0.4 <= elapsed < 0.75  # two timeouts would be 0.8
    assert after == [RECORD]


def test_unanswered_connect_costs_one_connect_timeout():
    # A listener whose accept queue is full drops new SYNs, as a firewalled or vanished host
    # does: only socket_connect_timeout ends the wait (socket_timeout is far longer here).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for s in fillers:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            cache = RedisCache(f"redis://127.0.0.1:{port}/0", socket_connect_timeout_s=0.4,
                               socket_timeout_s=5.0)
            start = time.monotonic()
            got = run(lambda c: c.get_many(["k"]), cache)
            elapsed = time.monotonic() - start
        finally:
            for s in fillers:
                s.close()
    assert got == [None]
    assert 0.4 <= elapsed < 0.75  # two timeouts would be 0.8


# ---------------------------------------------------------------- Redis refuses a command

def test_full_redis_skips_writes_and_keeps_reading(own_redis, cache_log):
    # maxmemory with noeviction: Redis answers reads but refuses every write with OOM.
    errors = ErrorCount()
    key = "amr-sd:reflection:0123abcd"

    own_redis.kill()
    own_redis.start("--maxmemory", "1", "--maxmemory-policy", "noeviction")

    async def go(cache):
        await cache.set_many({key: RECORD})
        await cache.set_many({key: RECORD})
        return await cache.get_many([key])

    assert run(go, RedisCache(own_redis.url, on_error=errors)) == [None]
    assert errors.n == 2
    (warning,) = cache_log(logging.WARNING)
    assert "OutOfMemoryError: command not allowed when used memory" in warning.getMessage()
    assert key not in warning.getMessage() and RECORD["text"] not in warning.getMessage()
    assert cache_log(logging.INFO) == []  # reads work, writes do not: still one outage
