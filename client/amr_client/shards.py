"""One batch as shards of whole groups, and the shards' answers as one answer: no I/O here.

A group never splits (its reflections read its peers, its GRPO advantage its mean), so a
shard is a set of groups. `split` balances shards by response tokens (the engine's work scales
with them), longest group first onto the lightest shard; each shard keeps its groups in request
order. `merge` puts the scored groups back at their request positions and adds the shards'
stats up (`merge_stats`).

Every per-token number of a merged answer is the one a single server gives: groups are scored
independently. Of the stats, every count, rate, mean and standard deviation is exact; the CIG
percentiles of each branch and `top_gated_tokens` cannot be rebuilt from the shards' summaries,
so they are merged approximately (percentiles: the shards' values weighted by their reflected
tokens; top tokens: the shards' top-10 counts added). `gate_rate_target` calibrates the gate
over the whole request, so such a request is never split (`must_stay_whole`).
"""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Any

from amr_client._exceptions import AMRError
from amr_client.schemas import BatchStats, BranchStats, ScoredGroup, ScoreResponse, Timings

__all__ = ["ReplicaMismatchError", "group_tokens", "merge", "merge_stats", "must_stay_whole", "split"]

# Fields every shard's answer must agree on: a difference means replicas that serve another
# model, template or policy, whose answers must not be mixed.
_SAME_EVERYWHERE = ("model", "policy_version", "adapter", "template_version", "step", "anneal_weight")
_PERCENTILES = ("cig_p01", "cig_p05", "cig_p50", "cig_p95", "cig_p99")


class ReplicaMismatchError(AMRError):
    """The replicas' answers cannot be one answer: they name another model, policy version,
    adapter or reflection template (`field`), e.g. a replica not yet on the new weights."""

    def __init__(self, message: str, *, field: str, values: Mapping[str, Any]):
        self.field = field
        self.values = dict(values)
        super().__init__(message)


def group_tokens(group: Mapping[str, Any]) -> int:
    """A group's weight: its response tokens (at least one per rollout)."""
    return sum(max(1, len(r["token_ids"])) for r in group["rollouts"])


def must_stay_whole(body: Mapping[str, Any]) -> bool:
    """A request whose result depends on all its groups together: `gate_rate_target` sets each
    gate's margin from the whole request's CIG."""
    return (body.get("config") or {}).get("gate_rate_target") is not None


def split(weights: Sequence[int], n_shards: int) -> list[list[int]]:
    """Group indices per shard, at most `n_shards` non-empty shards, balanced by weight: the
    heaviest group goes to the lightest shard (LPT). Indices stay in request order per shard."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    n_shards = min(n_shards, len(weights))
    heap = [(0, s) for s in range(n_shards)]
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, s = heapq.heappop(heap)
        shards[s].append(index)
        heapq.heappush(heap, (load + weights[index], s))
    return [sorted(shard) for shard in shards if shard]


def merge(parts: Sequence[tuple[Sequence[int], ScoreResponse]], n_groups: int,
          names: Sequence[str] | None = None) -> ScoreResponse:
    """The answer to the whole request from `(group indices, shard answer)` pairs. Raises
    `ReplicaMismatchError` when the shards disagree on model, policy or template (`names`, the
    replicas that answered, go into its message)."""
    if not parts:
        raise ValueError("no shard answers to merge")
    names = list(names) if names is not None else [f"shard {i}" for i in range(len(parts))]
    first = parts[0][1]
    for field in _SAME_EVERYWHERE:
        values = {name: getattr(response, field) for name, (_, response) in zip(names, parts)}
        if len(set(map(repr, values.values()))) > 1:
            raise ReplicaMismatchError(
                f"replicas answered with different {field}: "
                + ", ".join(f"{name}: {value!r}" for name, value in values.items())
                + "; put every replica on the same model and policy (set_policy reaches them all)",
                field=field, values=values)
    groups: list[ScoredGroup | None] = [None] * n_groups
    for indices, response in parts:
        if len(indices) != len(response.groups):
            raise ValueError(f"a shard of {len(indices)} groups was answered with {len(response.groups)}")
        for index, group in zip(indices, response.groups):
            if groups[index] is not None:
                raise ValueError(f"group {index} was answered twice")
            groups[index] = group
    missing = [i for i, g in enumerate(groups) if g is None]
    if missing:
        raise ValueError(f"groups {missing} were not answered")
    return first.model_copy(update={"groups": groups,
                                    "stats": merge_stats([r.stats for _, r in parts])})


def merge_stats(parts: Sequence[BatchStats]) -> BatchStats:
    """The stats of the union of the shards' groups (see the module docstring for what is exact)."""
    if len(parts) == 1:
        return parts[0]
    total = {name: sum(getattr(p, name) for p in parts) for name in (
        "groups", "rollouts", "response_tokens", "tokens_scored", "reflected_tokens", "gated_tokens",
        "reflections_requested", "reflections_generated", "reflections_cached", "scores_cached",
        "reflections_accepted", "reflections_rejected", "nonfinite_cig")}
    reasons: collections.Counter = collections.Counter()
    top: collections.Counter = collections.Counter()
    for p in parts:
        reasons.update(p.reject_reasons)
        top.update({token: n for token, n in p.top_gated_tokens})
    tokens = total["response_tokens"]
    cig_mean, cig_std = _pooled([(p.reflected_tokens, p.cig_mean, p.cig_std) for p in parts])
    return BatchStats(
        **total,
        gate_rate=_ratio(total["gated_tokens"], total["reflected_tokens"]),
        acceptance_rate=_ratio(total["reflections_accepted"], total["reflections_requested"]),
        reject_reasons=dict(reasons),
        cig_mean=cig_mean, cig_std=cig_std,
        mean_abs_base_advantage=_ratio(sum(p.mean_abs_base_advantage * p.response_tokens for p in parts), tokens),
        mean_abs_advantage=_ratio(sum(p.mean_abs_advantage * p.response_tokens for p in parts), tokens),
        top_gated_tokens=[(token, n) for token, n in top.most_common(10)],
        # Shards run side by side: the work adds up, the wall time is the slowest shard's.
        timings=Timings(reflect_s=sum(p.timings.reflect_s for p in parts),
                        score_s=sum(p.timings.score_s for p in parts),
                        total_s=max(p.timings.total_s for p in parts)),
        positive=_merge_branch([p.positive for p in parts]),
        negative=_merge_branch([p.negative for p in parts]),
    )


def _merge_branch(parts: Sequence[BranchStats]) -> BranchStats:
    reflected = sum(p.reflected_tokens for p in parts)
    gated = sum(p.gated_tokens for p in parts)
    weighted = [p for p in parts if p.reflected_tokens]
    percentiles = {name: _ratio(sum(getattr(p, name) * p.reflected_tokens for p in weighted), reflected)
                   for name in _PERCENTILES}
    return BranchStats(rollouts=sum(p.rollouts for p in parts), reflected_tokens=reflected,
                       gated_tokens=gated, gate_rate=_ratio(gated, reflected),
                       tau=(weighted or parts)[0].tau, **percentiles)


def _pooled(parts: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the union of samples given as (n, mean, std)."""
    n = sum(count for count, _, _ in parts)
    if not n:
        return 0.0, 0.0
    mean = sum(count * m for count, m, _ in parts) / n
    second = sum(count * (s * s + (m - mean) ** 2) for count, m, s in parts) / n
    return mean, math.sqrt(max(second, 0.0))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
