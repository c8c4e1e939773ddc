"""The server's error tree. Every error a user can cause names the field and the reason.

Each class carries its HTTP status and its gRPC status code (a grpc.StatusCode name, so this
module needs no grpc):

    AmrError                 500 INTERNAL, type internal_error: a bug of ours
    ├── Unauthenticated      401 UNAUTHENTICATED: no bearer token while API keys are configured
    ├── Forbidden            403 PERMISSION_DENIED: a bearer token that is not one of the keys
    │   └── PolicyDisabled   403 PERMISSION_DENIED: a weights folder was named, AMR_POLICY_ROOT unset
    ├── Conflict             409 ABORTED: the same Idempotency-Key is still in flight
    │   └── PolicyMismatch   409 FAILED_PRECONDITION: another policy version than the one served
    ├── NotAcceptable        406 INVALID_ARGUMENT: the Accept header names no type we produce
    ├── InvalidRequest       422 INVALID_ARGUMENT: a field is wrong (`field` = "groups[2].rollouts[0].token_ids")
    ├── PayloadTooLarge      413 RESOURCE_EXHAUSTED: over a size cap; the message names the cap
    ├── Overloaded           429 RESOURCE_EXHAUSTED + Retry-After: the pending-work bound is full
    ├── ServiceNotReady      503 UNAVAILABLE + Retry-After: still starting
    ├── Draining             503 UNAVAILABLE + Retry-After: shutting down; retry (another replica)
    ├── PolicyReloading      503 UNAVAILABLE + Retry-After: new weights load longer than a request waits
    ├── EngineFailure        503 UNAVAILABLE: the engine failed or returned something untrustworthy
    │   └── EngineDead       503 UNAVAILABLE: the engine process died; this process exits for a restart
    └── DeadlineExceeded     504 DEADLINE_EXCEEDED: the deadline passed; its engine work was aborted
"""

from __future__ import annotations


class AmrError(Exception):
    status_code = 500
    type = "internal_error"
    grpc_code = "INTERNAL"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if headers is not None:
            self.headers = {**self.headers, **headers}

    def to_dict(self) -> dict:
        body = {"type": self.type, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Unauthenticated(AmrError):
    status_code = 401
    type = "unauthenticated"
    grpc_code = "UNAUTHENTICATED"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(AmrError):
    status_code = 403
    type = "forbidden"
    grpc_code = "PERMISSION_DENIED"


class PolicyDisabled(Forbidden):
    type = "policy_disabled"


class Conflict(AmrError):
    status_code = 409
    type = "conflict"
    grpc_code = "ABORTED"


class PolicyMismatch(Conflict):
    type = "policy_mismatch"
    grpc_code = "FAILED_PRECONDITION"


class NotAcceptable(AmrError):
    status_code = 406
    type = "not_acceptable"
    grpc_code = "INVALID_ARGUMENT"


class InvalidRequest(AmrError):
    status_code = 422
    type = "invalid_request"
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(AmrError):
    status_code = 413
    type = "payload_too_large"
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(AmrError):
    status_code = 429
    type = "overloaded"
    grpc_code = "RESOURCE_EXHAUSTED"


class ServiceNotReady(AmrError):
    status_code = 503
    type = "not_ready"
    grpc_code = "UNAVAILABLE"
    headers = {"Retry-After": "5"}


class Draining(AmrError):
    status_code = 503
    type = "draining"
    grpc_code = "UNAVAILABLE"
    headers = {"Retry-After": "5"}


class PolicyReloading(AmrError):
    status_code = 503
    type = "reloading"
    grpc_code = "UNAVAILABLE"
    headers = {"Retry-After": "2"}


class EngineFailure(AmrError):
    status_code = 503
    type = "engine_error"
    grpc_code = "UNAVAILABLE"


class EngineDead(EngineFailure):
    type = "engine_dead"
    headers = {"Retry-After": "10"}


class DeadlineExceeded(AmrError):
    status_code = 504
    type = "deadline_exceeded"
    grpc_code = "DEADLINE_EXCEEDED"


def field_path(loc: tuple) -> str:
    """('groups', 2, 'rollouts', 0, 'reward') -> 'groups[2].rollouts[0].reward'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_validation_error(exc, prefix: tuple = ()) -> InvalidRequest:
    """The first pydantic error as an InvalidRequest naming its field."""
    first = exc.errors()[0]
    loc = prefix + tuple(p for p in first["loc"] if p not in ("function-after",))
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequest(message, field=field_path(loc) or None)


def from_envelope(status: int, envelope: dict) -> AmrError:
    """A stored error answer (`{"error": {...}}` with its status) as the error it was."""
    detail = envelope["error"]
    todo, match = [AmrError], AmrError
    while todo:
        cls = todo.pop()
        if cls.status_code == status and cls.type == detail["type"]:
            match = cls
        todo.extend(cls.__subclasses__())
    error = match(detail["message"], field=detail.get("field"))
    error.status_code = status
    return error
