"""Batch statistics: what a request's credit looked like, so the risks docs/method.md lists
("Known risks to surface in metrics, not hide") show up in every response and in Prometheus.

One `BatchTally` adds up everything: each group's share as the group is combined, the groups of
a request into its `BatchStats`, and the requests of a file in `amr-sd score` (from their
`BatchStats`, `BatchTally.of`). Sums and rates are defined once, here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from amr_client.schemas import BatchStats, BranchStats, ReflectionRecord


def _add(total, other) -> None:
    """Adds `other`'s fields into `total`'s: numbers sum, lists extend, counters and branches add."""
    for f in fields(total):
        mine = getattr(total, f.name)
        mine += getattr(other, f.name)
        setattr(total, f.name, mine)


@dataclass
class Branch:
    """One side of the gate: its rollouts' gated counts and CIG on the tokens it may gate."""

    rollouts: int = 0
    reflected_tokens: int = 0
    gated_tokens: int = 0
    cig: list = field(default_factory=list)  # (T_i,) arrays: the CIG of its gateable tokens

    def __iadd__(self, other: Branch) -> Branch:
        _add(self, other)
        return self

    @property
    def gate_rate(self) -> float:
        return self.gated_tokens / self.reflected_tokens if self.reflected_tokens else 0.0

    def stats(self, tau: float) -> BranchStats:
        if not self.reflected_tokens:
            return BranchStats(rollouts=self.rollouts, tau=tau)
        p01, p05, p50, p95, p99 = np.quantile(np.concatenate(self.cig), (0.01, 0.05, 0.5, 0.95, 0.99))
        return BranchStats(rollouts=self.rollouts, reflected_tokens=self.reflected_tokens, tau=tau,
                           gated_tokens=self.gated_tokens, gate_rate=self.gate_rate,
                           cig_p01=p01, cig_p05=p05, cig_p50=p50, cig_p95=p95, cig_p99=p99)


@dataclass
class BatchTally:
    """Counts and sums over groups; `+=` adds another tally (a group, a request)."""

    groups: int = 0
    rollouts: int = 0
    response_tokens: int = 0
    tokens_scored: int = 0  # response tokens the engine teacher-forced, per pass
    reflected_tokens: int = 0
    gated_tokens: int = 0
    nonfinite_cig: int = 0
    reflections_requested: int = 0
    reflections_generated: int = 0
    reflections_cached: int = 0
    reflections_accepted: int = 0
    scores_cached: int = 0
    reject_reasons: collections.Counter = field(default_factory=collections.Counter)
    abs_advantage: float = 0.0  # Σ |Â| over response tokens
    abs_base_advantage: float = 0.0  # Σ |A| over response tokens
    cig: list = field(default_factory=list)  # (T_i,) clipped CIG of each reflected rollout
    gated_ids: collections.Counter = field(default_factory=collections.Counter)
    positive: Branch = field(default_factory=Branch)
    negative: Branch = field(default_factory=Branch)

    def __iadd__(self, other: BatchTally) -> BatchTally:
        _add(self, other)
        return self

    @classmethod
    def of(cls, stats: BatchStats) -> BatchTally:
        """A scored request's tally, from its stats: every count and sum, none of the per-token
        CIG or gated ids, which stats do not carry."""
        tokens = stats.response_tokens
        return cls(
            groups=stats.groups, rollouts=stats.rollouts, response_tokens=tokens,
            tokens_scored=stats.tokens_scored, reflected_tokens=stats.reflected_tokens,
            gated_tokens=stats.gated_tokens, nonfinite_cig=stats.nonfinite_cig,
            reflections_requested=stats.reflections_requested,
            reflections_generated=stats.reflections_generated,
            reflections_cached=stats.reflections_cached,
            reflections_accepted=stats.reflections_accepted, scores_cached=stats.scores_cached,
            reject_reasons=collections.Counter(stats.reject_reasons),
            abs_advantage=stats.mean_abs_advantage * tokens,
            abs_base_advantage=stats.mean_abs_base_advantage * tokens,
            positive=_branch_of(stats.positive), negative=_branch_of(stats.negative))

    # ---------------------------------------------------------------- one group's share

    def count_rollout(self, n_tokens: int, advantages: np.ndarray, base_advantage: float) -> None:
        self.response_tokens += n_tokens
        self.abs_advantage += float(np.abs(advantages).sum())
        self.abs_base_advantage += abs(base_advantage) * n_tokens

    def count_reflection(self, record: ReflectionRecord) -> None:
        self.reflections_requested += 1
        self.reflections_accepted += record.accepted
        self.reflections_cached += record.cached
        # Each attempt was one writer generation; a cached record's ran for an earlier request.
        self.reflections_generated += 0 if record.cached else record.attempts
        if not record.accepted:
            self.reject_reasons[record.reject_reason] += 1

    def count_gate(self, positive: bool, tokens: np.ndarray, cig: np.ndarray, bad: np.ndarray,
                   gateable: np.ndarray, gated: np.ndarray) -> None:
        """A reflected rollout's gate: tokens (T,), its clipped CIG, non-finite, gateable and
        gated masks (T,)."""
        n_gated = int(gated.sum())
        self.cig.append(cig)
        self.reflected_tokens += len(tokens)
        self.gated_tokens += n_gated
        branch = self.positive if positive else self.negative
        branch.rollouts += 1
        branch.gated_tokens += n_gated
        branch.cig.append(cig[gateable])
        branch.reflected_tokens += int(gateable.sum())
        self.nonfinite_cig += int(bad.sum())
        self.gated_ids.update(tokens[gated].tolist())

    def count_passes(self, n_tokens: int, scored: int, cached: int) -> None:
        self.tokens_scored += n_tokens * scored
        self.scores_cached += cached

    # ---------------------------------------------------------------- rates

    @property
    def gate_rate(self) -> float:
        return self.gated_tokens / self.reflected_tokens if self.reflected_tokens else 0.0

    @property
    def acceptance_rate(self) -> float:
        requested = self.reflections_requested
        return self.reflections_accepted / requested if requested else 0.0

    @property
    def mean_abs_advantage(self) -> float:
        return self.abs_advantage / self.response_tokens if self.response_tokens else 0.0

    @property
    def mean_abs_base_advantage(self) -> float:
        return self.abs_base_advantage / self.response_tokens if self.response_tokens else 0.0

    def batch_stats(self, tau_pos: float, tau_neg: float,
                    token_name: Callable[[int], str]) -> BatchStats:
        cig_all = np.concatenate(self.cig) if self.cig else np.zeros(0)
        return BatchStats(
            groups=self.groups,
            rollouts=self.rollouts,
            response_tokens=self.response_tokens,
            tokens_scored=self.tokens_scored,
            reflected_tokens=self.reflected_tokens,
            gated_tokens=self.gated_tokens,
            gate_rate=self.gate_rate,
            reflections_requested=self.reflections_requested,
            reflections_generated=self.reflections_generated,
            reflections_cached=self.reflections_cached,
            scores_cached=self.scores_cached,
            reflections_accepted=self.reflections_accepted,
            reflections_rejected=self.reflections_requested - self.reflections_accepted,
            acceptance_rate=self.acceptance_rate,
            reject_reasons=dict(self.reject_reasons),
            cig_mean=float(cig_all.mean()) if cig_all.size else 0.0,
            cig_std=float(cig_all.std()) if cig_all.size else 0.0,
            nonfinite_cig=self.nonfinite_cig,
            mean_abs_base_advantage=self.mean_abs_base_advantage,
            mean_abs_advantage=self.mean_abs_advantage,
            top_gated_tokens=[(token_name(i), n) for i, n in self.gated_ids.most_common(10)],
            positive=self.positive.stats(tau_pos), negative=self.negative.stats(tau_neg),
        )


def _branch_of(stats: BranchStats) -> Branch:
    return Branch(rollouts=stats.rollouts, reflected_tokens=stats.reflected_tokens,
                  gated_tokens=stats.gated_tokens)
