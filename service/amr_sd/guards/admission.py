"""Admission control: a bounded amount of pending work, refused early with a retry estimate.

Pending work is the rollouts (sequences) and response tokens of the requests admitted and not yet
answered. A request that would take either over its bound gets 429 before any engine work, so
the queue in front of the engine never grows without bound; a request larger than a whole bound
could never be admitted and gets 413. Retry-After is the time the current backlog needs at the
recent drain rate (response tokens answered per second over the last minute), so clients that
honour it come back roughly when there is room, instead of all at once.

Before admission, `request_size` holds one request to the fixed size caps (413).

Single event loop: admit and release run on it without awaiting, so no lock is needed.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from amr_client.schemas import ScoreRequest
from amr_sd.errors import Overloaded, PayloadTooLarge

RATE_WINDOW_S = 60.0
# Before anything has drained there is no rate to estimate from; a short wait is a fair guess.
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 60


def request_size(request: ScoreRequest, max_groups: int, max_rollouts: int,
                 max_tokens: int) -> tuple[int, int]:
    """The request's (rollouts, response tokens); 413 if it is over a size cap."""
    rollouts = sum(len(g.rollouts) for g in request.groups)
    tokens = sum(len(r.token_ids) for g in request.groups for r in g.rollouts)
    for what, value, cap in (("groups", len(request.groups), max_groups),
                             ("rollouts", rollouts, max_rollouts),
                             ("response tokens", tokens, max_tokens)):
        if value > cap:
            raise PayloadTooLarge(f"{value} {what} in one request; the cap is {cap}", field="groups")
    return rollouts, tokens


@dataclass(frozen=True)
class Ticket:
    sequences: int
    tokens: int


class Admission:
    def __init__(self, max_sequences: int, max_tokens: int,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self.pending_sequences = 0
        self.pending_tokens = 0
        self._clock = clock
        self._drained: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)

    def admit(self, sequences: int, tokens: int) -> Ticket:
        """Reserve room for a request, or raise: 413 if it can never fit, 429 if not now."""
        for what, value, bound in (("rollouts", sequences, self.max_sequences),
                                   ("response tokens", tokens, self.max_tokens)):
            if value > bound:
                raise PayloadTooLarge(f"{value} {what} in one request; the pending-work cap is {bound}",
                                      field="groups")
        if (self.pending_sequences + sequences > self.max_sequences
                or self.pending_tokens + tokens > self.max_tokens):
            retry_after = self.retry_after_s()
            raise Overloaded(
                f"pending work is at its bound ({self.pending_sequences} rollouts, "
                f"{self.pending_tokens} response tokens); retry in about {retry_after} s",
                headers={"Retry-After": str(retry_after)})
        self.pending_sequences += sequences
        self.pending_tokens += tokens
        return Ticket(sequences, tokens)

    def release(self, ticket: Ticket, *, completed: bool) -> None:
        """Give the room back; `completed` work also counts toward the drain rate."""
        self.pending_sequences -= ticket.sequences
        self.pending_tokens -= ticket.tokens
        if completed:
            self._drained.append((self._clock(), max(ticket.tokens, 1)))

    def drain_rate(self) -> float | None:
        """Response tokens answered per second over the last `RATE_WINDOW_S`; None if none."""
        now = self._clock()
        while self._drained and self._drained[0][0] < now - RATE_WINDOW_S:
            self._drained.popleft()
        if not self._drained:
            return None
        span = max(now - self._drained[0][0], 1.0)
        return sum(tokens for _, tokens in self._drained) / span

    def retry_after_s(self) -> int:
        rate = self.drain_rate()
        if rate is None:
            return DEFAULT_RETRY_AFTER_S
        return min(max(math.ceil(self.pending_tokens / rate), 1), MAX_RETRY_AFTER_S)
