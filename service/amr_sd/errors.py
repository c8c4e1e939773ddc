"""The server's error tree. Every error a user can cause names the field and the reason.

    AmrError                 status_code, type
    ├── InvalidRequest       422: a field is wrong (`field` = "groups[2].rollouts[0].token_ids")
    ├── PayloadTooLarge      413: over a size cap; the message names the cap
    ├── ServiceNotReady      503 + Retry-After: still starting
    └── EngineFailure        503: the engine failed or returned something the scorer must not trust
"""

from __future__ import annotations


class AmrError(Exception):
    status_code = 500
    type = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"type": self.type, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidRequest(AmrError):
    status_code = 422
    type = "invalid_request"


class PayloadTooLarge(AmrError):
    status_code = 413
    type = "payload_too_large"


class ServiceNotReady(AmrError):
    status_code = 503
    type = "not_ready"
    headers = {"Retry-After": "5"}


class EngineFailure(AmrError):
    status_code = 503
    type = "engine_error"


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
