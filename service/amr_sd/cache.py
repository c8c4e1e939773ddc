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

The same stores hold a second kind of entry, a scoring pass's log-probabilities (`score_key`,
`pack_logprobs`): a resent group at the same policy version is teacher-forced on the same tokens
by the same weights, so its passes are read back instead of recomputed. The runtime keeps them in
a store of their own with a shorter lifetime (`score_cache_ttl_s`), since they are larger and a
new policy version makes them useless.

    ReflectionCache   the protocol the scorer calls: get_many, set_many, close
    ├── MemoryCache   in-process LRU with TTL
    └── RedisCache    redis.asyncio, shared by replicas

A cache is an optimisation, never a dependency: when Redis is down, hung, full or goes away
mid-run, `RedisCache` reads miss and writes are skipped, so scoring continues uncached (only
slower). Each failed operation calls `on_error` (the runtime counts `amr_sd_cache_errors_total`);
one warning is logged when an outage starts and one info line when Redis answers again. Short
socket timeouts bound what a dead or hung Redis costs a request, and the client reconnects by
itself once Redis is back.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import orjson
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

KEY_PREFIX = "amr-sd:reflection:"
# Teacher-forced log-probabilities of one scoring pass (see `score_key`).
SCORE_KEY_PREFIX = "amr-sd:scores:"

log = logging.getLogger("amr_sd.cache")

# What a failed Redis operation raises: redis-py's own errors (connection, timeout, a refused
# command such as OOM or NOAUTH) and socket errors that reach us unwrapped.
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


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


def score_context(**parts) -> bytes:
    """What a scoring pass's log-probabilities depend on besides its tokens: the weights
    (model, policy version, adapter) and how the engine computes (its class and dtype)."""
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def score_key(context: bytes, sequence: Sequence[int], start: int) -> str:
    """`SCORE_KEY_PREFIX` + sha256 of the context, the first scored position and the token ids.

    The ids are hashed as int64 bytes, not as JSON text: a 2,000-token sequence costs
    microseconds, and the same ids always give the same bytes.
    """
    digest = hashlib.sha256(context)
    digest.update(b"\0" + int(start).to_bytes(8, "little", signed=True))
    digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
    return SCORE_KEY_PREFIX + digest.hexdigest()


def pack_logprobs(values: np.ndarray) -> dict:
    """float64 log-probabilities as a cache value (base64 of the raw bytes: exact, and a third
    of the size of JSON numbers)."""
    return {"f8": base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()}


def unpack_logprobs(value: dict, length: int) -> np.ndarray | None:
    """The array `pack_logprobs` stored, or None when the value is not one of `length` floats
    (an entry written by another version, or damaged): the pass is then scored again."""
    try:
        raw = base64.b64decode(value["f8"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    if len(raw) != 8 * length:
        return None
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


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
    """Records as orjson values under their keys; one MGET per read, one pipeline per write.

    Never raises a Redis error: a failed read returns all None (a miss), a failed write is
    skipped, and either calls `on_error()` once. An outage (from the first failed operation until
    every kind of operation that failed, read or write, has succeeded again) logs one warning at
    its start and one info line at its end.
    """

    name = "redis"

    def __init__(self, url: str, ttl_s: float = 86400.0,
                 on_error: Callable[[], None] | None = None,
                 socket_connect_timeout_s: float = 1.0, socket_timeout_s: float = 1.0):
        self.url = url
        self.ttl_s = ttl_s
        self._on_error = on_error
        self._log_url = _without_password(url)
        self._failing: set[str] = set()  # "get" and/or "set" while Redis is failing them
        # No connection is made until the first command. from_url's default is no retry, so the
        # first command on a pooled connection that died with a restarted Redis fails: one
        # immediate retry on a connection error reconnects, and a restart costs no miss. Timeouts
        # are not retried: a hung Redis costs one socket timeout per operation, not several.
        self._client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=socket_connect_timeout_s,
            socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), retries=1,
                        supported_errors=(redis.exceptions.ConnectionError,)))

    async def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        if not keys:
            return []  # MGET with no keys is an error in Redis
        try:
            values = await self._client.mget(keys)
        except REDIS_ERRORS as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._succeeded("get")
        return [None if v is None else orjson.loads(v) for v in values]

    async def set_many(self, items: Mapping[str, dict]) -> None:
        if not items:
            return
        # EX takes whole seconds; rounding up never expires a record before ttl_s.
        ex = math.ceil(self.ttl_s) if self.ttl_s > 0 else None
        try:
            # No MULTI/EXEC: each SET stands alone, and a transaction would only add a round trip.
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, orjson.dumps(value), ex=ex)
                # raise_on_error=False: a raised pipeline error carries the command (key and
                # value) in its message, which must not reach the log; the bare reply does not.
                replies = await pipe.execute(raise_on_error=False)
            refused = next((r for r in replies if isinstance(r, Exception)), None)
            if refused is not None:
                raise refused
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return
        self._succeeded("set")

    async def close(self) -> None:
        await self._client.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error()
        if not self._failing:
            log.warning("redis cache unavailable at %s: %s: %s; scoring continues uncached",
                        self._log_url, type(exc).__name__, exc)
        self._failing.add(operation)

    def _succeeded(self, operation: str) -> None:
        # An outage ends when what failed works again: a Redis that is full (OOM refuses SET,
        # MGET still answers) stays one outage instead of a warning and a recovery per request.
        if operation in self._failing:
            self._failing.discard(operation)
            if not self._failing:
                log.info("redis cache back at %s", self._log_url)


def _without_password(url: str) -> str:
    """`url` for a log line: a password in the user part or the query becomes `***`."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and not any(k == "password" for k, _ in query):
        return url  # unchanged, not re-encoded (urlunsplit would turn unix:///p into unix:/p)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query_text = urllib.parse.urlencode(
        [(k, "***" if k == "password" else v) for k, v in query], safe="*")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query_text))


def make_cache(redis_url: str | None, ttl_s: float = 86400.0, max_entries: int = 100_000,
               on_error: Callable[[], None] | None = None) -> ReflectionCache:
    """Redis when a URL is configured (replicas share it), else an in-process LRU.

    `on_error` is called once per failed Redis operation (the in-process LRU cannot fail).
    """
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s, on_error=on_error)
    return MemoryCache(max_entries=max_entries, ttl_s=ttl_s)
