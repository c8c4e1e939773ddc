"""amr-sd client SDK: the wire contract (`amr_client.schemas`)."""

from amr_client.schemas import (
    Group,
    Message,
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
    "Group", "Message", "Prompt", "Reference", "ReturnSwitches", "Rollout", "ScoredGroup",
    "ScoredRollout", "ScoreRequest", "ScoreResponse", "ScoringConfig",
]
