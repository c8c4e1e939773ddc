"""Specification of amr_sd.algo.advantage, written from docs/method.md.

Defaults everywhere follow docs/method.md's "Worked numbers": λ 0.2, γ 0.1, κ 5, τ 1,
linear schedule, T_decay 50.
"""

import decimal
import fractions
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amr_sd.algo.advantage import (
    SCHEDULES,
    amplification_bound,
    anneal_weight,
    clipped_cig,
    combine,
    gate,
    grpo_advantages,
    remove_student_trend,
)

LAMBDA = 0.2
GAMMA = 0.1


def score(base_advantage, teacher, student, *, step=0, lam=LAMBDA, gam=GAMMA):
    """Steps 7-10 with the worked-number defaults; returns Â (T,)."""
    w = anneal_weight(step)
    cig_hat, _ = clipped_cig(teacher, student)
    delta = gate(cig_hat, base_advantage, lambda_eff=lam * w, gamma_eff=gam * w)
    return combine(base_advantage, delta)


# --- Step 1: base advantage (worked numbers 3 and 7) ---------------------------------


def test_rewards_1001_unbiased_std_gives_plus_minus_0_866():
    # mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735; 0.5 / 0.57735 = 0.86603
    a = grpo_advantages([1.0, 0.0, 0.0, 1.0])
    assert a == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_rewards_1001_biased_std_gives_plus_minus_1():
    # biased var = 4 * 0.25 / 4 = 0.25, std = 0.5; 0.5 / (0.5 + 1e-6) ≈ 1
    a = grpo_advantages([1.0, 0.0, 0.0, 1.0], std_unbiased=False)
    assert a == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)


def test_rewards_1001_without_std_norm_gives_plus_minus_half():
    # r - mean = ±0.5, no division
    a = grpo_advantages([1.0, 0.0, 0.0, 1.0], norm_by_std=False)
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5]


def test_grpo_returns_float64():
    assert grpo_advantages([1, 0]).dtype == np.float64


@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
def test_uniform_group_gives_exact_zeros(rewards):
    assert grpo_advantages(rewards).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_uniform_group_of_inexact_floats_gives_exact_zeros_not_eps_noise():
    # mean([0.1]*3) may differ from 0.1 by an ulp; dividing by 0 + 1e-6 would amplify it
    assert grpo_advantages([0.1, 0.1, 0.1]).tolist() == [0.0, 0.0, 0.0]


def test_single_rollout_gives_zero_advantage():
    assert grpo_advantages([0.7]).tolist() == [0.0]


def test_non_finite_reward_raises_value_error_naming_rewards():
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages([1.0, float("nan")])


# --- Step 1 at the edges of float64: any finite rewards, right or refused --------------------------
# The reference centres with exact fractions and takes the square root and the division in
# 60-digit decimals, so it has no overflow, underflow or cancellation of its own.

MAX_FLOAT = np.finfo(np.float64).max
TINY = 2.0**-1074  # the smallest subnormal


def reference_advantages(rewards, *, norm_by_std=True, std_unbiased=True, eps=1e-6):
    """A_i = (r_i - mean) / (std + eps) in exact and 60-digit arithmetic, as Decimals."""
    ctx = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    exact = [fractions.Fraction(r) for r in rewards]
    mean = sum(exact) / len(exact)
    centred = [r - mean for r in exact]

    def dec(q):
        return ctx.divide(decimal.Decimal(q.numerator), decimal.Decimal(q.denominator))

    if not norm_by_std:
        return [dec(c) for c in centred]
    var = sum(c * c for c in centred) / (len(exact) - (1 if std_unbiased else 0))
    scale = ctx.add(ctx.sqrt(dec(var)), decimal.Decimal(eps))
    return [ctx.divide(dec(c), scale) for c in centred]


def assert_matches_reference(rewards, **kw):
    """The advantages equal the reference within 1e-12 of the largest (plus two subnormals, the
    resolution of float64 down there), or are refused because the reference is outside float64."""
    ref = reference_advantages(rewards, **kw)
    largest = float(max(abs(a) for a in ref))  # inf or 0.0 when outside float64
    try:
        got = grpo_advantages(rewards, **kw)
    except ValueError as exc:
        assert "rewards" in str(exc)
        assert largest >= MAX_FLOAT * (1 - 1e-12) or largest < 2 * TINY, (rewards, kw, largest)
        return
    assert np.all(np.isfinite(got)) and np.any(got != 0.0)
    tol = 1e-12 * largest + 2 * TINY
    err = max(abs(float(decimal.Decimal(float(a)) - b)) for a, b in zip(got, ref))
    assert err <= tol, (rewards, kw, err, tol)


def test_huge_rewards_give_the_advantages_of_their_ratios():
    # [1e200, 0] is [1, 0] scaled: centred ±0.5e200, std 0.7071e200, eps negligible: ±1/sqrt(2)
    a = grpo_advantages([1e200, 0.0])
    assert a == pytest.approx([2**-0.5, -(2**-0.5)], rel=1e-15)


def test_rewards_whose_sum_overflows_still_give_the_right_advantages():
    # mean([MAX, MAX, -MAX]) = MAX/3 although MAX + MAX overflows: ±(2/3)/(0.9428...) etc.
    assert_matches_reference([MAX_FLOAT, MAX_FLOAT, -MAX_FLOAT])
    assert grpo_advantages([MAX_FLOAT, -MAX_FLOAT]) == pytest.approx([2**-0.5, -(2**-0.5)])


def test_a_spread_of_one_ulp_on_a_large_mean_is_not_lost_to_cancellation():
    # 1e16 + 2 and 1e16: exact mean 1e16 + 1 is no float64; centred ±1, std sqrt(2): ±1/(sqrt(2) + eps)
    a = grpo_advantages([1e16 + 2, 1e16])
    expected = 1 / (2**0.5 + 1e-6)
    assert a == pytest.approx([expected, -expected], rel=1e-12)
    assert_matches_reference([1e16 + 2, 1e16, 1e16, 1e16 + 4])


def test_tiny_rewards_keep_eps_absolute():
    # [1e-200, 0]: std ~ 7e-201 is nothing next to eps = 1e-6, so A = ±0.5e-200 / 1e-6 = ±5e-195
    assert grpo_advantages([1e-200, 0.0]) == pytest.approx([5e-195, -5e-195], rel=1e-12)
    # with eps = 0 the scale drops out: ±1/sqrt(2), although 1e-200 squared underflows to 0
    assert grpo_advantages([1e-200, 0.0], eps=0.0) == pytest.approx([2**-0.5, -(2**-0.5)], rel=1e-15)


def test_subnormal_rewards_with_zero_eps_give_the_scale_free_advantages():
    assert grpo_advantages([TINY, 0.0], eps=0.0) == pytest.approx([2**-0.5, -(2**-0.5)], rel=1e-15)


def test_centred_rewards_that_overflow_are_refused_naming_rewards():
    # without std normalisation A = r - mean is in reward units: 2 * MAX / 3 * 2 > MAX
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages([MAX_FLOAT, -MAX_FLOAT, -MAX_FLOAT], norm_by_std=False)


def test_advantages_that_underflow_to_zero_are_refused_naming_rewards():
    # centred ±2^-1075, half the smallest subnormal: float64 rounds it to 0
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages([TINY, 0.0], norm_by_std=False)


@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.3, 0.1, 0.7, 0.2, 0.9],
                                     [-5.0, 2.5, 100.0]])
@pytest.mark.parametrize("kw", [{}, {"std_unbiased": False}, {"norm_by_std": False}, {"eps": 1e-4}])
def test_ordinary_rewards_give_the_plain_formula_bit_for_bit(rewards, kw):
    r = np.asarray(rewards)
    centred = r - r.mean()
    if kw.get("norm_by_std", True):
        centred = centred / (r.std(ddof=0 if kw.get("std_unbiased") is False else 1) + kw.get("eps", 1e-6))
    assert grpo_advantages(rewards, **kw).tolist() == centred.tolist()


def any_finite():
    return st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def extreme_rewards(draw):
    """Finite groups at every scale: anything, mixed magnitudes, or a few ulps around one value."""
    size = draw(st.integers(2, 12))
    kind = draw(st.sampled_from(["any", "magnitudes", "ulps"]))
    if kind == "any":
        return draw(st.lists(any_finite(), min_size=size, max_size=size))
    if kind == "magnitudes":
        value = st.builds(math.ldexp, st.floats(-1.0, 1.0), st.integers(-1074, 1023))
        return draw(st.lists(value, min_size=size, max_size=size))
    base = draw(any_finite())
    steps = draw(st.lists(st.integers(-4, 4), min_size=size, max_size=size))
    out = []
    for k in steps:
        v = base
        for _ in range(abs(k)):
            v = math.nextafter(v, math.inf if k > 0 else -math.inf)
        out.append(v if math.isfinite(v) else base)
    return out


@settings(max_examples=400, deadline=None)
@given(rewards=extreme_rewards(), norm_by_std=st.booleans(), std_unbiased=st.booleans(),
       eps=st.one_of(st.sampled_from([0.0, 1e-6, 1e-4, 1.0]), st.floats(0.0, 1.0)))
def test_any_finite_rewards_give_the_reference_advantages_or_are_refused(rewards, norm_by_std,
                                                                          std_unbiased, eps):
    if all(r == rewards[0] for r in rewards):
        assert np.all(grpo_advantages(rewards, norm_by_std=norm_by_std, std_unbiased=std_unbiased,
                                      eps=eps) == 0.0)
        return
    assert_matches_reference(rewards, norm_by_std=norm_by_std, std_unbiased=std_unbiased, eps=eps)


# --- Step 9: anneal weight (worked numbers 2 and 8) -----------------------------------


def test_step_0_linear_gives_full_weight():
    assert anneal_weight(0) == 1.0


def test_step_49_linear_gives_weight_0_02():
    # u = 49 / 50 = 0.98; w = 1 - 0.98
    assert anneal_weight(49) == pytest.approx(0.02)


def test_step_50_linear_gives_zero_weight():
    # u = 50 / 50 = 1; w = 0 exactly
    assert anneal_weight(50) == 0.0


def test_step_25_linear_gives_half_weight():
    assert anneal_weight(25) == 0.5


def test_steps_past_decay_stay_at_zero_weight():
    assert anneal_weight(10_000) == 0.0


def test_steps_inside_warmup_give_full_weight():
    # u = clamp((5 - 10) / 50, 0, 1) = 0
    assert anneal_weight(5, warmup_steps=10) == 1.0


def test_warmup_shifts_the_decay():
    # u = (35 - 10) / 50 = 0.5
    assert anneal_weight(35, warmup_steps=10) == 0.5


def test_cosine_at_half_decay_gives_half_weight():
    # u = 0.5: 0.5 * (1 + cos(pi / 2)) = 0.5
    assert anneal_weight(25, schedule="cosine") == pytest.approx(0.5)


def test_cosine_at_end_gives_exact_zero():
    # 0.5 * (1 + cos(pi)) = 0.5 * (1 - 1)
    assert anneal_weight(50, schedule="cosine") == 0.0


def test_exponential_just_before_end_is_positive():
    # u = 999 / 1000 = 0.999: e^(-5 * 0.999) ≈ 0.00678
    w = anneal_weight(999, schedule="exponential", decay_steps=1000)
    assert w > 0.0
    assert w == pytest.approx(math.exp(-4.995))


def test_exponential_at_end_gives_exact_zero():
    assert anneal_weight(1000, schedule="exponential", decay_steps=1000) == 0.0


def test_exponential_at_start_gives_full_weight():
    assert anneal_weight(0, schedule="exponential") == 1.0


def test_constant_schedule_never_decays():
    assert anneal_weight(10_000, schedule="constant") == 1.0


def test_unknown_schedule_raises_value_error_naming_schedule():
    with pytest.raises(ValueError, match="schedule"):
        anneal_weight(0, schedule="step")


def test_zero_decay_steps_raises_value_error_naming_decay_steps():
    with pytest.raises(ValueError, match="decay_steps"):
        anneal_weight(0, decay_steps=0)


def test_negative_step_raises_value_error_naming_step():
    with pytest.raises(ValueError, match="step"):
        anneal_weight(-1)


@settings(max_examples=200, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    step_a=st.integers(0, 500),
    step_b=st.integers(0, 500),
    warmup_steps=st.integers(0, 100),
    decay_steps=st.integers(1, 200),
    exp_k=st.floats(0.01, 50.0),
)
def test_anneal_weight_is_non_increasing_in_step_for_every_schedule(
    schedule, step_a, step_b, warmup_steps, decay_steps, exp_k
):
    lo, hi = sorted((step_a, step_b))
    kw = dict(schedule=schedule, warmup_steps=warmup_steps, decay_steps=decay_steps, exp_k=exp_k)
    w_lo, w_hi = anneal_weight(lo, **kw), anneal_weight(hi, **kw)
    assert 0.0 <= w_hi <= w_lo <= 1.0


@settings(max_examples=200, deadline=None)
@given(schedule=st.sampled_from(SCHEDULES[:3]), decay_steps=st.integers(1, 200))
def test_every_decaying_schedule_reaches_exact_zero_at_end(schedule, decay_steps):
    assert anneal_weight(decay_steps, schedule=schedule, decay_steps=decay_steps) == 0.0


# --- Step 7: clipped CIG (worked number 9) --------------------------------------------


def test_cig_is_teacher_minus_student():
    # I = [-1.0 - -2.0, -3.0 - -1.0] = [1.0, -2.0]
    cig_hat, nonfinite = clipped_cig([-1.0, -3.0], [-2.0, -1.0])
    assert cig_hat.tolist() == [1.0, -2.0]
    assert nonfinite.tolist() == [False, False]


def test_cig_is_clipped_to_kappa():
    # I = [100, -100] -> clip to [5, -5]
    cig_hat, _ = clipped_cig([0.0, -100.0], [-100.0, 0.0])
    assert cig_hat.tolist() == [5.0, -5.0]


def test_minus_inf_teacher_logprob_gives_zero_cig_and_is_flagged():
    cig_hat, nonfinite = clipped_cig([-np.inf, -1.0], [-2.0, -2.0])
    assert cig_hat.tolist() == [0.0, 1.0]
    assert nonfinite.tolist() == [True, False]


@pytest.mark.parametrize(
    ("teacher", "student"),
    [(np.nan, -1.0), (-1.0, np.nan), (-np.inf, -np.inf), (-1.0, -np.inf), (np.inf, -1.0)],
)
def test_any_non_finite_logprob_gives_zero_cig_and_is_flagged(teacher, student):
    cig_hat, nonfinite = clipped_cig([teacher], [student])
    assert cig_hat.tolist() == [0.0]
    assert nonfinite.tolist() == [True]


def test_cig_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="same shape"):
        clipped_cig([-1.0, -2.0], [-1.0])


def test_minus_inf_teacher_logprob_never_yields_nan_advantage():
    a_hat = score(1.0, [-np.inf, -0.5], [-2.0, -2.0])
    assert not np.any(np.isnan(a_hat))
    # token 0: Î = 0 -> Δ = 0 -> Â = 1; token 1: Î = 1.5 -> Δ = 0.2 * 0.5 = 0.1
    assert a_hat == pytest.approx([1.0, 1.1])


# --- Step 8: gate (worked numbers 4 and 5) ---------------------------------------------


def test_positive_advantage_with_strongly_negative_cig_is_not_gated():
    # A = +1, I = -10 -> Î = -5; Δ = 0.2 * max(0, -5 - 1) = 0
    delta = gate(np.full(3, -5.0), 1.0, lambda_eff=LAMBDA, gamma_eff=GAMMA)
    assert delta.tolist() == [0.0, 0.0, 0.0]


def test_negative_advantage_with_strongly_positive_cig_is_not_gated():
    # A = -1, I = +10 -> Î = 5; Δ = 0.1 * max(0, -5 - 1) = 0
    delta = gate(np.full(3, 5.0), -1.0, lambda_eff=LAMBDA, gamma_eff=GAMMA)
    assert delta.tolist() == [0.0, 0.0, 0.0]


def test_cig_equal_to_tau_pos_is_not_gated():
    # A = +1, Î = 1.0: Δ = 0.2 * max(0, 1.0 - 1.0) = 0
    assert gate([1.0], 1.0, lambda_eff=LAMBDA, gamma_eff=GAMMA).tolist() == [0.0]


def test_zero_advantage_is_never_gated():
    delta = gate([5.0, -5.0], 0.0, lambda_eff=LAMBDA, gamma_eff=GAMMA)
    assert delta.tolist() == [0.0, 0.0]


def test_never_gate_mask_forces_zero_delta_on_special_tokens():
    # Î = 5 everywhere: Δ = 0.2 * 4 = 0.8, except on the masked EOS token
    delta = gate([5.0, 5.0], 1.0, lambda_eff=LAMBDA, gamma_eff=GAMMA, never_gate=[False, True])
    assert delta == pytest.approx([0.8, 0.0])
    assert delta[1] == 0.0


def test_never_gate_mask_with_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match="never_gate"):
        gate([5.0, 5.0], 1.0, lambda_eff=LAMBDA, gamma_eff=GAMMA, never_gate=[True])


def test_negative_lambda_eff_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="lambda_eff"):
        gate([5.0], 1.0, lambda_eff=-0.1, gamma_eff=GAMMA)


# --- Steps 7-10 end to end (worked numbers 1, 2, 3, 4, 5, 6) ----------------------------


def test_identical_contexts_give_exactly_the_base_advantage():
    # q == s -> I ≡ 0 -> Î ≡ 0 < τ -> Δ ≡ 0 -> Â == A bitwise
    logprobs = [-0.3, -2.0, -0.01]
    assert score(0.866, logprobs, logprobs).tolist() == [0.866, 0.866, 0.866]
    assert score(-0.866, logprobs, logprobs).tolist() == [-0.866, -0.866, -0.866]


def test_step_50_gives_exactly_the_base_advantage():
    # w = 0 -> λ_eff = γ_eff = 0 -> Δ ≡ 0, even for I = ±100
    assert score(1.0, [0.0], [-100.0], step=50).tolist() == [1.0]
    assert score(-1.0, [-100.0], [0.0], step=50).tolist() == [-1.0]


def test_zero_lambda_and_gamma_give_exactly_the_base_advantage():
    assert score(0.5, [0.0, -3.0], [-100.0, -1.0], lam=0.0, gam=0.0).tolist() == [0.5, 0.5]
    assert score(-0.5, [-100.0, -1.0], [0.0, -3.0], lam=0.0, gam=0.0).tolist() == [-0.5, -0.5]


def test_uniform_group_gives_zero_token_advantages():
    # A ≡ 0 -> Â = 0 * (1 + Δ) = 0 for any CIG
    for a in grpo_advantages([1.0, 1.0, 1.0, 1.0]):
        assert score(a, [0.0, -100.0], [-100.0, 0.0]).tolist() == [0.0, 0.0]


def test_positive_advantage_with_strongly_negative_cig_gives_base_advantage():
    assert score(1.0, [-10.0, -10.0], [0.0, 0.0]).tolist() == [1.0, 1.0]


def test_negative_advantage_with_strongly_positive_cig_gives_base_advantage():
    assert score(-1.0, [0.0, 0.0], [-10.0, -10.0]).tolist() == [-1.0, -1.0]


def test_step_0_positive_advantage_cig_1_0_is_not_amplified():
    # Î = 1.0 = τ_pos -> Δ = 0 -> Â = 1 exactly
    assert score(1.0, [-1.0], [-2.0]).tolist() == [1.0]


def test_step_0_positive_advantage_cig_1_1_gives_1_02():
    # Δ = 0.2 * (1.1 - 1.0) = 0.02 -> Â = 1 * 1.02
    assert score(1.0, [1.1], [0.0]) == pytest.approx([1.02])


def test_step_0_positive_advantage_cig_100_clips_to_5_and_gives_1_8():
    # Î = 5; Δ = 0.2 * (5 - 1) = 0.8 -> Â = 1.8
    assert score(1.0, [0.0], [-100.0]) == pytest.approx([1.8])


def test_step_0_negative_advantage_cig_minus_100_gives_minus_1_4():
    # Î = -5; Δ = 0.1 * (5 - 1) = 0.4 -> Â = -1 * 1.4
    assert score(-1.0, [-100.0], [0.0]) == pytest.approx([-1.4])


def test_step_25_positive_advantage_cig_3_gives_1_2():
    # w = 0.5 -> λ_eff = 0.1; Δ = 0.1 * (3 - 1) = 0.2 -> Â = 1.2
    assert score(1.0, [0.0], [-3.0], step=25) == pytest.approx([1.2])


def test_step_25_negative_advantage_cig_minus_4_gives_minus_0_575():
    # w = 0.5 -> γ_eff = 0.05; Δ = 0.05 * (4 - 1) = 0.15 -> Â = -0.5 * 1.15
    assert score(-0.5, [-4.0], [0.0], step=25) == pytest.approx([-0.575])


# --- Step 10 and G3 ---------------------------------------------------------------------


def test_combine_scales_the_advantage_by_one_plus_delta():
    # -2 * (1 + [0, 0.5]) = [-2, -3]
    assert combine(-2.0, [0.0, 0.5]).tolist() == [-2.0, -3.0]


def test_combine_with_zero_delta_returns_the_advantage_bitwise():
    assert combine(0.8660254037844386, [0.0]).tolist() == [0.8660254037844386]


def test_combine_rejects_negative_delta():
    with pytest.raises(ValueError, match="delta"):
        combine(1.0, [-0.1])


def test_default_amplification_bound_is_1_8():
    # 1 + max(0.2 * (5 - 1), 0.1 * (5 - 1), 0) = 1.8
    bound = amplification_bound(
        lambda_eff=LAMBDA, gamma_eff=GAMMA, kappa=5.0, tau_pos=1.0, tau_neg=1.0
    )
    assert bound == pytest.approx(1.8)


def test_amplification_bound_is_1_when_tau_exceeds_kappa():
    # κ - τ < 0 on both branches: the gate can never open
    bound = amplification_bound(lambda_eff=1.0, gamma_eff=1.0, kappa=2.0, tau_pos=3.0, tau_neg=3.0)
    assert bound == 1.0


# --- Guarantees G1-G4 as properties -------------------------------------------------------

logprob = st.one_of(
    st.floats(-1e4, 0.0),
    st.sampled_from([-np.inf, np.inf, np.nan]),
)
token_logprobs = st.lists(st.tuples(logprob, logprob), min_size=1, max_size=16)
advantage = st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_subnormal=False))
weight = st.floats(0.0, 10.0)
tau = st.floats(0.0, 10.0)
kappa = st.floats(0.01, 20.0)


@st.composite
def scoring_case(draw):
    pairs = draw(token_logprobs)
    return dict(
        teacher=[q for q, _ in pairs],
        student=[s for _, s in pairs],
        base_advantage=draw(advantage),
        step=draw(st.integers(0, 120)),
        schedule=draw(st.sampled_from(SCHEDULES)),
        lam=draw(weight),
        gam=draw(weight),
        tau_pos=draw(tau),
        tau_neg=draw(tau),
        kappa=draw(kappa),
        never_gate=draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs))),
    )


def run_case(c):
    """Steps 7-10 for one drawn case; returns (Â, Δ, λ_eff, γ_eff)."""
    w = anneal_weight(c["step"], schedule=c["schedule"])
    lambda_eff, gamma_eff = c["lam"] * w, c["gam"] * w
    cig_hat, _ = clipped_cig(c["teacher"], c["student"], kappa=c["kappa"])
    delta = gate(
        cig_hat,
        c["base_advantage"],
        lambda_eff=lambda_eff,
        gamma_eff=gamma_eff,
        tau_pos=c["tau_pos"],
        tau_neg=c["tau_neg"],
        never_gate=c["never_gate"],
    )
    return combine(c["base_advantage"], delta), delta, lambda_eff, gamma_eff


@settings(max_examples=200, deadline=None)
@given(teacher=st.lists(logprob, min_size=1, max_size=16), data=st.data(), k=kappa)
def test_clipped_cig_is_never_nan_and_stays_within_kappa(teacher, data, k):
    student = data.draw(st.lists(logprob, min_size=len(teacher), max_size=len(teacher)))
    cig_hat, nonfinite = clipped_cig(teacher, student, kappa=k)
    assert np.all(np.isfinite(cig_hat))
    assert np.all(np.abs(cig_hat) <= k)
    assert np.all(cig_hat[nonfinite] == 0.0)
    inputs_finite = np.isfinite(teacher) & np.isfinite(student)
    assert np.all(nonfinite[~inputs_finite])


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g1_token_advantage_keeps_the_sign_of_the_base_advantage(c):
    a_hat, _, _, _ = run_case(c)
    assert np.all(np.sign(a_hat) == np.sign(c["base_advantage"]))


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g2_token_advantage_is_never_smaller_in_magnitude(c):
    a_hat, delta, _, _ = run_case(c)
    assert np.all(delta >= 0.0)
    assert np.all(np.abs(a_hat) >= abs(c["base_advantage"]))


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g3_token_advantage_is_bounded_by_amplification_bound(c):
    a_hat, _, lambda_eff, gamma_eff = run_case(c)
    bound = amplification_bound(
        lambda_eff=lambda_eff,
        gamma_eff=gamma_eff,
        kappa=c["kappa"],
        tau_pos=c["tau_pos"],
        tau_neg=c["tau_neg"],
    )
    limit = abs(c["base_advantage"]) * bound
    assert np.all(np.abs(a_hat) <= limit * (1 + 1e-12))


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g4_zero_anneal_weight_gives_exactly_the_base_advantage(c):
    c["step"] = 10_000  # past the end of every decaying schedule
    c["schedule"] = c["schedule"] if c["schedule"] != "constant" else "linear"
    a_hat, _, _, _ = run_case(c)
    assert np.all(a_hat == c["base_advantage"])


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g4_zero_lambda_and_gamma_give_exactly_the_base_advantage(c):
    c["lam"] = c["gam"] = 0.0
    a_hat, _, _, _ = run_case(c)
    assert np.all(a_hat == c["base_advantage"])


@settings(max_examples=200, deadline=None)
@given(scoring_case())
def test_g4_identical_contexts_give_exactly_the_base_advantage(c):
    # q == s (finite) -> Î ≡ 0, and τ >= 0 keeps the gate shut
    c["student"] = c["teacher"] = [q if np.isfinite(q) else -1.0 for q in c["teacher"]]
    a_hat, _, _, _ = run_case(c)
    assert np.all(a_hat == c["base_advantage"])


@settings(max_examples=200, deadline=None)
@given(reward=st.floats(-1e6, 1e6), size=st.integers(1, 32), norm_by_std=st.booleans(),
       std_unbiased=st.booleans())
def test_g4_uniform_group_gives_all_zero_advantages(reward, size, norm_by_std, std_unbiased):
    a = grpo_advantages([reward] * size, norm_by_std=norm_by_std, std_unbiased=std_unbiased)
    assert np.all(a == 0.0)


@settings(max_examples=200, deadline=None)
@given(
    rewards=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=32),
    norm_by_std=st.booleans(),
    std_unbiased=st.booleans(),
)
def test_grpo_advantages_sum_to_zero(rewards, norm_by_std, std_unbiased):
    a = grpo_advantages(rewards, norm_by_std=norm_by_std, std_unbiased=std_unbiased)
    assert a.shape == (len(rewards),)
    # centred values cancel up to rounding of the mean
    scale = max(1.0, np.max(np.abs(a)))
    assert abs(a.sum()) <= 1e-9 * len(rewards) * scale


def test_calibrated_tau_is_the_quantile_that_passes_the_target_share():
    from amr_sd.algo.advantage import calibrated_tau

    cig = np.arange(20) / 10.0  # 0.0 .. 1.9
    tau = calibrated_tau(cig, 0.25, positive=True)
    assert tau == pytest.approx(np.quantile(cig, 0.75))
    assert (cig > tau).mean() == pytest.approx(0.25)
    # The negative branch reads the other tail: -CIG.
    tau_neg = calibrated_tau(-cig, 0.25, positive=False)
    assert tau_neg == pytest.approx(tau)
    assert (-(-cig) > tau_neg).mean() == pytest.approx(0.25)


def test_calibrated_tau_never_goes_below_zero_and_is_zero_without_tokens():
    from amr_sd.algo.advantage import calibrated_tau

    # Every hint token less likely: the positive gate must not open on them.
    assert calibrated_tau(np.full(10, -2.0), 0.5, positive=True) == 0.0
    assert calibrated_tau(np.full(10, 2.0), 0.5, positive=False) == 0.0
    assert calibrated_tau([], 0.1, positive=True) == 0.0
    # With tau >= 0, CIG == 0 everywhere still gives exact GRPO (G4).
    tau = calibrated_tau(np.zeros(8), 0.1, positive=True)
    assert np.all(gate(np.zeros(8), 1.0, lambda_eff=0.2, gamma_eff=0.1, tau_pos=tau) == 0)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, float("nan")])
def test_calibrated_tau_rejects_a_rate_outside_0_1(rate):
    from amr_sd.algo.advantage import calibrated_tau

    with pytest.raises(ValueError, match="rate"):
        calibrated_tau(np.zeros(3), rate, positive=True)


# --- remove_student_trend (ScoringConfig.cig_correction = "student_trend") -----------------------


def test_student_trend_is_removed_and_the_mean_kept():
    # Î = 2 - 0.5 s exactly: the trend is all there is, so Î becomes its mean, 2 - 0.5·mean(s).
    s = np.array([-1.0, -3.0, -9.0, -2.0])
    cig = 2.0 - 0.5 * s
    out = remove_student_trend(cig, s, np.ones(4, bool))
    np.testing.assert_allclose(out, np.full(4, cig.mean()))


def test_student_trend_leaves_cig_uncorrelated_with_the_student():
    rng = np.random.default_rng(0)
    s = -rng.exponential(2.0, 200)
    cig = np.clip(-0.6 * s + rng.normal(0, 0.5, 200), -5, 5)
    out = remove_student_trend(cig, s, np.ones(200, bool))
    assert abs(np.corrcoef(out, s)[0, 1]) < 1e-9
    assert out.mean() == pytest.approx(cig.mean())


def test_student_trend_ignores_masked_tokens_and_keeps_zero_cig_zero():
    s = np.array([-1.0, -2.0, -4.0, -30.0])
    mask = np.array([True, True, True, False])  # e.g. EOS: neither fitted nor changed
    cig = np.array([0.5, 1.0, 2.0, 4.0])  # 0.5 + ... a trend of -0.5 per nat on the first three
    out = remove_student_trend(cig, s, mask)
    assert out[3] == 4.0
    np.testing.assert_allclose(out[:3], np.full(3, cig[:3].mean()))
    zeros = remove_student_trend(np.zeros(4), s, np.ones(4, bool))  # G4
    assert np.array_equal(zeros, np.zeros(4))


def test_student_trend_needs_three_tokens_and_a_varying_student():
    cig = np.array([1.0, 2.0])
    assert np.array_equal(remove_student_trend(cig, [-1.0, -2.0], [True, True]), cig)
    flat = np.array([1.0, 2.0, 3.0])
    assert np.array_equal(remove_student_trend(flat, [-1.0] * 3, [True] * 3), flat)


def test_student_trend_stays_within_kappa():
    s = np.array([-0.1, -0.2, -20.0])
    cig = np.array([-5.0, -5.0, 5.0])
    out = remove_student_trend(cig, s, np.ones(3, bool), kappa=5.0)
    assert np.all(np.abs(out) <= 5.0)
