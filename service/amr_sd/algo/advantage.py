"""Token-level AMR-SD advantages: pure numpy, arrays in, arrays out.

Maps onto the pipeline in ``docs/method.md``:

- ``grpo_advantages``      step 1 (base advantage A_i), plus step 2's uniform-group and
                           single-rollout short-circuits (exact zeros).
- ``clipped_cig``          step 7 (I_t = q_t - s_t, non-finite -> 0 and counted, clip to ±κ).
- ``remove_student_trend`` (ours) step 7 for off-policy tokens (ScoringConfig.cig_correction).
- ``gate``                 step 8 (asymmetric ReLU gate, special tokens never gated).
- ``anneal_weight``        step 9 (w(u) that scales λ and γ into λ_eff and γ_eff).
- ``combine``              step 10 (Â_t = A · (1 + Δ_t)).
- ``amplification_bound``  guarantee G3 (the largest |Â| / |A| the gate can produce).

Δ is never negative and only ever multiplies A, so the verifier keeps the sign (G1) and
|Â| >= |A| (G2); both hold exactly in float64 because rounding is monotone.
"""

import math

import numpy as np

SCHEDULES = ("linear", "cosine", "exponential", "constant")


def grpo_advantages(
    rewards,
    *,
    norm_by_std: bool = True,
    std_unbiased: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """GRPO group-relative advantage: (G,) rewards -> (G,) float64 advantages.

    Any finite rewards give A_i = (r_i - mean) / (std + eps) with eps in reward units, to about
    1e-13 of the group's largest |A_i|; rewards whose advantages float64 cannot hold (r - mean
    beyond 1.8e308 without std normalisation, or every A_i below 5e-324) raise ValueError.
    """
    r = np.asarray(rewards, dtype=np.float64)  # (G,)
    if r.ndim != 1:
        raise ValueError(f"rewards must be a 1-D array of shape (G,), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must all be finite")
    if not 0 <= eps < math.inf:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    # A uniform group (including G == 1, where ddof=1 std is undefined) carries no
    # relative signal. Return exact zeros: r - mean can leave rounding residue (e.g. for
    # [0.1, 0.1, 0.1]) that dividing by std + eps ~ 1e-6 would blow up into noise.
    if r.size == 0 or np.all(r == r[0]):
        return np.zeros_like(r)
    ddof = 1 if std_unbiased else 0
    advantages = _plain(r, norm_by_std, ddof, eps)
    if advantages is None:
        advantages = _rescaled(r, norm_by_std, ddof, eps)
    if not np.all(np.isfinite(advantages)):
        raise ValueError("rewards: r - mean(r) exceeds float64 (1.8e308) without std "
                         "normalisation; scale the rewards down")
    if not np.any(advantages):
        raise ValueError("rewards: every advantage is below float64's smallest number (5e-324); "
                         "scale the rewards up or lower std_eps")
    return advantages


# Inside this range r - mean and its squares can neither overflow nor underflow float64.
_PLAIN_MAX = 2.0**300
_PLAIN_MIN = 2.0**-300
# The plain formula is kept while the rounding of its mean moves each r - mean by less than
# this share of the largest one (a relative error of A below 1e-13).
_MEAN_ERROR = 2.0**-44


def _plain(r: np.ndarray, norm_by_std: bool, ddof: int, eps: float) -> np.ndarray | None:
    """The textbook formula, or None where float64 would overflow, underflow or cancel in it."""
    largest = np.max(np.abs(r))
    if not _PLAIN_MIN <= largest <= _PLAIN_MAX:
        return None
    centred = r - r.mean()  # (G,)
    # Σ(r_i - mean) is 0 in exact arithmetic; what the rounded mean leaves is G times its error.
    # It is large where the spread is a few ulps of the mean (1e16 + 2 and 1e16).
    if abs(math.fsum(centred)) / r.size > _MEAN_ERROR * np.max(np.abs(centred)):
        return None
    if not norm_by_std:
        return centred
    return centred / (r.std(ddof=ddof) + eps)


def _rescaled(r: np.ndarray, norm_by_std: bool, ddof: int, eps: float) -> np.ndarray:
    """The same formula on the rewards scaled by a power of two to at most 1, centred twice.

    Scaling by 2^-k is exact, so no sum or square overflows or underflows. The second centring
    (the corrected two-pass algorithm) removes the rounding error of the first mean, which is
    all there is of a spread a few ulps wide. eps stays in reward units: it is scaled by 2^-k
    too, and where that overflows std is nothing beside it.
    """
    _, k = math.frexp(float(np.max(np.abs(r))))
    u = np.ldexp(r, -k)  # (G,) |u| < 1; an entry that underflows is nothing beside the largest
    d = u - math.fsum(u) / r.size  # (G,)
    centred = d - math.fsum(d) / r.size  # (G,)
    if not norm_by_std:
        with np.errstate(over="ignore"):
            return np.ldexp(centred, k)  # inf where r - mean is beyond float64: refused above
    std = math.sqrt(math.fsum(centred * centred) / (r.size - ddof))
    scaled_eps = math.ldexp(eps, -k) if eps == 0 or math.frexp(eps)[1] - k <= 1023 else math.inf
    if scaled_eps < math.inf:
        return centred / (std + scaled_eps)
    # eps > 2^1023 times the rewards' scale: A = centred·2^k / eps, divided first so that
    # centred·2^k cannot underflow on its own.
    return np.ldexp(centred / eps, k)


def anneal_weight(
    step: int,
    *,
    schedule: str = "linear",
    warmup_steps: int = 0,
    decay_steps: int = 50,
    exp_k: float = 5.0,
) -> float:
    """Anneal weight w(u) in [0, 1], u = clamp((step - warmup_steps) / decay_steps, 0, 1)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    if not exp_k > 0:
        raise ValueError(f"exp_k must be > 0, got {exp_k}")
    u = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - u
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule == "exponential":
        # e^(-k) never reaches 0; snap to 0 at the end so the step-2 short-circuit
        # (w == 0 -> exact GRPO, no engine calls) fires for every schedule.
        return 0.0 if u >= 1.0 else math.exp(-exp_k * u)
    return 1.0  # constant: ablation without annealing


def clipped_cig(
    teacher_logprobs,
    student_logprobs,
    *,
    kappa: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clipped Causal Information Gain Î_t and the mask of tokens whose I_t was non-finite."""
    q = np.asarray(teacher_logprobs, dtype=np.float64)  # (T,)
    s = np.asarray(student_logprobs, dtype=np.float64)  # (T,)
    if q.shape != s.shape:
        raise ValueError(
            f"teacher_logprobs and student_logprobs must have the same shape, "
            f"got {q.shape} and {s.shape}"
        )
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    # -inf - -inf and nan inputs are expected from engines; they are flagged, not warned.
    with np.errstate(invalid="ignore", over="ignore"):
        cig = q - s  # (T,)
    nonfinite = ~np.isfinite(cig)  # (T,) bool
    # A token the engine could not score carries no credit (-> 0), rather than the
    # maximal ±κ that clipping an infinity would give it.
    cig[nonfinite] = 0.0
    cig_hat = np.clip(cig, -kappa, kappa)  # (T,)
    return cig_hat, nonfinite


CIG_CORRECTIONS = ("none", "student_trend")


def remove_student_trend(cig_hat, student_logprobs, mask, *, kappa: float = 5.0) -> np.ndarray:
    """(ours) Î with its linear trend on the student's logprob within one rollout removed.

    On a token the policy would almost never write (a stale or replayed rollout, a synthetic
    corruption) any block in the teacher's context raises its logprob a little: a log-ratio on a
    near-zero probability regresses to the mean, so CIG correlates with -s_t and comes out
    positive exactly where a critique should make it negative. Fitting Î = a + b·s over the
    rollout's `mask` tokens (gateable and finite) by least squares and keeping Î - b·(s - mean s)
    removes that dependence and keeps the rollout's mean CIG. Tokens outside `mask` are unchanged;
    with fewer than 3 tokens or a constant s nothing changes, and Î ≡ 0 stays 0 (G4). The result
    is clipped to ±κ again. (T,) -> (T,).
    """
    cig_hat = np.asarray(cig_hat, dtype=np.float64)  # (T,)
    s = np.asarray(student_logprobs, dtype=np.float64)  # (T,)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(s)  # (T,)
    if cig_hat.shape != s.shape or mask.shape != s.shape:
        raise ValueError(f"cig_hat {cig_hat.shape}, student_logprobs {s.shape} and mask "
                         f"{mask.shape} must have one shape")
    out = cig_hat.copy()
    if mask.sum() < 3:
        return out
    s_fit, i_fit = s[mask], cig_hat[mask]
    centred = s_fit - s_fit.mean()
    spread = float(centred @ centred)
    if spread == 0.0:
        return out
    slope = float(centred @ (i_fit - i_fit.mean())) / spread
    out[mask] = np.clip(i_fit - slope * centred, -kappa, kappa)
    return out


def gate(
    cig_hat,
    base_advantage: float,
    *,
    lambda_eff: float,
    gamma_eff: float,
    tau_pos: float = 1.0,
    tau_neg: float = 1.0,
    never_gate=None,
) -> np.ndarray:
    """Asymmetric ReLU gate: (T,) Î -> (T,) Δ >= 0, chosen by the sign of A."""
    cig_hat = np.asarray(cig_hat, dtype=np.float64)  # (T,)
    if not np.all(np.isfinite(cig_hat)):
        raise ValueError("cig_hat must be finite; pass the log-ratio through clipped_cig first")
    if not math.isfinite(base_advantage):
        raise ValueError(f"base_advantage must be finite, got {base_advantage}")
    # Negative or NaN weights would let Δ < 0 and break G1/G2.
    if not lambda_eff >= 0:
        raise ValueError(f"lambda_eff must be >= 0, got {lambda_eff}")
    if not gamma_eff >= 0:
        raise ValueError(f"gamma_eff must be >= 0, got {gamma_eff}")
    if base_advantage > 0:
        # Correct rollout: reward tokens the hint made more likely.
        delta = lambda_eff * np.maximum(0.0, cig_hat - tau_pos)  # (T,)
    elif base_advantage < 0:
        # Failed rollout: blame tokens the critique made less likely.
        delta = gamma_eff * np.maximum(0.0, -cig_hat - tau_neg)  # (T,)
    else:
        delta = np.zeros_like(cig_hat)  # (T,)
    if never_gate is not None:
        mask = np.asarray(never_gate, dtype=bool)  # (T,)
        if mask.shape != cig_hat.shape:
            raise ValueError(
                f"never_gate must have the shape of cig_hat {cig_hat.shape}, got {mask.shape}"
            )
        # EOS / chat markers are not the model's reasoning; docs/method.md step 8 (ours).
        delta = np.where(mask, 0.0, delta)
    return delta


def calibrated_tau(cig_hat, rate: float, *, positive: bool) -> float:
    """(ours) The τ of one branch that lets about `rate` of its tokens through the gate.

    `cig_hat` holds the branch's gateable tokens (clipped CIG, any shape). The positive branch
    passes Î > τ+, so τ+ is the (1 - rate) quantile of Î; the negative branch passes -Î > τ-, so
    τ- is that quantile of -Î. Each branch gets its own τ from its own tokens, so the asymmetry
    (λ:γ, and which side of zero each gate reads) stays. A τ is never below 0: a hint's gate
    never rewards a token the hint made less likely, nor a critique's blame one it made more
    likely, and G4 (Î ≡ 0 gives exact GRPO) holds. No tokens: 0.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    values = np.asarray(cig_hat, dtype=np.float64).ravel()
    if not values.size:
        return 0.0
    if not np.all(np.isfinite(values)):
        raise ValueError("cig_hat must be finite; pass the log-ratio through clipped_cig first")
    side = values if positive else -values
    return max(0.0, float(np.quantile(side, 1.0 - rate)))


def combine(base_advantage: float, delta) -> np.ndarray:
    """Â_t = A · (1 + Δ_t): (T,) Δ -> (T,) float64 token advantages."""
    delta = np.asarray(delta, dtype=np.float64)  # (T,)
    # Δ < 0 could flip or shrink A, which would break G1/G2.
    if not np.all(np.isfinite(delta)) or np.any(delta < 0):
        raise ValueError("delta must be finite and >= 0 (use gate to compute it)")
    return base_advantage * (1.0 + delta)


def amplification_bound(
    *,
    lambda_eff: float,
    gamma_eff: float,
    kappa: float,
    tau_pos: float,
    tau_neg: float,
) -> float:
    """Largest |Â| / |A| the gate allows (G3): 1.8 with the paper defaults at step 0."""
    return 1.0 + max(lambda_eff * (kappa - tau_pos), gamma_eff * (kappa - tau_neg), 0.0)
