"""amr-sd client SDK: `AMRClient` / `AsyncAMRClient`, `ScoreResult`, the error tree and the wire
contract (`amr_client.schemas`). Needs only httpx, pydantic, numpy and msgpack (torch is optional).

`AMRGrpcClient` / `AsyncAMRGrpcClient` (the same API over gRPC) load on first use, so importing
the SDK does not import grpc; they need `pip install "amr-sd[grpc]"`."""

from typing import TYPE_CHECKING

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
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyMismatchError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from amr_client._version import __version__
from amr_client.replicas import AsyncReplicaClient, FanOutError, ReplicaClient
from amr_client.results import ScoreResult
from amr_client.shards import ReplicaMismatchError
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
    "__version__",
    "Group", "Message", "PolicyRef", "PolicyStatus", "PolicyUpdate", "Prompt", "Reference", "ReturnSwitches", "Rollout", "ScoredGroup",
    "ScoredRollout", "ScoreRequest", "ScoreResponse", "ScoringConfig",
    "AMRClient", "AsyncAMRClient", "ReplicaClient", "AsyncReplicaClient", "ScoreResult", "ScoreStream", "AsyncScoreStream",
    "AMRError", "InvalidRequestError", "APIConnectionError", "APITimeoutError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "PolicyMismatchError", "FanOutError", "ReplicaMismatchError",
    "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError", "InternalServerError",
    "ServiceUnavailableError", "GatewayTimeoutError",
]

if TYPE_CHECKING:
    from amr_client.grpc_client import AMRGrpcClient, AsyncAMRGrpcClient

# Left out of __all__: `from amr_client import *` would otherwise import grpc, or fail without it.
_GRPC_CLIENTS = frozenset({"AMRGrpcClient", "AsyncAMRGrpcClient"})


def __getattr__(name: str):
    # PEP 562: only `amr_client.AMRGrpcClient` (or `from amr_client import ...`) pays for grpc.
    if name in _GRPC_CLIENTS:
        from amr_client import grpc_client  # its ImportError names `pip install "amr-sd[grpc]"`

        return getattr(grpc_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
