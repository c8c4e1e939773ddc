"""The reflection cache: a real redis-server (tests/conftest.py) and the in-process LRU."""

import asyncio
import hashlib
import json

import pytest
import redis

from amr_client.schemas import ReflectionRecord
from amr_sd.cache import MemoryCache, RedisCache, make_cache, reflection_key

pytestmark = pytest.mark.integration

RECORDS = {
    "k:hint": ReflectionRecord(kind="hint", text="Check the sign of the last step.", accepted=True,
                               attempts=1).model_dump(),
    "k:critique": ReflectionRecord(kind="critique", text="You added instead of multiplying.",
                                   accepted=True, attempts=2,
                                   reject_reasons=["answer_leak"]).model_dump(),
    "k:rejected": ReflectionRecord(kind="hint", text="The answer is 42.", accepted=False,
                                   reject_reason="answer_leak", reject_reasons=["answer_leak"],
                                   attempts=1).model_dump(),
}

PARTS = dict(
    model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    policy_version="step-10",
    template_version="v1",
    kind="hint",
    writer_prompt_ids=[1, 504, 2681, 2],
    generation={"max_tokens": 48, "temperature": 0.0, "retry_temperature": 0.7, "max_retries": 1},
    leak_filter={"ngram_overlap": 8},
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def empty_redis(redis_url):
    """The session's server, emptied: each test sees only its own records."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture(params=["redis", "memory"])
def new_cache(request):
    """A factory for a fresh cache of either kind (Redis: an empty database)."""
    if request.param == "redis":
        url = request.getfixturevalue("empty_redis")
        return lambda **kw: RedisCache(url, **kw)
    return lambda **kw: MemoryCache(**kw)


async def _round_trip(cache, items, keys):
    try:
        await cache.set_many(items)
        return await cache.get_many(keys)
    finally:
        await cache.close()


# ---------------------------------------------------------------- both kinds

def test_records_round_trip_in_the_order_asked(new_cache):
    keys = ["k:rejected", "k:hint", "k:critique"]
    got = asyncio.run(_round_trip(new_cache(), RECORDS, keys))
    assert got == [RECORDS[k] for k in keys]
    assert ReflectionRecord.model_validate(got[2]).reject_reasons == ["answer_leak"]


def test_missing_keys_read_as_none_in_position(new_cache):
    got = asyncio.run(_round_trip(new_cache(), {"k:hint": RECORDS["k:hint"]},
                                  ["k:absent", "k:hint", "k:other"]))
    assert got == [None, RECORDS["k:hint"], None]


def test_no_keys_read_as_empty_list(new_cache):
    assert asyncio.run(_round_trip(new_cache(), {}, [])) == []


def test_a_later_write_replaces_the_record(new_cache):
    async def go(cache):
        await cache.set_many({"k": RECORDS["k:rejected"]})
        return await _round_trip(cache, {"k": RECORDS["k:hint"]}, ["k"])

    assert asyncio.run(go(new_cache())) == [RECORDS["k:hint"]]


# ---------------------------------------------------------------- Redis

def test_redis_record_expires_after_ttl(empty_redis):
    async def go():
        cache = RedisCache(empty_redis, ttl_s=1)
        try:
            await cache.set_many({"k:hint": RECORDS["k:hint"]})
            before = await cache.get_many(["k:hint"])
            await asyncio.sleep(1.5)
            return before, await cache.get_many(["k:hint"])
        finally:
            await cache.close()

    before, after = asyncio.run(go())
    assert before == [RECORDS["k:hint"]]
    assert after == [None]


def test_redis_ttl_zero_stores_without_expiry(empty_redis):
    asyncio.run(_round_trip(RedisCache(empty_redis, ttl_s=0), {"k": RECORDS["k:hint"]}, ["k"]))
    client = redis.Redis.from_url(empty_redis)
    assert client.ttl("k") == -1  # -1: the key exists and has no expiry
    client.close()


def test_redis_stores_records_as_plain_json(empty_redis):
    # Any replica (or a person with redis-cli) can read what another wrote.
    asyncio.run(_round_trip(RedisCache(empty_redis), {"k": RECORDS["k:critique"]}, ["k"]))
    client = redis.Redis.from_url(empty_redis)
    assert json.loads(client.get("k")) == RECORDS["k:critique"]
    client.close()


def test_replicas_on_one_url_share_records(empty_redis):
    async def go():
        writer, reader = RedisCache(empty_redis), RedisCache(empty_redis)
        try:
            await writer.set_many(RECORDS)
            return await reader.get_many(list(RECORDS))
        finally:
            await writer.close()
            await reader.close()

    assert asyncio.run(go()) == list(RECORDS.values())


# ---------------------------------------------------------------- memory

def test_memory_record_expires_after_ttl():
    clock = FakeClock()
    cache = MemoryCache(ttl_s=10.0, clock=clock)

    async def go():
        await cache.set_many({"k": RECORDS["k:hint"]})  # stored at t=0, expires at t=10
        clock.now = 9.9
        before = await cache.get_many(["k"])
        clock.now = 10.0
        return before, await cache.get_many(["k"])

    assert asyncio.run(go()) == ([RECORDS["k:hint"]], [None])


def test_memory_ttl_zero_stores_without_expiry():
    clock = FakeClock()
    cache = MemoryCache(ttl_s=0, clock=clock)

    async def go():
        await cache.set_many({"k": RECORDS["k:hint"]})
        clock.now = 1e12
        return await cache.get_many(["k"])

    assert asyncio.run(go()) == [RECORDS["k:hint"]]


def test_memory_evicts_least_recently_used():
    cache = MemoryCache(max_entries=2)

    async def go():
        await cache.set_many({"a": {"v": 1}})
        await cache.set_many({"b": {"v": 2}})
        await cache.set_many({"c": {"v": 3}})  # "a" is the oldest: it goes
        return await cache.get_many(["a", "b", "c"])

    assert asyncio.run(go()) == [None, {"v": 2}, {"v": 3}]


def test_memory_read_keeps_an_entry_alive():
    cache = MemoryCache(max_entries=2)

    async def go():
        await cache.set_many({"a": {"v": 1}})
        await cache.set_many({"b": {"v": 2}})
        await cache.get_many(["a"])  # now "b" is the least recently used
        await cache.set_many({"c": {"v": 3}})
        return await cache.get_many(["a", "b", "c"])

    assert asyncio.run(go()) == [{"v": 1}, None, {"v": 3}]


def test_memory_returned_dicts_are_copies():
    cache = MemoryCache()

    async def go():
        await cache.set_many({"k": RECORDS["k:critique"]})
        (first,) = await cache.get_many(["k"])
        first["text"] = "changed"
        first["reject_reasons"].append("changed")
        return await cache.get_many(["k"])

    assert asyncio.run(go()) == [RECORDS["k:critique"]]


def test_memory_stored_dicts_are_copies():
    cache = MemoryCache()
    record = ReflectionRecord(kind="hint", text="original", accepted=True).model_dump()

    async def go():
        await cache.set_many({"k": record})
        record["text"] = "changed"
        return await cache.get_many(["k"])

    assert asyncio.run(go())[0]["text"] == "original"


def test_memory_refuses_max_entries_below_one():
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        MemoryCache(max_entries=0)


# ---------------------------------------------------------------- reflection_key

def test_key_is_prefixed_sha256_of_canonical_json():
    # Sorted keys, no spaces: the same bytes in every process and every version of the service.
    canonical = '{"kind":"hint","model_id":"m","writer_prompt_ids":[1,2]}'
    expected = "amr-sd:reflection:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert reflection_key(model_id="m", writer_prompt_ids=[1, 2], kind="hint") == expected


def test_key_is_stable_across_calls():
    assert reflection_key(**PARTS) == reflection_key(**PARTS)


def test_key_ignores_dict_key_order():
    reordered = dict(reversed(list(PARTS.items())))
    reordered["generation"] = dict(reversed(list(PARTS["generation"].items())))
    assert list(reordered) != list(PARTS)
    assert reflection_key(**reordered) == reflection_key(**PARTS)


def test_key_ignores_list_or_tuple():
    as_tuple = {**PARTS, "writer_prompt_ids": tuple(PARTS["writer_prompt_ids"])}
    assert reflection_key(**as_tuple) == reflection_key(**PARTS)


@pytest.mark.parametrize("change", [
    {"model_id": "HuggingFaceTB/SmolLM2-360M-Instruct"},
    {"policy_version": "step-11"},
    {"template_version": "v2"},
    {"kind": "critique"},
    {"writer_prompt_ids": [1, 504, 2682, 2]},
    {"generation": {**PARTS["generation"], "max_tokens": 64}},
    {"leak_filter": {"ngram_overlap": 6}},
], ids=lambda c: next(iter(c)))
def test_key_changes_when_one_part_changes(change):
    assert reflection_key(**{**PARTS, **change}) != reflection_key(**PARTS)


# ---------------------------------------------------------------- make_cache

def test_make_cache_without_url_is_memory():
    cache = make_cache(None, ttl_s=60.0, max_entries=7)
    assert isinstance(cache, MemoryCache)
    assert (cache.name, cache.ttl_s, cache.max_entries) == ("memory", 60.0, 7)


def test_make_cache_with_url_is_redis(redis_url):
    cache = make_cache(redis_url, ttl_s=60.0)
    assert isinstance(cache, RedisCache)
    assert (cache.name, cache.url, cache.ttl_s) == ("redis", redis_url, 60.0)
    asyncio.run(cache.close())
