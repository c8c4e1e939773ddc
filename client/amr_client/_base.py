"""What every client shares: everything except sending bytes.

Building the request body and headers, parsing responses, turning an answer into its exception
and assembling a streamed answer all live here (when to retry lives in `_retries.py`), with the
client classes every transport builds on: `BaseClient` (settings, `with_options`) and its
blocking and async halves (`SyncBaseClient`, `AsyncBaseClient`). `AMRClient` and `AMRGrpcClient`
then add only their send paths (as httpx's `BaseClient` and the Anthropic SDK's
`_base_client.py` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from amr_client._exceptions import (APIConnectionError, APIStatusError, APITimeoutError,
                                    InvalidRequestError, field_path, status_error)
from amr_client._retries import raised_as
from amr_client._version import USER_AGENT
from amr_client.binary import MSGPACK, decode_response
from amr_client.results import ScoreResult
from amr_client.schemas import (LAX_NUMBERS, Group, PolicyRef, PolicyStatus, PolicyUpdate, ReturnSwitches,
                                ScoredGroup, ScoreRequest, ScoreResponse, ScoringConfig, StreamedEnd,
                                StreamedError, StreamedGroup)
from amr_client.streams import AsyncScoreStream, Progress, ScoreStream, progress_reporter

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Scoring a large batch on a CPU engine takes minutes, so reads may wait long; an unreachable
# server should fail in seconds, not minutes.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2

SCORE_PATH = "/v1/score"
INFO_PATH = "/v1/info"
POLICY_PATH = "/v1/policy"
READY_PATH = "/readyz"


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
    field raises `InvalidRequestError` here, before any network traffic.
    """
    if isinstance(groups, (Mapping, BaseModel, str, bytes)):
        # One group passed bare: a dict would be iterated as its keys, a model as its fields.
        raise InvalidRequestError("groups must be a list of groups; got a single "
                                  f"{type(groups).__name__}: pass [group]", field="groups")
    payload: dict[str, Any] = {"groups": list(groups), "step": step}
    if config is not None:
        payload["config"] = config
    if returns is not None:
        payload["return"] = returns
    if policy is not None:
        payload["policy"] = policy
    # Lax here, strict on the server: numpy and torch numbers (np.int64 token ids, a 0-d tensor
    # reward) are plain numbers to a trainer, and the JSON sent is plain either way.
    request = validated(ScoreRequest, payload, strict=False, context=LAX_NUMBERS)
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    if request.config is not None:
        # The server applies only the config fields that were set (Scorer.resolve_config merges
        # `exclude_unset`), so sending every default would override the server's own defaults.
        body["config"] = request.config.model_dump(mode="json", exclude_unset=True)
    return body


def build_policy_body(path: str, version: str) -> dict[str, Any]:
    """The JSON body of `POST /v1/policy`, validated as the server validates it."""
    return validated(PolicyUpdate, {"path": str(path), "version": version}).model_dump(mode="json")


def validated(model: type[BaseModel], payload: dict[str, Any], **options: Any) -> Any:
    """`model.model_validate(payload)`, its errors raised as the SDK's `InvalidRequestError`."""
    try:
        return model.model_validate(payload, **options)
    except ValidationError as exc:
        raise invalid_request(exc) from None  # the pydantic traceback adds nothing for a caller


def invalid_request(exc: ValidationError) -> InvalidRequestError:
    """pydantic's errors named as the server names them in a 422 (`groups[0].rollouts[1].reward`)
    and without pydantic's documentation links."""
    errors = []
    for error in exc.errors(include_url=False):
        # Union members and validator wrappers appear in `loc` but are no field of the request.
        loc = [p for p in error["loc"] if isinstance(p, int) or not _is_wrapper(p)]
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and error["type"] not in ("missing", "extra_forbidden") \
                and not isinstance(error["input"], (dict, list)):
            message += f" (got {error['input']!r})"
        errors.append({"field": field_path(loc) or None, "message": message, "type": error["type"]})
    first = errors[0]
    message = first["message"]
    if len(errors) > 1:
        message += "; " + "; ".join(f"{e['field'] or 'request'}: {e['message']}" for e in errors[1:6])
        if len(errors) > 6:
            message += f"; and {len(errors) - 6} more"
    return InvalidRequestError(message, field=first["field"], errors=errors)


def _is_wrapper(part: str) -> bool:
    return part.startswith(("function-", "tagged-union[")) or part[:1].isupper()


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
    headers = {"Accept": accept, "User-Agent": USER_AGENT}
    if api_key:  # "" as None, as openai-python does: an unset env var must not send "Bearer "
        headers["Authorization"] = f"Bearer {api_key}"
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def check_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {base_url!r}")
    if url.query or url.fragment:
        raise ValueError(f"base_url takes no query or fragment, got {base_url!r}")
    text = str(url).rstrip("/")
    # openai-python's base URLs end in /v1; every amr-sd path carries its own /v1, so
    # "http://host:8000/v1" means the server at "http://host:8000" (not /v1/v1/score).
    return text.removesuffix("/v1")


def check_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """The HTTP client's `timeout=` as httpx takes it: seconds for every phase, None for no
    limit, or an httpx.Timeout naming each (connect, read, write, pool)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is None:
        return httpx.Timeout(None)
    return httpx.Timeout(check_seconds(timeout))


def check_seconds(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be seconds (a number > 0), None (no limit) or an "
                         f"httpx.Timeout, e.g. httpx.Timeout(600.0, connect=5.0); got {timeout!r}")
    return float(timeout)


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
        if not line:  # a blank line between items carries nothing
            return None
        try:
            item = _STREAM_LINE.validate_json(line)
        except ValidationError as exc:
            raise APIStatusError(f"a streamed line is not a stream item: {exc}", response=response,
                                 body=line, type="invalid_response") from exc
        if isinstance(item, StreamedError):
            headers = {"x-request-id": response.headers.get("x-request-id", "")}
            if item.retry_after_s is not None:
                headers["retry-after"] = f"{item.retry_after_s:g}"
            # No HTTP response carries this status (the stream's own was 200), as over gRPC.
            raise status_error(item.status, {"error": item.error.model_dump(exclude_none=True)},
                               headers=headers, reason=httpx.codes.get_reason_phrase(item.status))
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
    """The exception for a 4xx/5xx HTTP response."""
    return status_error(response.status_code, _body_of(response), headers=response.headers,
                        reason=response.reason_phrase, response=response)


def raise_for_status(response: httpx.Response) -> httpx.Response:
    if not response.is_success:
        raise make_status_error(response)
    return response


def http_errors() -> contextlib.AbstractContextManager[None]:
    """Raises httpx's transport errors as the client's connection errors (retried)."""
    return raised_as(httpx.TransportError, connection_error)


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    request = _request_of(exc)
    where = f" {request.method} {request.url}:" if request is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        error: APIConnectionError = APITimeoutError(f"Request timed out:{where} {exc!r}",
                                                    request=request)
    else:
        error = APIConnectionError(f"Connection error:{where} {exc!r}", request=request)
    error.__cause__ = exc
    return error


def _request_of(exc: httpx.TransportError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # raised by httpx when the error was built without a request
        return None


# --------------------------------------------------------------------------------------------
# What every client is: settings, then the blocking or the async half
# --------------------------------------------------------------------------------------------


class BaseClient:
    """What every client holds, over either transport: the server's address (`_ADDRESS` names
    its attribute), the API key, the timeout of one try and the retries; `with_options` copies
    them onto the same connection. Both transports take a timeout as seconds, None (no limit)
    or an httpx.Timeout; each turns it into its own form (`_check_timeout`): an httpx.Timeout
    over HTTP, one deadline in seconds over gRPC."""

    _ADDRESS = "base_url"
    _owns_connection = True  # False for a `with_options` copy: closing it leaves the pool open
    _check_timeout = staticmethod(check_timeout)

    def with_options(self, *, timeout: float | httpx.Timeout | None | NotGiven = NOT_GIVEN,
                     max_retries: int | NotGiven = NOT_GIVEN):
        """A copy with other settings that shares this client's connection pool or channel:
        `client.with_options(timeout=30.0).score(...)`; `timeout=None` lifts the limit.

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

    def _stream(self, body: dict[str, Any], idempotency_key: str | None = None):
        """The stream of one score call, sent when first iterated; `_stream_items(body, stream,
        key)` is each transport's retried items (it sets `stream.result` at the end)."""
        stream = self._Stream()
        stream._items = self._stream_items(body, stream, idempotency_key or new_idempotency_key())
        return stream


Client = TypeVar("Client", bound=BaseClient)


class SyncBaseClient(BaseClient):
    """The blocking half of every client: streams iterated with `for`, `score(progress=...)`,
    the retry sleep and the context manager."""

    _Stream = ScoreStream
    # Injectable so tests (and callers with their own scheduler) need not really sleep.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def score_stream(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                     config: ScoringConfig | Mapping[str, Any] | None = None,
                     returns: ReturnSwitches | Mapping[str, Any] | None = None,
                     policy: PolicyRef | Mapping[str, Any] | None = None) -> ScoreStream:
        """Like `score`, but each group arrives as soon as it is scored:

            stream = client.score_stream(groups, step=step)
            for index, group in stream:      # completion order; index = position in `groups`
                ...
            result = stream.result           # the same ScoreResult `score` returns

        Retried like `score` (same idempotency key); a group is never passed on twice.
        """
        return self._stream(build_score_body(groups, step=step, config=config, returns=returns,
                                             policy=policy))

    def _score_with_progress(self, body: dict[str, Any], progress: Progress) -> ScoreResult:
        # Streamed, so a long batch never has to fit one deadline as a whole.
        stream = self._stream(body)
        with progress_reporter(progress, len(body["groups"])) as tick:
            for _ in stream:
                tick()
        return stream.result

    def close(self) -> None:
        """Close the connection pool or channel, unless it was passed in (`http_client`) or
        this client is a `with_options` copy."""
        if self._owns_connection:
            self._close_connection()

    def __enter__(self: Client) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncBaseClient(BaseClient):
    """The async half of every client: `SyncBaseClient` with `async for` and `await`."""

    _Stream = AsyncScoreStream
    _sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

    def score_stream(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                     config: ScoringConfig | Mapping[str, Any] | None = None,
                     returns: ReturnSwitches | Mapping[str, Any] | None = None,
                     policy: PolicyRef | Mapping[str, Any] | None = None) -> AsyncScoreStream:
        """The blocking client's `score_stream`, iterated with `async for`; `.result` after the
        loop."""
        return self._stream(build_score_body(groups, step=step, config=config, returns=returns,
                                             policy=policy))

    async def _score_with_progress(self, body: dict[str, Any], progress: Progress) -> ScoreResult:
        stream = self._stream(body)
        with progress_reporter(progress, len(body["groups"])) as tick:
            async for _ in stream:
                tick()
        return stream.result

    async def close(self) -> None:
        """See `SyncBaseClient.close`."""
        if self._owns_connection:
            await self._close_connection()

    async def __aenter__(self: Client) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
