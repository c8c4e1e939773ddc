"""`AMRGrpcClient` and `AsyncAMRGrpcClient`: the HTTP clients' methods over gRPC (amr_sd.v1).

Same methods, results, exceptions and retries as `AMRClient` / `AsyncAMRClient`, on the same
base classes; only the transport differs, and with it two arguments: `target` is a gRPC address
(host:port), and `timeout` becomes the deadline of one try in seconds: gRPC has one deadline per
call, not httpx's connect and read limits, so an httpx.Timeout counts by its read limit. Needs the gRPC extra: `pip install "amr-sd[grpc]"`.

    from amr_client import AMRGrpcClient

    with AMRGrpcClient("scorer:50051", api_key=key) as client:
        result = client.score(groups, step=global_step)
        advantages, mask = result.advantages_padded()

        for index, group in client.score_stream(groups, step=global_step):
            ...                              # completion order; index = position in `groups`

Requests are built and validated by the same code as over HTTP (`build_score_body`), then
converted to protobuf by `grpc_codec`; answers are validated by the same pydantic models. A gRPC
error from the server carries its HTTP status in a google.rpc.ErrorInfo, so it raises the class
the HTTP client raises for that status (`status_error`, the one status -> exception map), with
`response` None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

try:
    import grpc
    import grpc.aio
    from google.protobuf.message import DecodeError
    from google.rpc import error_details_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_status import rpc_status

    from amr_client.grpc_codec import fill, to_dict
    from amr_client.v1 import scoring_pb2 as pb
    from amr_client.v1 import scoring_pb2_grpc as pb_grpc
except ImportError as exc:
    raise ImportError('the amr-sd gRPC client needs grpcio, grpcio-status, grpcio-health-checking '
                      'and protobuf: pip install "amr-sd[grpc]"') from exc

import httpx

from amr_client._base import (
    DEFAULT_MAX_RETRIES,
    AsyncBaseClient,
    BaseClient,
    StreamAssembler,
    SyncBaseClient,
    build_policy_body,
    build_score_body,
    check_max_retries,
    check_seconds,
    new_idempotency_key,
)
from amr_client._exceptions import APIConnectionError, APIStatusError, APITimeoutError, status_error
from amr_client._version import USER_AGENT
from amr_client._retries import (raised_as, retried, retried_aitems, retried_async,
                                 retried_items)
from amr_client.results import ScoreResult
from amr_client.schemas import (Group, PolicyRef, PolicyStatus, ReturnSwitches, ScoredGroup,
                                ScoreResponse, ScoringConfig, StreamedEnd)
from amr_client.streams import AsyncScoreStream, Progress, ScoreStream

__all__ = ["AMRGrpcClient", "AsyncAMRGrpcClient"]

DEFAULT_TARGET = "127.0.0.1:50051"
# Per try, for the whole call: scoring a large batch on a CPU engine takes minutes.
DEFAULT_TIMEOUT_S = 600.0

SERVICE = pb.DESCRIPTOR.services_by_name["Scoring"].full_name  # "amr_sd.v1.Scoring"
ERROR_DOMAIN = "amr-sd"

CHANNEL_OPTIONS = (
    # An answer holds up to four float arrays per token, far beyond gRPC's 4 MiB default; the
    # server bounds what it sends, so the client need not bound it again.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # Sent ahead of grpc's own "grpc-python/<version>", as the HTTP client's User-Agent.
    ("grpc.primary_user_agent", USER_AGENT),
)

# The HTTP status of a gRPC failure that carries no amr-sd details (a proxy, or gRPC itself):
# google.rpc.Code's documented HTTP mapping, except RESOURCE_EXHAUSTED. Without details that is
# gRPC's own message-size limit (the server's receive bound is its body cap), so it is a 413,
# which is not retried, rather than an overload (429), which is.
_HTTP_STATUS_OF_CODE = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# ready(): the server answers the probe but is not (yet) serving. NOT_FOUND is what the health
# service says in the moment between the server starting and it registering its status.
_NOT_READY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.NOT_FOUND})


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def check_target(target: str) -> str:
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a gRPC address such as {DEFAULT_TARGET!r}, got {target!r}")
    if target.lower().startswith(("http://", "https://")):
        # gRPC targets have no http scheme; the HTTP client takes URLs, this one host:port.
        raise ValueError(f"target is a gRPC address such as {DEFAULT_TARGET!r}, not a URL; got "
                         f"{target!r} (use AMRClient for the HTTP API)")
    return target


def check_grpc_timeout(timeout: float | httpx.Timeout | None) -> float | None:
    """The deadline of one try in seconds, None for none. gRPC has a single deadline for the
    whole call, so an httpx.Timeout counts by its read limit, the wait for the answer (the one
    that matters for a long batch); its connect, write and pool limits have no gRPC form."""
    if isinstance(timeout, httpx.Timeout):
        timeout = timeout.read
    return None if timeout is None else check_seconds(timeout)


def check_api_key(api_key: str | None) -> str | None:
    if api_key is not None and not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str or None, got {type(api_key).__name__}")
    return api_key


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def score_request(body: Mapping[str, Any]) -> pb.ScoreRequest:
    """The ScoreRequest message of an HTTP score body (`build_score_body`)."""
    fields = dict(body)
    if "return" in fields:  # `return` is a Python keyword, so the proto field is `returns`
        fields["returns"] = fields.pop("return")
    return fill(pb.ScoreRequest(), fields)


def _validate(model: type[BaseModel], data: dict[str, Any], request_id: str | None = None):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # As over HTTP: a successful answer that breaks the contract is a version mismatch.
        headers = {"x-request-id": request_id} if request_id else {}
        raise APIStatusError(f"response is not a {model.__name__}: {exc}", status_code=200,
                             headers=headers, body=data, type="invalid_response") from exc


def _score_result(response: pb.ScoreResponse, request_id: str | None) -> ScoreResult:
    return ScoreResult(_validate(ScoreResponse, to_dict(response), request_id),
                       request_id=request_id)


def _request_id(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "x-request-id":
            return value
    return None


def _feed(assembler: StreamAssembler, message: pb.ScoreStreamMessage):
    """One ScoreStream message into the assembler the HTTP client uses for its NDJSON lines."""
    kind = message.WhichOneof("kind")
    if kind == "end":
        assembler.finish(_validate(StreamedEnd, to_dict(message.end)))
        return None
    if kind != "group" or not assembler.wants(message.group.index):
        return None  # a kind newer than this client, or a group already passed on
    return assembler.add(message.group.index, _validate(ScoredGroup, to_dict(message.group.group)))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _details(exc: grpc.RpcError):
    """The google.rpc.Status in the error's trailers, or None (absent, or not a valid one)."""
    try:
        return rpc_status.from_call(exc)
    except (AttributeError, ValueError, DecodeError):
        # AttributeError: an RpcError that is not a Call; ValueError: trailers that disagree
        # with the call's own status. Either way the call's code is all there is.
        return None


def _unpack(status, detail_type):
    for packed in status.details:
        if packed.Is(detail_type.DESCRIPTOR):
            detail = detail_type()
            packed.Unpack(detail)
            return detail
    return None


def rpc_error(exc: grpc.RpcError, target: str | None = None) -> APIConnectionError | APIStatusError:
    """The exception the HTTP client would raise for the same failure; `exc` is its cause.
    `target`, the address called, is named by a connection error."""
    error = _map_rpc_error(exc, target)
    error.__cause__ = exc
    return error


def rpc_errors(target: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Raises a failed call (grpc.aio's too) as the exception `rpc_error` gives."""
    return raised_as(grpc.RpcError, lambda exc: rpc_error(exc, target))


def _ask(exc: grpc.RpcError, method: str):
    """`exc.<method>()`, or None: every RpcError a stub raises is also a grpc.Call, but
    grpc.RpcError itself promises none of the Call methods."""
    found = getattr(exc, method, None)
    return found() if callable(found) else None


def _map_rpc_error(exc: grpc.RpcError, target: str | None) -> APIConnectionError | APIStatusError:
    code = _ask(exc, "code") or grpc.StatusCode.UNKNOWN
    message = _ask(exc, "details") or code.name
    initial = _ask(exc, "initial_metadata")
    status = _details(exc)
    info = _unpack(status, error_details_pb2.ErrorInfo) if status is not None else None
    headers: dict[str, str] = {}
    where = f"{target}: " if target else ""
    if info is not None and info.domain == ERROR_DOMAIN:
        try:
            http_status = int(info.metadata["status"])
        except (KeyError, ValueError):
            http_status = _HTTP_STATUS_OF_CODE.get(code, 500)
        retry = _unpack(status, error_details_pb2.RetryInfo)
        if retry is not None:
            seconds = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            headers["retry-after"] = f"{seconds:g}"
        request_id = info.metadata.get("request_id") or _request_id(initial)
        envelope = {"type": info.reason, "message": status.message or message}
        if info.metadata.get("field"):
            envelope["field"] = info.metadata["field"]
    elif code is grpc.StatusCode.UNAVAILABLE:
        # Nothing from amr-sd: no server there, or the connection dropped (retried).
        return APIConnectionError(f"Connection error: {where}{code.name}: {message}")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        # The client's own deadline (`timeout=`); the server's would carry details (a 504).
        return APITimeoutError(f"Request timed out: {where}{code.name}: {message}")
    else:
        http_status = _HTTP_STATUS_OF_CODE.get(code, 500)
        request_id = _request_id(initial)
        envelope = {"type": f"grpc_{code.name.lower()}", "message": message}
    if request_id:
        headers["x-request-id"] = request_id
    # The body and headers the HTTP API would have sent, so both transports raise alike.
    return status_error(http_status, {"error": envelope}, headers=headers)


# --------------------------------------------------------------------------------------------
# Settings shared by the twins
# --------------------------------------------------------------------------------------------


class _GrpcClient(BaseClient):
    """Settings of a gRPC client (the HTTP client's, with a target and a timeout in seconds);
    the twins add the channel and the send paths."""

    _ADDRESS = "target"
    _check_timeout = staticmethod(check_grpc_timeout)

    def __init__(self, target: str, *, api_key: str | None, timeout: float | httpx.Timeout | None,
                 max_retries: int):
        self.target = check_target(target)
        self.api_key = check_api_key(api_key)
        self.timeout = self._check_timeout(timeout)
        self.max_retries = check_max_retries(max_retries)

    def _metadata(self, idempotency_key: str | None = None) -> tuple[tuple[str, str], ...]:
        metadata = []
        if self.api_key:  # "" sends none, as over HTTP
            metadata.append(("authorization", f"Bearer {self.api_key}"))
        if idempotency_key is not None:
            metadata.append(("idempotency-key", idempotency_key))
        return tuple(metadata)


def _ready_answer(response: health_pb2.HealthCheckResponse) -> bool:
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _ready_failure(exc: grpc.RpcError, target: str) -> bool:
    """False for a server not reachable or not serving yet; raise for anything else (no health
    service there, say), which means a wrong target rather than a server warming up."""
    if _ask(exc, "code") in _NOT_READY_CODES:
        return False
    raise rpc_error(exc, target)


# --------------------------------------------------------------------------------------------
# The blocking client
# --------------------------------------------------------------------------------------------


class AMRGrpcClient(_GrpcClient, SyncBaseClient):
    """Blocking gRPC client of an amr-sd server; the methods of `AMRClient`.

    Args:
        target: the server's gRPC address, e.g. "scorer:50051".
        api_key: sent as `authorization: Bearer <api_key>` metadata when set; None or "" sends none.
        timeout: the gRPC deadline of one try (a stream's whole duration included): seconds,
            None for no deadline, or an httpx.Timeout, whose read limit is taken.
        max_retries: extra tries after a connection error, timeout, 408, 429 or 5xx; 0 disables.
        channel_options: more gRPC channel options, e.g. `(("grpc.lb_policy_name", "round_robin"),)`
            for a `dns:///` target naming several servers.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES, channel_options: Sequence[tuple[str, Any]] = ()):
        super().__init__(target, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._channel = grpc.insecure_channel(self.target, options=(*CHANNEL_OPTIONS, *channel_options))
        self._stub = pb_grpc.ScoringStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
              config: ScoringConfig | Mapping[str, Any] | None = None,
              returns: ReturnSwitches | Mapping[str, Any] | None = None,
              policy: PolicyRef | Mapping[str, Any] | None = None,
              progress: Progress = False) -> ScoreResult:
        """Score `groups` at trainer step `step`; see `AMRClient.score` (`progress` too).

        Raises `InvalidRequestError` for a bad request before sending it.
        """
        body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
        if progress:
            return self._score_with_progress(body, progress)
        return self._score_body(body, new_idempotency_key())

    def _score_body(self, body: dict[str, Any], idempotency_key: str) -> ScoreResult:
        """One Score call of a built body under `idempotency_key`."""
        return _score_result(*self._unary(self._stub.Score, score_request(body), idempotency_key))

    def _stream_items(self, body: dict[str, Any], stream: ScoreStream, idempotency_key: str):
        request = score_request(body)
        metadata = self._metadata(idempotency_key)
        assembler = StreamAssembler(len(body["groups"]))

        def attempt():
            call = self._stub.ScoreStream(request, metadata=metadata, timeout=self.timeout)
            try:
                with rpc_errors(self.target):
                    for message in call:
                        if (item := _feed(assembler, message)) is not None:
                            yield item
                    stream.result = assembler.result(_request_id(call.initial_metadata()))
            finally:
                # A caller leaving the loop early must not leave the server scoring for nobody.
                call.cancel()

        return retried_items(attempt, self.max_retries, self._sleep)

    def info(self) -> dict[str, Any]:
        """GetInfo: model, model_path, policy_version, engine, limits, defaults (absent: None)."""
        response, _ = self._unary(self._stub.GetInfo, pb.GetInfoRequest())
        return to_dict(response, absent_as_none=True)

    def set_policy(self, path: str, version: str) -> PolicyStatus:
        """SetPolicy: load the full weights in `path` as `version`; see `AMRClient.set_policy`."""
        request = fill(pb.PolicyUpdate(), build_policy_body(path, version))
        response, request_id = self._unary(self._stub.SetPolicy, request)
        return _validate(PolicyStatus, to_dict(response), request_id)

    def get_policy(self) -> PolicyStatus:
        """GetPolicy: the full-weight version in service and the adapters loaded."""
        response, request_id = self._unary(self._stub.GetPolicy, pb.GetPolicyRequest())
        return _validate(PolicyStatus, to_dict(response), request_id)

    def ready(self) -> bool:
        """True when the server is ready to score (grpc.health.v1 says SERVING for
        amr_sd.v1.Scoring); False when it is not serving or cannot be reached.

        Not retried: a probe answers about now. Other failures (no health service at `target`)
        raise, since they mean a wrong target rather than a server still warming up.
        """
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE),
                                          metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as exc:
            return _ready_failure(exc, self.target)
        return _ready_answer(response)

    def _close_connection(self) -> None:
        self._channel.close()

    def _unary(self, rpc, request, idempotency_key: str | None = None):
        """`(response, request_id)` of a unary call, retried as `AMRClient._send` retries."""
        metadata = self._metadata(idempotency_key)

        def attempt():
            with rpc_errors(self.target):
                response, call = rpc.with_call(request, metadata=metadata, timeout=self.timeout)
                return response, _request_id(call.initial_metadata())

        return retried(attempt, self.max_retries, self._sleep)


# --------------------------------------------------------------------------------------------
# The async client
# --------------------------------------------------------------------------------------------


class _AioChannel:
    """A grpc.aio channel opened on first use: it binds to the event loop it is created on, so
    it cannot be made in `__init__`, which may run before the loop (or on another one)."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] = ()):
        self.target = target
        self.options = (*CHANNEL_OPTIONS, *options)
        self.channel: grpc.aio.Channel | None = None
        self.stub = self.health = None

    def open(self) -> _AioChannel:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=self.options)
            self.stub = pb_grpc.ScoringStub(self.channel)
            self.health = health_pb2_grpc.HealthStub(self.channel)
        return self

    async def close(self) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            await channel.close()


class AsyncAMRGrpcClient(_GrpcClient, AsyncBaseClient):
    """Async gRPC client of an amr-sd server; the arguments of `AMRGrpcClient`, the methods of
    `AsyncAMRClient`. Use it on one event loop: its channel binds to the loop of its first call.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES, channel_options: Sequence[tuple[str, Any]] = ()):
        super().__init__(target, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._aio = _AioChannel(self.target, channel_options)  # shared with `with_options` copies

    async def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                    config: ScoringConfig | Mapping[str, Any] | None = None,
                    returns: ReturnSwitches | Mapping[str, Any] | None = None,
                    policy: PolicyRef | Mapping[str, Any] | None = None,
                    progress: Progress = False) -> ScoreResult:
        """Score `groups` at trainer step `step`; see `AMRClient.score` (`progress` too)."""
        body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
        if progress:
            return await self._score_with_progress(body, progress)
        return await self._score_body(body, new_idempotency_key())

    async def _score_body(self, body: dict[str, Any], idempotency_key: str) -> ScoreResult:
        """One Score call of a built body under `idempotency_key`."""
        return _score_result(*await self._unary("Score", score_request(body), idempotency_key))

    def _stream_items(self, body: dict[str, Any], stream: AsyncScoreStream, idempotency_key: str):
        request = score_request(body)
        metadata = self._metadata(idempotency_key)
        assembler = StreamAssembler(len(body["groups"]))

        async def attempt():
            call = self._aio.open().stub.ScoreStream(request, metadata=metadata,
                                                     timeout=self.timeout)
            try:
                with rpc_errors(self.target):
                    async for message in call:
                        if (item := _feed(assembler, message)) is not None:
                            yield item
                    stream.result = assembler.result(_request_id(await call.initial_metadata()))
            finally:
                call.cancel()  # see AMRGrpcClient._stream_items

        return retried_aitems(attempt, self.max_retries, self._sleep)

    async def info(self) -> dict[str, Any]:
        """GetInfo; see `AMRGrpcClient.info`."""
        response, _ = await self._unary("GetInfo", pb.GetInfoRequest())
        return to_dict(response, absent_as_none=True)

    async def set_policy(self, path: str, version: str) -> PolicyStatus:
        """SetPolicy; see `AMRClient.set_policy`."""
        request = fill(pb.PolicyUpdate(), build_policy_body(path, version))
        response, request_id = await self._unary("SetPolicy", request)
        return _validate(PolicyStatus, to_dict(response), request_id)

    async def get_policy(self) -> PolicyStatus:
        """GetPolicy; see `AMRGrpcClient.get_policy`."""
        response, request_id = await self._unary("GetPolicy", pb.GetPolicyRequest())
        return _validate(PolicyStatus, to_dict(response), request_id)

    async def ready(self) -> bool:
        """See `AMRGrpcClient.ready`: True only while the server reports SERVING."""
        try:
            response = await self._aio.open().health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), metadata=self._metadata(),
                timeout=self.timeout)
        except grpc.RpcError as exc:
            return _ready_failure(exc, self.target)
        return _ready_answer(response)

    async def _close_connection(self) -> None:
        await self._aio.close()

    async def _unary(self, method: str, request, idempotency_key: str | None = None):
        """`(response, request_id)` of a unary call, retried as `AsyncAMRClient._send` retries."""
        metadata = self._metadata(idempotency_key)

        async def attempt():
            with rpc_errors(self.target):
                call = getattr(self._aio.open().stub, method)(request, metadata=metadata,
                                                              timeout=self.timeout)
                response = await call
                return response, _request_id(await call.initial_metadata())

        return await retried_async(attempt, self.max_retries, self._sleep)
