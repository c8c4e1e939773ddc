"""Every error the amr-sd client raises. Catch `AMRError` for all of them.

    AMRError
    ├── APIConnectionError            the request never got an HTTP answer (refused, reset, DNS...)
    │   └── APITimeoutError           ... because a connect/read/write/pool timeout passed
    └── APIStatusError                the server answered 4xx/5xx: status_code, request_id, body,
        │                             message, type, field (from {"error": {type, message, field}})
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── ConflictError             409  same Idempotency-Key still in flight
        ├── PayloadTooLargeError      413  payload or token caps
        ├── UnprocessableEntityError  422  a field is wrong; `field` names it
        ├── RateLimitError            429  the server's queue is full (Retry-After)
        ├── InternalServerError       500
        ├── ServiceUnavailableError   503  not ready, draining or engine failure (Retry-After)
        └── GatewayTimeoutError       504  the server's deadline passed

Any other status raises `APIStatusError` itself. Client-side validation of a request raises
pydantic's `ValidationError` unchanged (the same error the server would turn into a 422).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "AMRError", "APIConnectionError", "APITimeoutError", "APIStatusError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "ConflictError", "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError",
    "InternalServerError", "ServiceUnavailableError", "GatewayTimeoutError",
]


class AMRError(Exception):
    """Base of every error raised by the amr-sd client."""


class APIConnectionError(AMRError):
    """No HTTP response came back; `request` is the request that failed, when known."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None):
        super().__init__(message)
        self.message = message
        self.request = request


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout passed (see the client's `timeout=`)."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None):
        super().__init__(message, request=request)


class APIStatusError(AMRError):
    """The server answered with a 4xx or 5xx status (or a 2xx whose body breaks the contract,
    with `type` "invalid_response").

    `body` is the parsed JSON body (or the text when it is not JSON); `message`, `type` and
    `field` come from the server's `{"error": {...}}` envelope; `request_id` is the server's
    `X-Request-ID`, the id to quote when reporting a problem.
    """

    def __init__(self, message: str, *, response: httpx.Response, body: Any,
                 type: str | None = None, field: str | None = None):
        self.response = response
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id")
        self.body = body
        self.message = message
        self.type = type
        self.field = field
        super().__init__(self._describe())

    def _describe(self) -> str:
        head = " ".join(str(p) for p in (self.status_code, self.type) if p)
        if self.field:
            head += f" at {self.field}"
        text = f"{head}: {self.message}"
        return f"{text} (request_id={self.request_id})" if self.request_id else text


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong `api_key`."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: usually a wrong `base_url`."""


class ConflictError(APIStatusError):
    """409: a request with the same Idempotency-Key is still being scored."""


class PolicyMismatchError(ConflictError):
    """409 `policy_mismatch`: the service holds another policy version than the one required.

    Not retried: push the weights (`set_policy`) or drop the requirement."""


class PayloadTooLargeError(APIStatusError):
    """413: the request exceeds the server's payload or token caps; send smaller batches."""


class UnprocessableEntityError(APIStatusError):
    """422: a field is invalid; `field` names it (e.g. "groups[2].rollouts[0].token_ids")."""


class RateLimitError(APIStatusError):
    """429: the server's queue is full; retried after its Retry-After."""


class InternalServerError(APIStatusError):
    """500: a server bug."""


class ServiceUnavailableError(APIStatusError):
    """503: the server is not ready, draining, or its engine failed; retried after Retry-After."""


class GatewayTimeoutError(APIStatusError):
    """504: the server's own deadline passed and it aborted the work."""
