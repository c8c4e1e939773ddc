"""The server's error tree. Every error a user can cause names the field and the reason.

    AmrError                 status_code, type (500 internal_error: a bug of ours)
    ├── Unauthenticated      401: no bearer token while API keys are configured
    ├── Forbidden            403: a bearer token that is not one of the keys
    │   └── PolicyDisabled   403: a weights folder was named but AMR_POLICY_ROOT is not set
    ├── Conflict             409: the same Idempotency-Key is still in flight
    │   └── PolicyMismatch   409: the request requires another policy version than the one served
    ├── NotAcceptable        406: the Accept header names no type the service can produce
    ├── InvalidRequest       422: a field is wrong (`field` = "groups[2].rollouts[0].token_ids")
    ├── PayloadTooLarge      413: over a size cap; the message names the cap
    ├── Overloaded           429 + Retry-After: the pending-work bound is full; retry later
    ├── ServiceNotReady      503 + Retry-After: still starting
    ├── Draining             503 + Retry-After: shutting down; retry (another replica)
    ├── PolicyReloading      503 + Retry-After: new weights are loading for longer than a request waits
    ├── EngineFailure        503: the engine failed or returned something the scorer must not trust
    │   └── EngineDead       503: the engine process died; this process exits for a restart
    └── DeadlineExceeded     504: the request's deadline passed; its engine work was aborted
"""

from __future__ import annotations


class AmrError(Exception):
    status_code = 500
    type = "internal_error"
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
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(AmrError):
    status_code = 403
    type = "forbidden"


class PolicyDisabled(Forbidden):
    type = "policy_disabled"


class Conflict(AmrError):
    status_code = 409
    type = "conflict"


class PolicyMismatch(Conflict):
    type = "policy_mismatch"


class NotAcceptable(AmrError):
    status_code = 406
    type = "not_acceptable"


class InvalidRequest(AmrError):
    status_code = 422
    type = "invalid_request"


class PayloadTooLarge(AmrError):
    status_code = 413
    type = "payload_too_large"


class Overloaded(AmrError):
    status_code = 429
    type = "overloaded"


class ServiceNotReady(AmrError):
    status_code = 503
    type = "not_ready"
    headers = {"Retry-After": "5"}


class Draining(AmrError):
    status_code = 503
    type = "draining"
    headers = {"Retry-After": "5"}


class PolicyReloading(AmrError):
    status_code = 503
    type = "reloading"
    headers = {"Retry-After": "2"}


class EngineFailure(AmrError):
    status_code = 503
    type = "engine_error"


class EngineDead(EngineFailure):
    type = "engine_dead"
    headers = {"Retry-After": "10"}


class DeadlineExceeded(AmrError):
    status_code = 504
    type = "deadline_exceeded"


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
