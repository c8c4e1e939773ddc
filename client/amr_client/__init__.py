"""amr-sd client SDK: `AMRClient` / `AsyncAMRClient`, `ScoreResult`, the error tree and the wire
contract (`amr_client.schemas`). Needs only httpx, pydantic and numpy (torch is optional)."""

from amr_client._client import AMRClient, AsyncAMRClient
from amr_client._exceptions import (
    AMRError,
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
from amr_client.results import ScoreResult
from amr_client.streams import AsyncScoreStream, ScoreStream
from amr_client.schemas import (
    Group,
    Message,
    PolicyRef,
    PolicyStatus,
    PolicyUpdate,
    Prompt,
    Reference,
    ReturnSwitches,
    Rollout,
    ScoredGroup,
    ScoredRollout,
    ScoreRequest,
    ScoreResponse,
    ScoringConfig,
)

__all__ = [
    "Group", "Message", "PolicyRef", "PolicyStatus", "PolicyUpdate", "Prompt", "Reference", "ReturnSwitches", "Rollout", "ScoredGroup",
    "ScoredRollout", "ScoreRequest", "ScoreResponse", "ScoringConfig",
    "AMRClient", "AsyncAMRClient", "ScoreResult", "ScoreStream", "AsyncScoreStream",
    "AMRError", "APIConnectionError", "APITimeoutError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "PolicyMismatchError",
    "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError", "InternalServerError",
    "ServiceUnavailableError", "GatewayTimeoutError",
]
