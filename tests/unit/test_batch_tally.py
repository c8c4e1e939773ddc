"""Specification of `BatchTally`, the one place batch stats are summed: over the groups of a
request (the scorer) and over the requests of a file (`amr-sd score`'s summary)."""

from __future__ import annotations

import numpy as np
import pytest

from amr_client.schemas import BatchStats, BranchStats, ReflectionRecord
from amr_sd.cli import _summary
from amr_sd.scoring.stats import BatchTally


def stats(*, response_tokens, mean_abs_advantage, reject_reasons, accepted, negative) -> BatchStats:
    return BatchStats(groups=2, rollouts=4, response_tokens=response_tokens, tokens_scored=8,
                      reflected_tokens=negative.reflected_tokens, gated_tokens=negative.gated_tokens,
                      gate_rate=0.0, reflections_requested=2, reflections_generated=3,
                      reflections_accepted=accepted, reflections_rejected=2 - accepted,
                      acceptance_rate=0.0, reject_reasons=reject_reasons, cig_mean=0.0,
                      cig_std=0.0, nonfinite_cig=1, mean_abs_base_advantage=1.0,
                      mean_abs_advantage=mean_abs_advantage, negative=negative)


def test_requests_add_up_to_summed_counts_and_token_weighted_means():
    total = BatchTally()
    total += BatchTally.of(stats(response_tokens=10, mean_abs_advantage=1.0,
                                 reject_reasons={"too_long": 1}, accepted=1,
                                 negative=BranchStats(rollouts=1, reflected_tokens=4, gated_tokens=1)))
    total += BatchTally.of(stats(response_tokens=30, mean_abs_advantage=2.0,
                                 reject_reasons={"empty": 1, "too_long": 1}, accepted=0,
                                 negative=BranchStats(rollouts=1, reflected_tokens=6, gated_tokens=4)))
    assert (total.groups, total.rollouts, total.tokens_scored, total.nonfinite_cig) == (4, 8, 16, 2)
    assert (total.reflections_requested, total.reflections_generated) == (4, 6)
    assert list(total.reject_reasons.items()) == [("too_long", 2), ("empty", 1)]  # first seen first
    # (1.0 * 10 + 2.0 * 30) / 40 = 1.75, not the unweighted 1.5
    assert total.mean_abs_advantage == 1.75
    assert total.acceptance_rate == 1 / 4
    assert total.negative.gate_rate == total.gate_rate == 5 / 10
    assert total.positive.gate_rate == 0.0  # no reflected token: 0, not a division by zero


def test_the_score_summary_rounds_rates_to_four_places():
    total = BatchTally(reflections_requested=3, reflections_accepted=2, response_tokens=3,
                       abs_advantage=1.0, reject_reasons={"empty": 1})
    summary = _summary(total, wall_s=1.23456)
    assert summary["acceptance_rate"] == 0.6667 and summary["mean_abs_advantage"] == 0.3333
    assert summary["gate_rate"] == 0.0 and summary["reject_reasons"] == {"empty": 1}
    assert summary["wall_s"] == 1.23


def test_a_groups_share_counts_generated_writers_but_not_cached_ones():
    tally = BatchTally()
    tally.count_reflection(ReflectionRecord(kind="hint", accepted=True, text="t", attempts=2))
    tally.count_reflection(ReflectionRecord(kind="hint", accepted=True, text="t", attempts=3,
                                            cached=True))
    tally.count_reflection(ReflectionRecord(kind="critique", accepted=False, source="override",
                                            reject_reason="empty", reject_reasons=["empty"]))
    assert (tally.reflections_requested, tally.reflections_generated) == (3, 2)
    assert (tally.reflections_cached, tally.reflections_accepted) == (1, 2)
    assert tally.reject_reasons == {"empty": 1}


def test_branch_stats_take_quantiles_over_the_gateable_tokens_only():
    tally = BatchTally()
    tokens, cig = np.array([5, 6, 0]), np.array([3.0, 0.0, 9.0])
    gateable, gated = np.array([True, True, False]), np.array([True, False, False])
    tally.count_gate(True, tokens, cig, np.zeros(3, bool), gateable, gated)
    branch = tally.batch_stats(0.5, 1.0, str).positive
    assert (branch.rollouts, branch.reflected_tokens, branch.gated_tokens) == (1, 2, 1)
    assert branch.tau == 0.5 and branch.cig_p99 == pytest.approx(2.97)  # 9.0 is never gateable
