"""When a failed try is tried again, after how long, and the one retry loop of every client.

Connection errors, 408, 409, 429 and 5xx are retried; the server's Retry-After is honoured, else
the wait is a capped, jittered exponential backoff.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx

from amr_client._exceptions import APIConnectionError, APIStatusError

# Retry-After above this is capped, so a misconfigured server cannot park a trainer for hours.
MAX_RETRY_AFTER_S = 60.0
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
RETRY_JITTER = 0.25

# Transient by nature: request timeout, the first try of this Idempotency-Key still running (409:
# a later retry gets its answer), our own queue full, server errors, proxies in between. Every
# other 4xx means the same request will fail again.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# ...except these error types, which the same request meets again.
FINAL_ERROR_TYPES = frozenset({"policy_mismatch"})


def should_retry(error: int | BaseException) -> bool:
    """Whether a failed try may succeed if repeated: a status code or the exception raised."""
    if isinstance(error, (APIConnectionError, httpx.TransportError)):
        return True
    if isinstance(error, APIStatusError):
        return error.status_code in RETRYABLE_STATUS and error.type not in FINAL_ERROR_TYPES
    if isinstance(error, int) and not isinstance(error, bool):
        return error in RETRYABLE_STATUS
    return False


def parse_retry_after(header: str | None) -> float | None:
    """Seconds from a `Retry-After: <seconds>` header; None when absent or not a number."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_delay(attempt: int, retry_after_header: str | None = None,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after failed try number `attempt` (0 = the first try).

    The server's Retry-After wins (capped at 60 s); otherwise 0.5 s * 2**attempt, capped at
    8 s, times a jitter in [0.75, 1.25] so many trainers do not retry in lockstep.
    """
    retry_after = parse_retry_after(retry_after_header)
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S)
    backoff = min(INITIAL_RETRY_DELAY_S * 2.0 ** attempt, MAX_RETRY_DELAY_S)
    jitter = (rng or random).uniform(1.0 - RETRY_JITTER, 1.0 + RETRY_JITTER)
    return backoff * jitter


def next_retry_delay(error: APIConnectionError | APIStatusError, attempt: int,
                     max_retries: int) -> float | None:
    """Seconds to sleep before retrying after try `attempt` failed with `error`, or None to raise."""
    if attempt >= max_retries or not should_retry(error):
        return None
    header = error.headers.get("retry-after") if isinstance(error, APIStatusError) else None
    return retry_delay(attempt, header)


@contextlib.contextmanager
def raised_as(kind: type[BaseException], convert: Callable[[Any], BaseException]) -> Iterator[None]:
    """Raises a transport's own `kind` of error as `convert(error)`, the client's exception that
    the retry loop knows; the transport's error stays its cause."""
    try:
        yield
    except kind as exc:
        raise convert(exc) from exc


# The one retry loop of every client (HTTP and gRPC, sync and async, one answer or a stream): a
# try raises APIConnectionError or APIStatusError (the transport's own errors mapped first);
# next_retry_delay says whether and when to try again. A stream's retry sends the same
# idempotency key, so the server replays what it had already sent and the assembler skips it.
T = TypeVar("T")
_FAILURES = (APIConnectionError, APIStatusError)


def _give_up(error: APIConnectionError | APIStatusError, attempts: int) -> None:
    # A status error names the server's request id; a connection error has only the tries made.
    if isinstance(error, APIConnectionError):
        error.gave_up_after(attempts)


def retried(attempt: Callable[[], T], max_retries: int, sleep: Callable[[float], None]) -> T:
    """`attempt()`'s answer, retried after a retryable failure: a stream of one item."""
    def once() -> Iterator[T]:
        yield attempt()

    with contextlib.closing(retried_items(once, max_retries, sleep)) as items:
        return next(items)


async def retried_async(attempt: Callable[[], Awaitable[T]], max_retries: int,
                        sleep: Callable[[float], Awaitable[None]]) -> T:
    """`retried` for a coroutine."""
    async def once() -> AsyncIterator[T]:
        yield await attempt()

    async with contextlib.aclosing(retried_aitems(once, max_retries, sleep)) as items:
        return await anext(items)


def retried_items(attempt: Callable[[], Iterator[T]], max_retries: int,
                  sleep: Callable[[float], None]) -> Iterator[T]:
    """The items of `attempt()`, a new try of the whole stream after a retryable failure."""
    tries = 0
    while True:
        try:
            yield from attempt()  # closing this generator closes the try's too
            return
        except _FAILURES as error:
            delay = next_retry_delay(error, tries, max_retries)
            if delay is None:
                _give_up(error, tries + 1)
                raise
        sleep(delay)
        tries += 1


async def retried_aitems(attempt: Callable[[], AsyncIterator[T]], max_retries: int,
                         sleep: Callable[[float], Awaitable[None]]) -> AsyncIterator[T]:
    """`retried_items` for an async stream."""
    tries = 0
    while True:
        try:
            # aclosing: a caller leaving early closes the try at once (it cancels the request).
            async with contextlib.aclosing(attempt()) as items:
                async for item in items:
                    yield item
            return
        except _FAILURES as error:
            delay = next_retry_delay(error, tries, max_retries)
            if delay is None:
                _give_up(error, tries + 1)
                raise
        await sleep(delay)
        tries += 1


