"""The reflection cache: reflection records stored by a key that names everything they depend on.

Why: writing reflections is the expensive generation step of a scoring request (up to
`max_retries + 1` writer generations per rollout), and trainers resend the same groups (re-scoring,
retries after a timeout, several epochs over one batch). Replicas behind one Kubernetes Service
share one Redis, so a reflection written by any replica serves them all; without a Redis URL an
in-process LRU serves one process.

The key is a hash of every input the record depends on (model, policy version, template version,
kind, the full writer prompt, generation and leak-filter settings), so a changed template, policy
or setting gives a new key and can never serve a stale reflection. Nothing is invalidated by hand;
old entries simply expire (`ttl_s`).

    ReflectionCache   the protocol the scorer calls: get_many, set_many, close
    ├── MemoryCache   in-process LRU with TTL
    └── RedisCache    redis.asyncio, shared by replicas

Redis errors propagate to the caller for now.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import orjson
import redis.asyncio

KEY_PREFIX = "amr-sd:reflection:"


class ReflectionCache(Protocol):
    name: str  # "redis" or "memory", for /v1/info and metrics

    async def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        """One value per key, in order; None where the key is missing or expired."""
        ...

    async def set_many(self, items: Mapping[str, dict]) -> None: ...

    async def close(self) -> None: ...


def reflection_key(**parts) -> str:
    """`KEY_PREFIX` + sha256 of the canonical JSON of `parts`.

    Canonical: sorted keys, no whitespace, tuples written as lists (JSON has only arrays), so the
    key depends on the values alone, never on argument order or container type. A value JSON
    cannot write raises TypeError: turning it into text some other way could give two different
    inputs one key.
    """
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


class MemoryCache:
    """In-process LRU with a TTL; a read or write makes an entry the most recently used."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 86400.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}; "
                             "to turn caching off, pass no cache to the scorer")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        # key -> (expires_at, encoded value). Stored encoded, as in Redis: every read is a fresh
        # copy, and a value that Redis could not hold fails here too.
        self._entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        now = self._clock()
        out: list[dict | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                out.append(None)
            elif entry[0] <= now:
                del self._entries[key]
                out.append(None)
            else:
                self._entries.move_to_end(key)
                out.append(orjson.loads(entry[1]))
        return out

    async def set_many(self, items: Mapping[str, dict]) -> None:
        expires_at = self._clock() + self.ttl_s if self.ttl_s > 0 else math.inf
        for key, value in items.items():
            self._entries[key] = (expires_at, orjson.dumps(value))
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Records as orjson values under their keys; one MGET per read, one pipeline per write."""

    name = "redis"

    def __init__(self, url: str, ttl_s: float = 86400.0):
        self.url = url
        self.ttl_s = ttl_s
        # No connection is made until the first command.
        self._client = redis.asyncio.Redis.from_url(url)

    async def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        if not keys:
            return []  # MGET with no keys is an error in Redis
        values = await self._client.mget(keys)
        return [None if v is None else orjson.loads(v) for v in values]

    async def set_many(self, items: Mapping[str, dict]) -> None:
        if not items:
            return
        # EX takes whole seconds; rounding up never expires a record before ttl_s.
        ex = math.ceil(self.ttl_s) if self.ttl_s > 0 else None
        # No MULTI/EXEC: each SET stands alone, and a transaction would only add a round trip.
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, orjson.dumps(value), ex=ex)
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None, ttl_s: float = 86400.0,
               max_entries: int = 100_000) -> ReflectionCache:
    """Redis when a URL is configured (replicas share it), else an in-process LRU."""
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s)
    return MemoryCache(max_entries=max_entries, ttl_s=ttl_s)
