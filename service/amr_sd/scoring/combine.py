"""Combining: a rollout's two passes become its per-token advantages (docs/method.md steps 7, 8
and 10): clipped CIG Î_t, the asymmetric gate Δ_t, and Â_t = A_i (1 + Δ_t).

Pure: plans, records and log-probabilities in, a scored group and its share of the batch stats
out; the maths itself is `algo.advantage`. With `gate_rate_target` (ours) the gate's margins come
from the whole request's CIG (`calibrated_taus`), so groups are combined only once every group
is rescored; otherwise each group as soon as its passes are back.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from amr_client.schemas import ReflectionRecord, ScoredGroup, ScoredRollout, ScoringConfig
from amr_sd.algo import advantage
from amr_sd.scoring.passes import Logprobs
from amr_sd.scoring.plan import Plan, RolloutPlan
from amr_sd.scoring.stats import BatchTally


class Cig(NamedTuple):
    """A rollout's clipped CIG and its masks, (T,) each."""

    clipped: np.ndarray
    nonfinite: np.ndarray  # where CIG was not finite (set to 0, counted)
    gateable: np.ndarray  # where the gate may fire: never on special tokens (ours)


def clipped_cig(r: RolloutPlan, logprobs: Logprobs, cfg: ScoringConfig,
                special_ids: np.ndarray) -> Cig:
    cig, bad = advantage.clipped_cig(logprobs.teacher, logprobs.student, kappa=cfg.kappa)
    tokens = np.asarray(r.rollout.token_ids, dtype=np.int64)
    gateable = ~np.isin(tokens, special_ids)
    if cfg.cig_correction == "student_trend":
        cig = advantage.remove_student_trend(cig, logprobs.student, gateable & ~bad, kappa=cfg.kappa)
    return Cig(cig, bad, gateable)


def calibrated_taus(plan: Plan, logprobs: dict[RolloutPlan, Logprobs],
                    special_ids: np.ndarray) -> tuple[float, float]:
    """(ours) τ+ and τ- from the whole request's CIG on the tokens each branch may gate, so that
    each gate opens on about `gate_rate_target` of its tokens."""
    branches: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for r in plan.active:
        if r in logprobs:
            cig = clipped_cig(r, logprobs[r], plan.config, special_ids)
            branches[r.base_advantage > 0].append(cig.clipped[cig.gateable])
    return tuple(advantage.calibrated_tau(np.concatenate(branches[side]) if branches[side]
                                          else [], plan.config.gate_rate_target, positive=side)
                 for side in (True, False))


def scored_group(plan: Plan, g: int, records: dict[RolloutPlan, ReflectionRecord],
                 logprobs: dict[RolloutPlan, Logprobs], taus: tuple[float, float],
                 special_ids: np.ndarray) -> tuple[ScoredGroup, BatchTally]:
    """Group `g`'s advantages, and its share of the batch stats."""
    ret = plan.returns
    tally = BatchTally(groups=1, rollouts=len(plan.groups[g]))
    scored = []
    for r in plan.groups[g]:
        tokens = np.asarray(r.rollout.token_ids, dtype=np.int64)
        item = ScoredRollout(advantages=[], base_advantage=r.base_advantage)
        lp = logprobs.get(r)
        if lp is not None:
            cig = clipped_cig(r, lp, plan.config, special_ids)
            delta = advantage.gate(
                cig.clipped, r.base_advantage, lambda_eff=plan.lambda_eff,
                gamma_eff=plan.gamma_eff, tau_pos=taus[0], tau_neg=taus[1],
                never_gate=~cig.gateable)
            adv = advantage.combine(r.base_advantage, delta)
            gated = delta > 0
            tally.count_gate(r.base_advantage > 0, tokens, cig.clipped, cig.nonfinite, cig.gateable,
                             gated)
            tally.count_passes(len(tokens), lp.scored, lp.cached)
            if ret.cig:
                item.cig, item.gated = cig.clipped.tolist(), gated.tolist()
            if ret.logprobs:
                item.student_logprobs = lp.student.tolist()
                item.teacher_logprobs = lp.teacher.tolist()
        else:
            # Exactly GRPO (G4): the same float for every token, no arithmetic on it.
            adv = np.full(len(tokens), r.base_advantage)
        item.advantages = adv.tolist()
        record = records.get(r)
        if record is not None:
            tally.count_reflection(record)
        if ret.reflections:
            item.reflection = record
        tally.count_rollout(len(tokens), adv, r.base_advantage)
        scored.append(item)
    return ScoredGroup(rollouts=scored), tally
