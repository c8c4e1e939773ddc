"""Every error the amr-sd client raises. Catch `AMRError` for all of them.

    AMRError
    ├── InvalidRequestError           the request is wrong before it is sent: field, errors
    ├── APIConnectionError            the request never got an HTTP answer (refused, reset, DNS...)
    │   └── APITimeoutError           ... because a connect/read/write/pool timeout passed
    └── APIStatusError                the server answered 4xx/5xx: status_code, request_id, body,
        │                             headers, message, type, field (from {"error": {...}})
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

Any other status raises `APIStatusError` itself; `status_error` is the one status -> class map,
over either transport. Client-side validation of a request raises `InvalidRequestError` (also a
ValueError), naming the field as the server's 422 would (`groups[0].rollouts[0].token_ids[0]`).

Over gRPC the same classes are raised: the server's error details name the HTTP status (see
docs/grpc.md), so `status_code` and `type` are the ones HTTP would give; `response` is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only HTTP errors carry httpx objects; the classes themselves need no httpx
    import httpx

__all__ = [
    "AMRError", "InvalidRequestError", "APIConnectionError", "APITimeoutError", "APIStatusError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "ConflictError", "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError",
    "InternalServerError", "ServiceUnavailableError", "GatewayTimeoutError",
]


class AMRError(Exception):
    """Base of every error raised by the amr-sd client."""


class InvalidRequestError(AMRError, ValueError):
    """The request was refused before it was sent: the server would answer 422 to it.

    `field` is the first bad field in the server's path format ("groups[0].rollouts[1].reward",
    None for the request as a whole); `errors` lists every problem as
    `{"field": ..., "message": ..., "type": ...}`.
    """

    def __init__(self, message: str, *, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None):
        self.message = message
        self.field = field
        self.errors = errors if errors is not None else [{"field": field, "message": message,
                                                          "type": "invalid_request"}]
        super().__init__(f"invalid request at {field}: {message}" if field else
                         f"invalid request: {message}")


def field_path(loc: tuple | list) -> str:
    """('groups', 2, 'rollouts', 0, 'reward') -> 'groups[2].rollouts[0].reward', as the server
    names a field in its 422s."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class APIConnectionError(AMRError):
    """No HTTP response came back; `request` is the request that failed, when known, and
    `attempts` how many tries were made before giving up (set by the retry loop)."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None):
        super().__init__(message)
        self.message = message
        self.request = request
        self.attempts = 1

    def gave_up_after(self, attempts: int) -> None:
        """Record that the retry loop stopped after `attempts` tries, in the message too."""
        self.attempts = attempts
        self.args = (f"{self.message} (gave up after {attempts} attempt"
                     f"{'' if attempts == 1 else 's'})",)


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout passed (see the client's `timeout=`)."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None):
        super().__init__(message, request=request)


class APIStatusError(AMRError):
    """The server answered with a 4xx or 5xx status (or a 2xx whose body breaks the contract,
    with `type` "invalid_response"), over HTTP or gRPC.

    `status_code` is the HTTP status (over gRPC, the one the server's error details name);
    `body` is the parsed JSON body (or the text when it is not JSON); `message`, `type` and
    `field` come from the server's `{"error": {...}}` envelope; `headers` are the answer's
    headers (over gRPC, `x-request-id` and a `retry-after` from the status details, lower-case
    names); `request_id` is the server's `X-Request-ID`, the id to quote when reporting a
    problem. `response` is the httpx.Response over HTTP (for an error line of a stream, the
    stream's own response), None over gRPC.
    """

    def __init__(self, message: str, *, body: Any, response: httpx.Response | None = None,
                 status_code: int | None = None, headers: Mapping[str, str] | None = None,
                 type: str | None = None, field: str | None = None):
        if response is not None:  # an HTTP answer: what is not given is read from it
            status_code = response.status_code if status_code is None else status_code
            headers = response.headers if headers is None else headers
        if status_code is None:
            raise TypeError("APIStatusError needs the status_code (or the HTTP response)")
        self.response = response
        self.status_code = status_code
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.request_id = self.headers.get("x-request-id")
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


def status_error(status_code: int, body: Any, *, headers: Mapping[str, str] | None = None,
                 reason: str = "", response: httpx.Response | None = None) -> APIStatusError:
    """The exception for a 4xx/5xx answer over either transport: the only status -> class map.

    `body` is the answer's parsed body, amr-sd's `{"error": {type, message, field}}` or whatever
    a proxy sent; `reason` is the status line's phrase, the message when the body gives none.
    """
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict):
        message = str(envelope.get("message") or reason)
        kind = envelope.get("type")
        field = envelope.get("field")
    else:
        message = (body if isinstance(body, str) else "") or reason or "error"
        kind = field = None
    cls = _STATUS_ERRORS.get(status_code, APIStatusError)
    if status_code == 409 and kind == "policy_mismatch":
        cls = PolicyMismatchError
    return cls(message, status_code=status_code, headers=headers, response=response, body=body,
               type=kind, field=field)
