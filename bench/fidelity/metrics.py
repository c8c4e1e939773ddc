"""How well per-token credit finds the wrong tokens: AUROC, gate precision / recall, lift; and
whether it finds the wrong step: hit@1, ProcessBench's F1, with bootstrap intervals.

Pure numpy on flat per-token arrays (one entry per response token of every rollout scored), so
the benchmark and its unit tests share one definition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

try:  # scipy is not a dependency; its rankdata is the reference the fallback matches
    from scipy.stats import rankdata as _rankdata
except ImportError:  # pragma: no cover - depends on the environment
    _rankdata = None


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, each run of equal scores sharing its average rank (scipy's "average")."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the 1-based rank of each run's last member
    return (last - (counts - 1) / 2)[inverse.reshape(-1)]


def auroc(scores, labels) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U).

    None when either class is empty: there is nothing to rank.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # Vectorised: one Python iteration per run of equal scores is slow on a million tokens.
    ranks = (_average_ranks if _rankdata is None else _rankdata)(scores)
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


# ---- steps: does the credit point at the step that went wrong ------------------------------------

def step_sums(values, step) -> np.ndarray:
    """Summed `values` per step 1 .. n (n = step.max()); tokens outside any step (0) left out."""
    values, step = np.asarray(values, dtype=float), np.asarray(step, dtype=int)
    n = int(step.max()) if step.size else 0
    return np.bincount(step, weights=values, minlength=n + 1)[1:n + 1]


def hit_at_1(sums, fault_step) -> bool:
    """The step with the most negative summed credit (the first on ties) is the faulty one."""
    sums = np.asarray(sums, dtype=float)
    return bool(sums.size) and fault_step is not None and int(np.argmin(sums)) + 1 == fault_step


def first_flagged_step(flags, step) -> int:
    """The earliest step holding a flagged token, -1 when none does (ProcessBench's "no error")."""
    flags, step = np.asarray(flags, dtype=bool), np.asarray(step, dtype=int)
    flagged = step[flags & (step > 0)]
    return int(flagged.min()) if flagged.size else -1


def processbench_f1(pred, label) -> dict:
    """ProcessBench's metric: accuracy on erroneous samples (label != -1: the earliest wrong step
    found exactly), on correct ones (label == -1: no step flagged), and their harmonic mean.

    An accuracy is None when its side is empty, and so is the F1; the F1 is 0 when both are 0.
    """
    pred, label = np.asarray(pred, dtype=int), np.asarray(label, dtype=int)
    erroneous, correct = label != -1, label == -1
    acc_error = float((pred[erroneous] == label[erroneous]).mean()) if erroneous.any() else None
    acc_correct = float((pred[correct] == -1).mean()) if correct.any() else None
    if acc_error is None or acc_correct is None:
        f1 = None
    elif acc_error + acc_correct == 0:
        f1 = 0.0
    else:
        f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)
    return {"acc_error": acc_error, "acc_correct": acc_correct, "f1": f1,
            "n_error": int(erroneous.sum()), "n_correct": int(correct.sum())}


def bootstrap_ci(n_items: int, statistic: Callable[[np.ndarray], float | None],
                 n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of `statistic` over `n_boot` resamples of the item indices 0 .. n-1.

    Items are what is resampled (rollouts, problems), not tokens: tokens of one response are not
    independent. A resample whose statistic is None (a side left empty) is skipped; (None, None)
    when every one is.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        value = statistic(rng.integers(0, n_items, n_items)) if n_items else None
        if value is not None:
            values.append(float(value))
    if not values:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
