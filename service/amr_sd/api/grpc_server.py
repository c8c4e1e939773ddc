"""gRPC over the runtime (package amr_sd.v1, proto/amr_sd/v1/scoring.proto): each method
translates its message to the wire models, calls the runtime and translates back.

Beside `amr_sd.v1.Scoring` the server carries the standard `grpc.health.v1.Health` service
(SERVING only while the runtime is ready) and server reflection. Metadata: `authorization`,
`idempotency-key`, `x-request-id` (echoed in the answer's initial metadata). An AmrError becomes
its class's status code with google.rpc.Status details: ErrorInfo (reason = the HTTP envelope's
type; metadata: the HTTP status, the field), BadRequest naming the field for INVALID_ARGUMENT,
RetryInfo where HTTP would send Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid

import grpc
import orjson
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from pydantic import ValidationError

from amr_client.grpc_codec import fill, to_dict
from amr_client.schemas import PolicyUpdate, ScoreRequest, ScoreResponse
from amr_client.v1 import scoring_pb2 as pb
from amr_client.v1 import scoring_pb2_grpc as pb_grpc
from amr_sd.errors import AmrError, InvalidRequest, from_envelope, from_validation_error
from amr_sd.runtime import Answer, Call, Phase, Runtime

log = logging.getLogger("amr_sd.grpc")

SERVICE = pb.DESCRIPTOR.services_by_name["Scoring"].full_name
# An answer carries 4-byte floats per token (up to 4 arrays) where the request carries ~3-byte
# token ids, so the send bound is a multiple of the receive bound (the HTTP body cap).
SEND_FACTOR = 8


class ScoringServicer(pb_grpc.ScoringServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        async with self._call(context, "Score") as meta:
            answer = await self.runtime.score(_parse(ScoreRequest, request),
                                              self._call_of(request, context, meta))
            # A 512 x 1024 answer takes a second to build: off the loop, as HTTP's JSON is.
            return await asyncio.to_thread(_score_response, answer)

    async def ScoreStream(self, request: pb.ScoreRequest, context):
        async with self._call(context, "ScoreStream") as meta:
            opened = await self.runtime.open_stream(_parse(ScoreRequest, request),
                                                    self._call_of(request, context, meta))
            if isinstance(opened, Answer):  # a replay: the stored answer, group by group
                response = _score_response(opened)
                for index, group in enumerate(response.groups):
                    yield pb.ScoreStreamMessage(group=pb.StreamedGroup(index=index, group=group))
                yield pb.ScoreStreamMessage(end=_end_of(response))
                return
            async with contextlib.aclosing(opened.items()) as items:
                async for item in items:
                    if isinstance(item, ScoreResponse):
                        end = fill(pb.StreamedEnd(), item.model_dump(exclude={"groups"}))
                        yield pb.ScoreStreamMessage(end=end)
                    else:
                        group = fill(pb.ScoredGroup(), item[1].model_dump())
                        yield pb.ScoreStreamMessage(group=pb.StreamedGroup(index=item[0], group=group))

    async def GetInfo(self, request, context) -> pb.Info:
        async with self._call(context, "GetInfo"):
            return fill(pb.Info(), self.runtime.info())

    async def SetPolicy(self, request: pb.PolicyUpdate, context) -> pb.PolicyStatus:
        async with self._call(context, "SetPolicy"):
            update = _parse(PolicyUpdate, request)
            status = await self.runtime.set_policy(update, self.runtime.timeout_s(_remaining(context)))
            return fill(pb.PolicyStatus(), status.model_dump())

    async def GetPolicy(self, request, context) -> pb.PolicyStatus:
        async with self._call(context, "GetPolicy"):
            status = await self.runtime.get_policy()
            return fill(pb.PolicyStatus(), status.model_dump())

    def _call_of(self, request: pb.ScoreRequest, context, meta: dict) -> Call:
        key = fingerprint = None
        if "idempotency-key" in meta:
            key = meta["idempotency-key"]
            # Deterministic serialisation: a resent message has the same bytes. The prefix keeps
            # a key used over HTTP from matching a gRPC request (a key belongs to one transport).
            wire = request.SerializeToString(deterministic=True)
            fingerprint = "grpc:" + hashlib.sha256(wire).hexdigest()
        return Call(timeout_s=self.runtime.timeout_s(_remaining(context)), idempotency_key=key,
                    fingerprint=fingerprint, identity=meta.get("authorization"))

    @contextlib.asynccontextmanager
    async def _call(self, context, method: str):
        """Per call: metadata, the key and drain checks, in-flight counting, metrics, one log
        line, and every error as its status code with details."""
        runtime, metrics = self.runtime, self.runtime.metrics
        meta = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        request_id = meta.get("x-request-id") or uuid.uuid4().hex
        await context.send_initial_metadata((("x-request-id", request_id),))
        route, start, code = f"grpc:{method}", time.perf_counter(), grpc.StatusCode.OK
        metrics.in_flight.inc()
        try:
            with runtime.tracking():
                try:
                    runtime.authenticate(meta.get("authorization"))
                    runtime.accept()
                    yield meta
                except AmrError as exc:
                    code = getattr(grpc.StatusCode, exc.grpc_code)
                    await _abort(context, exc, request_id)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception:
                    log.exception("internal error, id=%s", request_id)
                    code = grpc.StatusCode.INTERNAL
                    await _abort(context, AmrError("internal error; quote the x-request-id when "
                                                   "reporting it"), request_id)
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(route=route, status=code.name).inc()
            metrics.request_duration.labels(route=route).observe(time.perf_counter() - start)
            log.info("grpc %s %s %.3fs id=%s", method, code.name, time.perf_counter() - start,
                     request_id)


def _remaining(context) -> float | None:
    remaining = context.time_remaining()
    # Stop our own clock a little before the caller's, so the answer is ours (with details) and
    # the engine work is aborted by the time it is sent.
    return None if remaining is None else max(remaining - 0.05, 0.001)


def _parse(model, message):
    try:
        return model.model_validate(to_dict(message))
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _score_response(answer: Answer) -> pb.ScoreResponse:
    if answer.status != 200:  # a stored error, replayed
        raise from_envelope(answer.status, orjson.loads(answer.json))
    return fill(pb.ScoreResponse(), answer.model().model_dump())


def _end_of(response: pb.ScoreResponse) -> pb.StreamedEnd:
    end = pb.StreamedEnd()
    for field in end.DESCRIPTOR.fields:
        if field.message_type is not None:
            getattr(end, field.name).CopyFrom(getattr(response, field.name))
        elif not field.has_presence or response.HasField(field.name):
            setattr(end, field.name, getattr(response, field.name))
    return end


def error_status(exc: AmrError, request_id: str) -> grpc.Status:
    """The grpc.Status (with google.rpc details in its trailing metadata) of an AmrError."""
    metadata = {"status": str(exc.status_code), "request_id": request_id}
    if exc.field is not None:
        metadata["field"] = exc.field
    details = [error_details_pb2.ErrorInfo(reason=exc.type, domain="amr-sd", metadata=metadata)]
    if isinstance(exc, InvalidRequest) and exc.field is not None:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)]))
    retry_after = exc.headers.get("Retry-After")
    if retry_after is not None:
        details.append(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(float(retry_after)))))
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    code = getattr(grpc.StatusCode, exc.grpc_code)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=exc.message,
                                                  details=packed))


async def _abort(context, exc: AmrError, request_id: str) -> None:
    status = error_status(exc, request_id)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _mirror_health(runtime: Runtime, servicer: health.aio.HealthServicer) -> None:
    """SERVING while the runtime is ready; NOT_SERVING while starting, draining or dead."""
    async for phase in runtime.phases():
        status = health_pb2.HealthCheckResponse.SERVING if phase is Phase.READY else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await servicer.set(name, status)


class GrpcServer:
    """The gRPC front end on the caller's event loop: `await start()`, later `await stop()`."""

    def __init__(self, runtime: Runtime, host: str, port: int):
        limit = runtime.settings.max_body_bytes
        self.runtime = runtime
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit * SEND_FACTOR),
        ])
        pb_grpc.add_ScoringServicer_to_server(ScoringServicer(runtime), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.address = f"{host}:{port}"
        self._mirror: asyncio.Task | None = None

    async def start(self) -> None:
        if self.server.add_insecure_port(self.address) == 0:
            raise OSError(f"gRPC could not listen on {self.address}")
        await self.server.start()
        self._mirror = asyncio.create_task(_mirror_health(self.runtime, self.health))
        log.info("gRPC listening on %s", self.address)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._mirror is not None:
            self._mirror.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
