"""What `AMRClient` and `AsyncAMRClient` share: everything except sending bytes and sleeping.

Building the request body and headers, parsing responses, mapping a status to its exception and
deciding whether and how long to wait before a retry all live here, so the two twins repeat
only their send loop (as httpx's `BaseClient` and the Anthropic SDK's `_base_client.py` do).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar

import httpx
from pydantic import Field, TypeAdapter, ValidationError

from amr_client._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyMismatchError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from amr_client.binary import MSGPACK, decode_response
from amr_client.results import ScoreResult
from amr_client.schemas import (Group, PolicyRef, PolicyStatus, PolicyUpdate, ReturnSwitches,
                                ScoredGroup, ScoreRequest, ScoreResponse, ScoringConfig, StreamedEnd,
                                StreamedError, StreamedGroup)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Scoring a large batch on a CPU engine takes minutes, so reads may wait long; an unreachable
# server should fail in seconds, not minutes.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2

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

SCORE_PATH = "/v1/score"
INFO_PATH = "/v1/info"
POLICY_PATH = "/v1/policy"
READY_PATH = "/readyz"

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    500: InternalServerError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


class NotGiven:
    """Marks an argument as not passed, so `with_options(timeout=...)` can tell it from None."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def build_score_body(groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                     config: ScoringConfig | Mapping[str, Any] | None = None,
                     returns: ReturnSwitches | Mapping[str, Any] | None = None,
                     policy: PolicyRef | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of `POST /v1/score`.

    `groups`, `config`, `returns` and `policy` may be models or plain dicts; both give the same
    body.
    The request is validated by `ScoreRequest`, exactly as the server validates it, so a bad
    field raises pydantic's `ValidationError` here, before any network traffic.
    """
    payload: dict[str, Any] = {"groups": list(groups), "step": step}
    if config is not None:
        payload["config"] = config
    if returns is not None:
        payload["return"] = returns
    if policy is not None:
        payload["policy"] = policy
    # Lax here, strict on the server: numpy and torch numbers (np.int64 token ids, a 0-d tensor
    # reward) are plain numbers to a trainer, and the JSON sent is plain either way.
    request = ScoreRequest.model_validate(payload, strict=False)
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    if request.config is not None:
        # The server applies only the config fields that were set (Scorer.resolve_config merges
        # `exclude_unset`), so sending every default would override the server's own defaults.
        body["config"] = request.config.model_dump(mode="json", exclude_unset=True)
    return body


def build_policy_body(path: str, version: str) -> dict[str, Any]:
    """The JSON body of `POST /v1/policy`, validated as the server validates it."""
    return PolicyUpdate(path=str(path), version=version).model_dump(mode="json")


def new_idempotency_key() -> str:
    """One key per logical call; every retry of that call reuses it, so the server replays."""
    return str(uuid.uuid4())


NDJSON = "application/x-ndjson"
JSON = "application/json"

Encoding = Literal["auto", "json", "msgpack"]
# From here up a batch's answer comes as msgpack under `encoding="auto"`: ~5x fewer bytes than
# JSON and no float parsing (`make bench`, encoding part); below it JSON's cost is noise.
BINARY_MIN_TOKENS = 32_768


def answer_type(body: dict[str, Any], encoding: Encoding) -> str:
    """The Accept of a unary score call: msgpack when asked, or under "auto" for a large batch."""
    if encoding == "auto":
        tokens = sum(len(r["token_ids"]) for g in body["groups"] for r in g["rollouts"])
        return MSGPACK if tokens >= BINARY_MIN_TOKENS else JSON
    if encoding not in ("json", "msgpack"):
        raise ValueError(f'encoding must be "auto", "json" or "msgpack", got {encoding!r}')
    return MSGPACK if encoding == "msgpack" else JSON


def retry_as_json(error: APIStatusError, encoding: Encoding, headers: dict[str, str]) -> bool:
    """Under "auto", a server that cannot write msgpack (406: an older release) is asked again
    for JSON; `headers` is changed in place. An explicit "msgpack" keeps the 406."""
    if error.status_code != 406 or encoding != "auto" or headers.get("Accept") != MSGPACK:
        return False
    headers["Accept"] = JSON
    return True


def build_headers(api_key: str | None, idempotency_key: str | None = None,
                  accept: str = "application/json") -> dict[str, str]:
    headers = {"Accept": accept}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def check_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {base_url!r}")
    return str(url).rstrip("/")


def check_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    # One form only (see STYLE.md on httpx.Timeout): a bare float would hide that connect and
    # read need very different limits here.
    if not isinstance(timeout, httpx.Timeout):
        raise TypeError(f"timeout must be an httpx.Timeout, e.g. httpx.Timeout(600.0, connect=5.0); "
                        f"got {timeout!r}")
    return timeout


def check_max_retries(max_retries: int) -> int:
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0 (0 disables retries), got {max_retries!r}")
    return max_retries


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def parse_score_response(response: httpx.Response) -> ScoreResult:
    try:
        if response.headers.get("content-type", "").startswith(MSGPACK):
            parsed = ScoreResponse.model_validate(decode_response(response.content))
        else:
            parsed = ScoreResponse.model_validate_json(response.content)
    except (ValidationError, ValueError) as exc:
        # A 2xx that is not a ScoreResponse is a server/client version mismatch, not bad input.
        raise APIStatusError(f"response is not a ScoreResponse: {exc}", response=response,
                             body=_body_of(response), type="invalid_response") from exc
    return ScoreResult(parsed, request_id=response.headers.get("x-request-id"))


class StreamAssembler:
    """The groups of one streamed score answer, whatever the transport carried them.

    `add` returns each group the first time it arrives (a retried stream sends finished groups
    again; they are not passed on twice), `finish` takes the end item, and `result` builds the
    same ScoreResult a unary call gives. Each transport has a small decoder in front: `feed` reads
    HTTP's NDJSON lines (`Accept: application/x-ndjson`); the gRPC client reads its messages.
    """

    def __init__(self, n_groups: int):
        self.n_groups = n_groups
        self.groups: dict[int, ScoredGroup] = {}
        self.end: StreamedEnd | None = None

    def wants(self, index: int) -> bool:
        """Whether a group at `index` would be new (decoders skip parsing the rest)."""
        return index not in self.groups and 0 <= index < self.n_groups

    def add(self, index: int, group: ScoredGroup) -> tuple[int, ScoredGroup] | None:
        if not self.wants(index):
            return None
        self.groups[index] = group
        return index, group

    def finish(self, end: StreamedEnd) -> None:
        self.end = end

    def result(self, request_id: str | None, request: httpx.Request | None = None) -> ScoreResult:
        missing = [g for g in range(self.n_groups) if g not in self.groups]
        if self.end is None or missing:
            # A stream cut before its end: a retry (same idempotency key) picks it up.
            raise APIConnectionError(f"the stream ended early ({len(missing)} groups missing)",
                                     request=request)
        fields = self.end.model_dump(exclude={"type"})
        parsed = ScoreResponse(**fields, groups=[self.groups[g] for g in range(self.n_groups)])
        return ScoreResult(parsed, request_id=request_id)

    def feed(self, line: bytes | str, response: httpx.Response) -> tuple[int, ScoredGroup] | None:
        """One NDJSON line; an `error` line raises the status error a unary call would have."""
        try:
            item = _STREAM_LINE.validate_json(line)
        except ValidationError as exc:
            raise APIStatusError(f"a streamed line is not a stream item: {exc}", response=response,
                                 body=line, type="invalid_response") from exc
        if isinstance(item, StreamedError):
            headers = {"x-request-id": response.headers.get("x-request-id", "")}
            if item.retry_after_s is not None:
                headers["retry-after"] = f"{item.retry_after_s:g}"
            raise make_status_error(httpx.Response(
                item.status, headers=headers, request=response.request,
                json={"error": item.error.model_dump(exclude_none=True)}))
        if isinstance(item, StreamedEnd):
            self.finish(item)
            return None
        return self.add(item.index, item.group)


_STREAM_LINE: TypeAdapter = TypeAdapter(
    Annotated[StreamedGroup | StreamedEnd | StreamedError, Field(discriminator="type")])


def parse_ready(response: httpx.Response) -> bool:
    """`/readyz`: 503 means still starting; other errors (401, 404...) mean a wrong URL or key."""
    if response.status_code == 503:
        return False
    if response.is_success:
        return True
    raise make_status_error(response)


def parse_info(response: httpx.Response) -> dict[str, Any]:
    body = _body_of(response)
    if not isinstance(body, dict):
        raise APIStatusError("GET /v1/info did not return a JSON object", response=response,
                             body=body, type="invalid_response")
    return body


def parse_policy_status(response: httpx.Response) -> PolicyStatus:
    try:
        return PolicyStatus.model_validate_json(response.content)
    except ValidationError as exc:
        raise APIStatusError(f"response is not a PolicyStatus: {exc}", response=response,
                             body=_body_of(response), type="invalid_response") from exc


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON (a proxy's HTML page, an empty body)
        return response.text


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The exception for a 4xx/5xx response: the only status -> class map."""
    body = _body_of(response)
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict):
        message = str(envelope.get("message") or response.reason_phrase)
        kind = envelope.get("type")
        field = envelope.get("field")
    else:
        message = (body if isinstance(body, str) else "") or response.reason_phrase or "error"
        kind = field = None
    cls = _STATUS_ERRORS.get(response.status_code, APIStatusError)
    if response.status_code == 409 and kind == "policy_mismatch":
        cls = PolicyMismatchError
    return cls(message, response=response, body=body, type=kind, field=field)


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    request = _request_of(exc)
    if isinstance(exc, httpx.TimeoutException):
        error: APIConnectionError = APITimeoutError(f"Request timed out: {exc!r}", request=request)
    else:
        error = APIConnectionError(f"Connection error: {exc!r}", request=request)
    error.__cause__ = exc
    return error


def _request_of(exc: httpx.TransportError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # raised by httpx when the error was built without a request
        return None


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


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
    header = error.response.headers.get("retry-after") if isinstance(error, APIStatusError) else None
    return retry_delay(attempt, header)


# The one retry loop of every client (HTTP and gRPC, sync and async, one answer or a stream): a
# try raises APIConnectionError or APIStatusError (the transport's own errors mapped first);
# next_retry_delay says whether and when to try again. A stream's retry sends the same
# idempotency key, so the server replays what it had already sent and the assembler skips it.
T = TypeVar("T")
_FAILURES = (APIConnectionError, APIStatusError)


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
                raise
        await sleep(delay)
        tries += 1


# --------------------------------------------------------------------------------------------
# Client state shared by the twins
# --------------------------------------------------------------------------------------------


class ClientOptions:
    """What every client holds, over either transport: the API key, the timeout of one try and
    the retries, beside the server's address (`_ADDRESS` names its attribute); `with_options`
    copies them onto the same connection. A transport may take another form of timeout."""

    _ADDRESS = "base_url"
    _owns_connection = True  # False for a `with_options` copy: closing it leaves the pool open

    @staticmethod
    def _check_timeout(timeout):
        return check_timeout(timeout)

    def with_options(self, *, timeout: Any = NOT_GIVEN, max_retries: int | NotGiven = NOT_GIVEN):
        """A copy with other settings that shares this client's connection pool or channel.

        Closing the copy leaves the pool open; close the original when done.
        """
        clone = copy.copy(self)
        if not isinstance(timeout, NotGiven):
            clone.timeout = self._check_timeout(timeout)
        if not isinstance(max_retries, NotGiven):
            clone.max_retries = check_max_retries(max_retries)
        clone._owns_connection = False
        return clone

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._ADDRESS}={getattr(self, self._ADDRESS)!r}, "
                f"timeout={self.timeout!r}, max_retries={self.max_retries})")


class BaseClient(ClientOptions):
    """Settings of an HTTP client; the twins add the HTTP pool and the send loop."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: httpx.Timeout,
                 max_retries: int):
        self.base_url = check_base_url(base_url)
        self.api_key = api_key
        self.timeout = self._check_timeout(timeout)
        self.max_retries = check_max_retries(max_retries)

    def _url(self, path: str) -> str:
        return self.base_url + path
