"""How well per-token credit finds the wrong tokens: AUROC, gate precision / recall, lift.

Pure numpy on flat per-token arrays (one entry per response token of every rollout scored), so
the benchmark and its unit tests share one definition.
"""

from __future__ import annotations

import numpy as np


def auroc(scores, labels) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U).

    None when either class is empty: there is nothing to rank.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank over each run of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2  # ranks are 1-based
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def detection(scores, wrong, fault, departs=None) -> dict:
    """AUROC of `scores` for the wrong tokens against the rest, and for the slip's own tokens
    (`fault`) against the right ones (the propagated wrong numbers left out of both sides); with
    `departs`, also for the tokens where an attempt first departs from the right text against the
    right tokens."""
    scores, wrong, fault = (np.asarray(a) for a in (scores, wrong, fault))
    right = ~wrong.astype(bool)
    slip = fault | right
    out = {"auroc": auroc(scores, wrong), "auroc_fault": auroc(scores[slip], fault[slip])}
    if departs is not None:
        departs = np.asarray(departs, dtype=bool)
        keep = departs | right
        out["auroc_departs"] = auroc(scores[keep], departs[keep])
    return out


def gate_stats(gated, labels) -> dict:
    """Precision P(wrong | gated), recall P(gated | wrong), gate rate, and lift
    P(gated | wrong) / P(gated | other) (inf when the gate never opens elsewhere, None when
    undefined)."""
    gated, labels = np.asarray(gated, dtype=bool), np.asarray(labels, dtype=bool)
    n_gated, n_pos, n_neg = int(gated.sum()), int(labels.sum()), int((~labels).sum())
    hit = int((gated & labels).sum())
    p_pos = hit / n_pos if n_pos else None
    p_neg = int((gated & ~labels).sum()) / n_neg if n_neg else None
    if p_pos is None or p_neg is None:
        lift = None
    elif p_neg == 0:
        lift = None if p_pos == 0 else float("inf")
    else:
        lift = p_pos / p_neg
    return {"gate_rate": n_gated / len(gated) if len(gated) else None,
            "precision": hit / n_gated if n_gated else None,
            "recall": p_pos, "lift": lift}


def amplification(advantages, base_advantages, labels) -> dict:
    """Mean |Â|/|A| on wrong tokens and on the others (tokens of rollouts with A = 0 left out)."""
    adv, base = np.abs(np.asarray(advantages, float)), np.abs(np.asarray(base_advantages, float))
    labels = np.asarray(labels, dtype=bool)
    keep = base > 0
    ratio = np.divide(adv, base, out=np.zeros_like(adv), where=keep)

    def mean(mask):
        mask = mask & keep
        return float(ratio[mask].mean()) if mask.any() else None

    return {"wrong": mean(labels), "other": mean(~labels)}


def calibrated_gate(scores, labels, rate: float) -> dict:
    """The gate a per-batch calibrated tau would give: tau is the (1 - rate) quantile of the
    scores (-CIG on the negative branch), so about `rate` of the tokens pass; then
    `gate_stats` of that gate, with the tau it used."""
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    scores = np.asarray(scores, dtype=float)
    tau = float(np.quantile(scores, 1 - rate))
    return {"tau": tau, **gate_stats(scores > tau, labels)}
