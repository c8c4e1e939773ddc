"""Idempotency-Key: a retried request is answered once, never scored twice.

Trainer clients retry aggressively (timeouts of minutes, several tries), and a retry that arrives
while the first attempt still runs, or after its answer was lost on the wire, must not start a
second scoring of the same batch. The first attempt's answer is stored under the key for a TTL:

- same key, same body, answer stored  -> that answer again, byte for byte, no engine work
- same key, same body, still running  -> 409, retry later
- same key, another body              -> 422: the key was reused for a different request

Only final answers are stored (200 and the 4xx a retry would get again); after a 429, 5xx or
504 the key is released, so the retry runs. Keys are scoped by the caller's API key (a hash of
it), so two tenants cannot read each other's answers.

    Claim              one attempt's hold on its key: begin, then keep an answer or settle
    IdempotencyStore   begin / finish / release
    ├── MemoryStore    in-process, bounded by total bytes
    └── RedisStore     shared by replicas; a Redis outage turns idempotency off, never scoring
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio
import redis.exceptions

from amr_sd.errors import AmrError, Conflict, InvalidRequest

log = logging.getLogger("amr_sd.idempotency")

KEY_PREFIX = "amr-sd:idempotency:"
MAX_KEY_CHARS = 200
HEADER = "Idempotency-Key"
# Final answers a retry would get again are stored for replay; the rest free the key.
REPLAYABLE_STATUSES = {400, 401, 403, 404, 413, 422}


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def scoped_key(key: str, api_key: str | None) -> str:
    """The store key: the client's key within its tenant (a hash of its bearer token)."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(f"must be 1 to {MAX_KEY_CHARS} printable characters", field=HEADER)
    tenant = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return KEY_PREFIX + hashlib.sha256(f"{tenant}:{key}".encode()).hexdigest()


def _decide(entry: dict | None, fp: str) -> Stored | None:
    """What an existing entry means for a new attempt with body fingerprint `fp`."""
    if entry is None:
        return None
    if entry["fp"] != fp:
        raise InvalidRequest("this key was already used with a different request body; "
                             "use a new key for a new request", field=HEADER)
    if entry["state"] == "pending":
        raise Conflict("a request with this Idempotency-Key is still being scored; retry later",
                       headers={"Retry-After": "5"})
    return Stored(entry["status"], entry["body"])


class IdempotencyStore(Protocol):
    async def begin(self, key: str, fp: str) -> Stored | None:
        """Claim `key` for this attempt (None: go ahead), or the stored answer; 409/422 raise."""
        ...

    async def finish(self, key: str, fp: str, status: int, body: bytes) -> None: ...

    async def release(self, key: str) -> None:
        """Forget a claim whose attempt ended without a final answer."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Entries in insertion order; the oldest finished ones go first when over `max_bytes`."""

    def __init__(self, ttl_s: float, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, dict]] = collections.OrderedDict()
        self._bytes = 0

    def _get(self, key: str) -> dict | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._drop(key)
            return None
        return item[1]

    def _drop(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self._bytes -= len(entry.get("body", b""))

    async def begin(self, key: str, fp: str) -> Stored | None:
        stored = _decide(self._get(key), fp)
        if stored is None:
            self._entries[key] = (self._clock() + self.ttl_s, {"state": "pending", "fp": fp})
        return stored

    async def finish(self, key: str, fp: str, status: int, body: bytes) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + self.ttl_s,
                              {"state": "done", "fp": fp, "status": status, "body": body})
        self._bytes += len(body)
        if self._bytes > self.max_bytes:  # oldest finished answers first; claims stay
            for old in [k for k, (_, e) in self._entries.items() if e["state"] == "done"]:
                self._drop(old)
                if self._bytes <= self.max_bytes:
                    break

    async def release(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


class RedisStore:
    """One Redis key per idempotency key: a JSON header line, then the raw answer body."""

    def __init__(self, url: str, ttl_s: float, pending_ttl_s: float,
                 on_error: Callable[[], None] | None = None):
        self.ttl_s = ttl_s
        # A claim outlives the longest allowed request, so a crashed replica's claim expires.
        self.pending_ttl_s = pending_ttl_s
        self._on_error = on_error
        self._down = False  # warn once per outage, not once per request
        self._client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            log.warning("idempotency store unavailable (%s): requests run without replay "
                        "protection until Redis is back", type(exc).__name__)
        self._down = True
        if self._on_error:
            self._on_error()

    def _ok(self) -> None:
        if self._down:
            log.info("idempotency store back")
        self._down = False

    async def begin(self, key: str, fp: str) -> Stored | None:
        claim = orjson.dumps({"state": "pending", "fp": fp}) + b"\n"
        try:
            claimed = await self._client.set(key, claim, nx=True, ex=math.ceil(self.pending_ttl_s))
            raw = None if claimed else await self._client.get(key)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._ok()
        if claimed:
            return None
        if raw is None:  # expired between SET NX and GET: nobody holds it now
            return await self.begin(key, fp)
        header, _, body = raw.partition(b"\n")
        entry = orjson.loads(header)
        entry["body"] = body
        return _decide(entry, fp)

    async def finish(self, key: str, fp: str, status: int, body: bytes) -> None:
        value = orjson.dumps({"state": "done", "fp": fp, "status": status}) + b"\n" + body
        try:
            await self._client.set(key, value, ex=math.ceil(self.ttl_s))
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)

    async def release(self, key: str) -> None:
        try:
            await self._client.delete(key)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class Claim:
    """One attempt's hold on its idempotency key (`key` None: the request sent none, and every
    step is a no-op). `stored` is the answer to replay instead, if there is one; otherwise the
    attempt ends by keeping its answer (`keep`) or by `settle`, once."""
    store: IdempotencyStore | None
    key: str | None = None
    fp: str | None = None
    stored: Stored | None = None
    kept: bool = False

    @classmethod
    async def begin(cls, store: IdempotencyStore, key: str | None, identity: str | None,
                    fp: str | None) -> Claim:
        """Claim `key` (scoped by `identity`) for a request of fingerprint `fp`; 409/422 raise."""
        if key is None:
            return cls(store, None, fp)
        claim = cls(store, scoped_key(key, identity), fp)
        claim.stored = await store.begin(claim.key, fp)
        claim.kept = claim.stored is not None  # a replay settles nothing
        return claim

    async def keep(self, status: int, body: bytes) -> None:
        if self.key is not None:
            await self.store.finish(self.key, self.fp, status, body)
        self.kept = True

    async def settle(self, exc: BaseException | None) -> None:
        """Keep a final error for replay; free the key for anything a retry could change."""
        if self.key is None or self.kept:
            return
        self.kept = True
        if isinstance(exc, AmrError) and exc.status_code in REPLAYABLE_STATUSES:
            await self.store.finish(self.key, self.fp, exc.status_code, orjson.dumps(exc.to_dict()))
        else:
            await self.store.release(self.key)


def make_store(redis_url: str | None, ttl_s: float, pending_ttl_s: float,
               on_error: Callable[[], None] | None = None) -> IdempotencyStore:
    if redis_url:
        return RedisStore(redis_url, ttl_s, pending_ttl_s, on_error=on_error)
    return MemoryStore(ttl_s)
