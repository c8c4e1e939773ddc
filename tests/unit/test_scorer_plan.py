"""Specification of the scorer's logic that needs no engine: short-circuits and plan errors.

`NoCallEngine` holds the embedded model's real tokenizer and limits, and fails any engine call,
so a passing short-circuit test proves docs/method.md step 2: exact GRPO with zero engine calls.
"""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from amr_client.schemas import ScoreRequest, ScoringConfig
from amr_sd.algo.advantage import grpo_advantages
from amr_sd.algo.context import render_prompt
from amr_sd.algo.reflection import CRITIQUE, HINT
from amr_sd.engine.models import materialize_embedded
from amr_sd.engine.standin import StandInEngine
from amr_sd.errors import InvalidRequest
from amr_sd.scoring import Scorer

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
TOKENS = [28, 29, 30]
VOCAB_SIZE = 49152
MAX_MODEL_LEN = 512


class NoCallEngine(StandInEngine):
    """The stand-in engine with this file's limits; every engine call fails the test."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, model_id="test", vocab_size=VOCAB_SIZE,
                         max_model_len=MAX_MODEL_LEN)

    async def generate(self, prompts, params, adapter=None):
        raise AssertionError("engine called")

    async def score(self, sequences, start_indices, adapter=None):
        raise AssertionError("engine called")

    async def warmup(self):
        raise AssertionError("engine called")


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


@pytest.fixture
def scorer(tokenizer):
    return Scorer(NoCallEngine(tokenizer))


def group(rewards, *, token_ids=TOKENS, **prompt) -> dict:
    return {"prompt": {"messages": MESSAGES, **prompt},
            "rollouts": [{"token_ids": list(token_ids), "reward": r} for r in rewards]}


def request(*groups, step, config=None) -> ScoreRequest:
    body = {"groups": list(groups), "step": step}
    if config is not None:
        body["config"] = config
    return ScoreRequest.model_validate(body)


def score(scorer, req):
    return asyncio.run(scorer.score(req))


def assert_exact_grpo(response, rewards):
    """Every token carries its rollout's GRPO advantage, bit for bit."""
    expected = grpo_advantages(rewards).tolist()
    scored = response.groups[0].rollouts
    assert [r.base_advantage for r in scored] == expected
    for r in scored:
        assert r.advantages == [r.base_advantage] * len(TOKENS)
    assert response.stats.reflections_requested == 0
    assert response.stats.tokens_scored == 0


# --- short-circuits (docs/method.md step 2, worked numbers 2 and 3) ----------------------------


def test_step_50_with_linear_decay_50_returns_exact_grpo_without_engine_call(scorer):
    # u = (50 - 0) / 50 = 1 -> w = 1 - u = 0 -> λ_eff = γ_eff = 0
    response = score(scorer, request(group([1.0, 0.0, 0.0, 1.0]), step=50))
    assert response.anneal_weight == 0.0
    assert_exact_grpo(response, [1.0, 0.0, 0.0, 1.0])


def test_zero_lambda_and_gamma_return_exact_grpo_without_engine_call(scorer):
    req = request(group([1.0, 0.0, 0.0, 1.0]), step=0,
                  config={"lambda_pos": 0.0, "gamma_neg": 0.0})
    response = score(scorer, req)
    assert response.anneal_weight == 1.0  # the weight is full; λ = γ = 0 alone short-circuits
    assert_exact_grpo(response, [1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
                         ids=["all_correct", "all_failed"])
def test_uniform_group_gets_zero_advantages_without_engine_call(scorer, rewards):
    response = score(scorer, request(group(rewards), step=0))
    for r in response.groups[0].rollouts:
        assert r.base_advantage == 0.0
        assert r.advantages == [0.0, 0.0, 0.0]
    assert response.stats.reflections_requested == 0


def test_single_rollout_gets_zero_advantage_without_engine_call(scorer):
    # G = 1: no relative signal (and the unbiased std is undefined), so A = 0.
    response = score(scorer, request(group([1.0]), step=0))
    (only,) = response.groups[0].rollouts
    assert only.base_advantage == 0.0
    assert only.advantages == [0.0, 0.0, 0.0]


def test_constant_schedule_at_a_late_step_does_not_short_circuit(scorer):
    # constant: w = 1 at any step, so the group needs reflections and the engine is called.
    req = request(group([1.0, 0.0]), step=10_000, config={"schedule": "constant"})
    assert scorer.plan(req).anneal_weight == 1.0
    with pytest.raises(AssertionError, match="engine called"):
        score(scorer, req)


# --- what the plan asks of the engine ---------------------------------------------------------


def test_plan_asks_a_hint_for_positive_a_critique_for_negative_and_nothing_for_zero(scorer):
    # rewards [1, 0, 0.5]: mean 0.5 -> A = [+, -, 0]
    plan = scorer.plan(request(group([1.0, 0.0, 0.5]), step=0))
    assert [w.kind for w in plan.groups[0]] == [HINT, CRITIQUE, None]
    assert [w.index for w in plan.active] == [0, 1]


def test_plan_with_zero_lambda_only_asks_critiques(scorer):
    plan = scorer.plan(request(group([1.0, 0.0]), step=0, config={"lambda_pos": 0.0}))
    assert [w.kind for w in plan.groups[0]] == [None, CRITIQUE]


# --- plan errors name the exact field ----------------------------------------------------------


def test_token_id_equal_to_vocab_size_names_group_rollout_and_position(scorer):
    bad = group([1.0, 0.0])
    bad["rollouts"][1]["token_ids"] = [28, 29, VOCAB_SIZE]
    req = request(group([1.0, 0.0]), bad, step=0)
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "groups[1].rollouts[1].token_ids[2]"
    assert "outside the model's vocabulary (size 49152)" in exc.value.message


def test_largest_token_id_in_vocabulary_is_accepted(scorer):
    plan = scorer.plan(request(group([1.0, 0.0], token_ids=[28, VOCAB_SIZE - 1]), step=50))
    assert len(plan.groups[0]) == 2


def test_prompt_token_id_outside_vocabulary_names_prompt_token_ids(scorer):
    req = request(group([1.0, 0.0], prompt_token_ids=[1, 28, 50_000]), step=0)
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "groups[0].prompt.prompt_token_ids[2]"
    assert "outside the model's vocabulary" in exc.value.message


def test_prompt_plus_response_over_max_model_len_names_the_token_ids(scorer, tokenizer):
    prompt_len = len(render_prompt(tokenizer, messages=MESSAGES))
    response = [28] * (MAX_MODEL_LEN - prompt_len + 1)  # one token too many
    req = request(group([1.0, 0.0], token_ids=response), step=50)
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "groups[0].rollouts[0].token_ids"
    assert f"= {MAX_MODEL_LEN + 1} tokens exceeds max_model_len {MAX_MODEL_LEN}" in exc.value.message


def test_prompt_plus_response_of_exactly_max_model_len_is_accepted(scorer, tokenizer):
    # step 50: no reflection, so the teacher's longer prompt is not needed.
    prompt_len = len(render_prompt(tokenizer, messages=MESSAGES))
    response = [28] * (MAX_MODEL_LEN - prompt_len)
    plan = scorer.plan(request(group([1.0, 0.0], token_ids=response), step=50))
    assert plan.active == []


def test_teacher_prompt_with_reflection_over_max_model_len_names_the_token_ids(scorer, tokenizer):
    # The student context fits (prompt + 400 <= 512), but the teacher's, with room for a
    # max_reflection_tokens (128) reflection, does not.
    prompt_len = len(render_prompt(tokenizer, messages=MESSAGES))
    assert prompt_len + 400 <= MAX_MODEL_LEN
    req = request(group([1.0, 0.0], token_ids=[28] * 400), step=0)
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "groups[0].rollouts[0].token_ids"
    assert "teacher prompt with reflection" in exc.value.message
    assert "max_model_len" in exc.value.message


def test_config_override_invalid_after_merge_names_the_config_field(scorer):
    # A request built in-process can carry an unvalidated config (assignment or model_construct);
    # the merge revalidates it rather than letting decay_steps = 0 reach the schedule.
    req = request(group([1.0, 0.0]), step=0)
    req.config = ScoringConfig.model_construct(decay_steps=0)
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "config.decay_steps"
    assert "greater than or equal to 1" in exc.value.message


def test_rewards_whose_advantages_overflow_are_refused_naming_the_group(scorer):
    # Without std normalisation A = r - mean is in reward units: 1.7e308 + 1.7e308 / 3 > 1.8e308.
    req = request(group([1.0, 0.0]), group([1.7e308, -1.7e308, -1.7e308]), step=0,
                  config={"norm_by_std": False})
    with pytest.raises(InvalidRequest) as exc:
        scorer.plan(req)
    assert exc.value.field == "groups[1].rollouts"
    assert "rewards" in exc.value.message and "scale the rewards down" in exc.value.message


def test_huge_rewards_give_the_advantages_of_their_ratios_through_the_scorer(scorer):
    plan = scorer.plan(request(group([1e200, 0.0]), step=50))
    assert [r.base_advantage for r in plan.groups[0]] == pytest.approx([2**-0.5, -(2**-0.5)])


# --- worked number 7 through the scorer ---------------------------------------------------------


@pytest.mark.parametrize(("config", "magnitude"), [
    # mean 0.5; unbiased std sqrt(1/3) = 0.57735 -> 0.5 / 0.57735 = 0.866025
    ({}, 0.866025),
    # biased std 0.5 -> 0.5 / (0.5 + 1e-6) ≈ 1
    ({"std_unbiased": False}, 1.0),
    # r - mean, no division
    ({"norm_by_std": False}, 0.5),
], ids=["unbiased_std", "biased_std", "no_std_norm"])
def test_rewards_1001_give_the_worked_base_advantages(scorer, config, magnitude):
    # step 50: w = 0, so the base advantage is the whole answer and no engine is needed.
    response = score(scorer, request(group([1.0, 0.0, 0.0, 1.0]), step=50, config=config))
    scored = response.groups[0].rollouts
    expected = [magnitude, -magnitude, -magnitude, magnitude]
    assert [r.base_advantage for r in scored] == pytest.approx(expected, abs=1e-5)
    for r in scored:
        assert r.advantages == [r.base_advantage] * len(TOKENS)


def test_std_eps_sets_the_epsilon_of_the_base_advantage(scorer):
    # TRL divides by std + 1e-4: 0.5 / (0.5773503 + 1e-4) = 0.8658754 (vs 0.8660239 at 1e-6).
    response = score(scorer, request(group([1.0, 0.0, 0.0, 1.0]), step=50, config={"std_eps": 1e-4}))
    base = [r.base_advantage for r in response.groups[0].rollouts]
    std = (1 / 3) ** 0.5
    a = 0.5 / (std + 1e-4)
    assert base == pytest.approx([a, -a, -a, a], rel=1e-12)
    assert base[0] == pytest.approx(0.8658754, abs=1e-7)


class OneWriterFails(NoCallEngine):
    """The first writer fails at once; every other waits until cancelled."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.calls = 0
        self.waiting = 0
        self.cancelled = 0

    async def generate(self, prompts, params, adapter=None):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.05)
            raise RuntimeError("engine failed this writer")
        self.waiting += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_a_failed_writer_cancels_every_other_engine_call_of_the_request(tokenizer):
    # Two mixed groups: four writers in flight; the first one's failure must leave none running.
    engine = OneWriterFails(tokenizer)
    req = request(group([1.0, 0.0]), group([0.0, 1.0]), step=0)

    async def scored_then_look():
        with pytest.raises(RuntimeError, match="engine failed"):
            await Scorer(engine).score(req)
        # Still inside the loop: asyncio.run's own clean-up would cancel leftovers anyway.
        return engine.waiting, engine.cancelled

    waiting, cancelled = asyncio.run(scored_then_look())
    assert engine.calls == 4 and waiting == 3
    assert cancelled == waiting


class AnnouncingWriter(NoCallEngine):
    """A writer that always starts "The answer is 5" and honours `abandon_when` as vLLM does;
    scoring returns zeros. Pure scorer logic: what happens to an abandoned reflection."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.params = []

    async def generate(self, prompts, params, adapter=None):
        from amr_sd.engine.base import Generation

        self.params.append(params)
        text = "The answer is 5"
        assert params.abandon_when is not None and params.abandon_when(text)
        return [Generation(text, tuple(self.tokenizer.encode(text, add_special_tokens=False)),
                           "abandoned") for _ in prompts]

    async def score(self, sequences, start_indices, adapter=None):
        raise AssertionError("nothing was accepted, so nothing is rescored")


def test_an_abandoned_reflection_is_rejected_for_its_answer_phrase_and_retried(tokenizer):
    from amr_sd.algo.reflection import announces_answer

    engine = AnnouncingWriter(tokenizer)
    request = ScoreRequest.model_validate({"step": 0, "config": {"max_retries": 2}, "groups": [{
        "prompt": {"messages": MESSAGES}, "reference": {"answer": "5"},
        "rollouts": [{"token_ids": TOKENS, "reward": 1.0}, {"token_ids": TOKENS, "reward": 0.0}]}]})
    answer = asyncio.run(Scorer(engine).score(request))
    assert {p.abandon_when for p in engine.params} == {announces_answer}
    for rollout in answer.groups[0].rollouts:
        record = rollout.reflection
        assert not record.accepted and record.attempts == 3
        assert record.reject_reasons == ["answer_phrase"] * 3
        assert record.rejected_texts == ["The answer is 5"] * 3  # each attempt, beside its reason
        assert record.text == "The answer is 5"
        assert rollout.advantages == [rollout.base_advantage] * len(TOKENS)
    assert answer.stats.reflections_generated == 6


class RestatingWriter(NoCallEngine):
    """A critic whose greedy critique corrects step 2 and also restates its wrong value, and
    whose retries do not; hints are plain. Scoring returns zeros."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.critiques = 0

    async def generate(self, prompts, params, adapter=None):
        from amr_sd.engine.base import Generation

        if "INCORRECT" in self.tokenizer.decode(prompts[0]):
            self.critiques += 1
            text = "Step 2 should be: 42 * 4 = 168, not 178." if params.seed is None else \
                "Step 2 should be: 42 * 4 = 168."
        else:
            text = "Step 2 is the easiest to get wrong."
        return [Generation(text + "</critique>", (), "stop") for _ in prompts]

    async def score(self, sequences, start_indices, adapter=None):
        import numpy as np

        return [np.zeros(len(seq) - start) for seq, start in zip(sequences, start_indices)]


@pytest.mark.parametrize("template, reasons", [("v2", ["repeats_mistake"]), ("v1", [])])
def test_a_v2_critique_restating_the_attempts_wrong_value_is_refused_and_retried(
        tokenizer, template, reasons):
    attempt = "Step 1: 12 + 30 = 42.\nStep 2: 42 * 4 = 178.\nStep 3: 178 - 20 = 158."
    peer = "Step 1: 12 + 30 = 42.\nStep 2: 42 * 4 = 168.\nStep 3: 168 - 20 = 148."
    rollouts = [{"token_ids": tokenizer.encode(text, add_special_tokens=False), "reward": r}
                for text, r in ((peer, 1.0), (attempt, 0.0))]
    req = ScoreRequest.model_validate({
        "step": 0, "config": {"reflection_template": template, "max_retries": 2},
        "groups": [{"prompt": {"messages": MESSAGES}, "rollouts": rollouts}]})
    engine = RestatingWriter(tokenizer)
    critique = asyncio.run(Scorer(engine).score(req)).groups[0].rollouts[1].reflection
    assert critique.accepted and critique.reject_reasons == reasons
    # The refused greedy attempt is kept beside its reason, the accepted one is `text`.
    assert critique.rejected_texts == (["Step 2 should be: 42 * 4 = 168, not 178."] if reasons else [])
    assert critique.text == ("Step 2 should be: 42 * 4 = 168." if reasons else
                             "Step 2 should be: 42 * 4 = 168, not 178.")
    assert engine.critiques == 1 + len(reasons)


class CigByKind(NoCallEngine):
    """Scores the student context 0 and the teacher +3 (hint) or -3 (critique) on the first
    `marked` response tokens: pure gate and stats logic, no model numerics."""

    def __init__(self, tokenizer, student_len):
        super().__init__(tokenizer)
        self.student_len = student_len

    async def score(self, sequences, start_indices, adapter=None):
        import numpy as np

        out = []
        for seq, start in zip(sequences, start_indices):
            values = np.zeros(len(seq) - start)
            if start != self.student_len:
                hint = "<hint>" in self.tokenizer.decode(seq[:start])
                values[: 1 if hint else 2] = 3.0 if hint else -3.0
            out.append(values)
        return out


def test_batch_stats_report_gate_rate_and_cig_quantiles_by_branch(tokenizer):
    student_len = len(render_prompt(tokenizer, messages=MESSAGES))
    rollouts = [{"token_ids": TOKENS, "reward": r, "reflection_override": "Check each step."}
                for r in (1.0, 0.0, 0.0, 1.0)]
    req = ScoreRequest.model_validate(
        {"step": 0, "groups": [{"prompt": {"messages": MESSAGES}, "rollouts": rollouts}]})
    stats = asyncio.run(Scorer(CigByKind(tokenizer, student_len)).score(req)).stats
    pos, neg = stats.positive, stats.negative
    assert (pos.rollouts, pos.reflected_tokens, pos.gated_tokens) == (2, 6, 2)
    assert (neg.rollouts, neg.reflected_tokens, neg.gated_tokens) == (2, 6, 4)
    assert pos.gate_rate == pytest.approx(2 / 6) and neg.gate_rate == pytest.approx(4 / 6)
    assert stats.gate_rate == pytest.approx(6 / 12)
    # Hints: CIG [3, 0, 0] twice; critiques: [-3, -3, 0] twice.
    assert (pos.cig_p50, pos.cig_p99) == (pytest.approx(0.0), pytest.approx(3.0))
    assert (neg.cig_p01, neg.cig_p50, neg.cig_p95) == (
        pytest.approx(-3.0), pytest.approx(-3.0), pytest.approx(0.0))


def test_branch_stats_reach_prometheus_per_branch():
    from prometheus_client import CollectorRegistry

    from amr_client.schemas import BatchStats, BranchStats
    from amr_sd.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    stats = BatchStats(groups=1, rollouts=2, response_tokens=6, tokens_scored=12,
                       reflected_tokens=3, gated_tokens=1, gate_rate=1 / 3,
                       reflections_requested=1, reflections_generated=1, reflections_accepted=1,
                       reflections_rejected=0, acceptance_rate=1.0, cig_mean=-1.0, cig_std=1.0,
                       nonfinite_cig=0, mean_abs_base_advantage=1.0, mean_abs_advantage=1.05,
                       negative=BranchStats(rollouts=1, reflected_tokens=3, gated_tokens=1,
                                            gate_rate=1 / 3, cig_p01=-2.5, cig_p50=-0.1))
    metrics.observe_scoring(stats)
    registry = metrics.registry
    get = registry.get_sample_value
    assert get("amr_sd_branch_gate_rate_sum", {"branch": "negative"}) == pytest.approx(1 / 3)
    # A branch with no reflected tokens is not observed: no zero that would drag its rate down.
    assert get("amr_sd_branch_gate_rate_count", {"branch": "positive"}) is None
    assert get("amr_sd_branch_cig_quantile_bucket",
               {"branch": "negative", "quantile": "p01", "le": "-2.0"}) == 1.0
    assert get("amr_sd_branch_cig_quantile_bucket",
               {"branch": "negative", "quantile": "p01", "le": "-3.0"}) == 0.0


class GradedCig(CigByKind):
    """Teacher CIG 0.0, 0.1, ... 1.9 along the response (negated for critiques)."""

    async def score(self, sequences, start_indices, adapter=None):
        import numpy as np

        out = []
        for seq, start in zip(sequences, start_indices):
            n = len(seq) - start
            if start == self.student_len:
                out.append(np.zeros(n))
            else:
                sign = 1.0 if "<hint>" in self.tokenizer.decode(seq[:start]) else -1.0
                out.append(sign * np.arange(n) / 10.0)
        return out


def test_a_calibrated_gate_sets_each_branch_tau_from_the_whole_request(tokenizer):
    import numpy as np

    student_len = len(render_prompt(tokenizer, messages=MESSAGES))
    tokens = list(range(100, 120))
    groups = [{"prompt": {"messages": MESSAGES}, "rollouts": [
        {"token_ids": tokens, "reward": r, "reflection_override": "Check each step."}
        for r in (1.0, 0.0)]} for _ in range(2)]
    req = ScoreRequest.model_validate({"step": 0, "groups": groups, "return": {"cig": True},
                                       "config": {"gate_rate_target": 0.25}})
    seen = []

    async def on_group(index, group):
        seen.append(index)

    answer = asyncio.run(Scorer(GradedCig(tokenizer, student_len)).score(req, on_group=on_group))
    expected = np.quantile(np.arange(20) / 10.0, 0.75)
    for branch in (answer.stats.positive, answer.stats.negative):
        assert branch.tau == pytest.approx(expected)
        assert branch.gate_rate == pytest.approx(0.25) and branch.gated_tokens == 10
    assert sorted(seen) == [0, 1]  # every group still reaches the stream
    hint = answer.groups[0].rollouts[0]
    assert hint.gated == [c > expected for c in hint.cig]
    # The fixed default tau (1 nat) on the same request gates 9 of 20 tokens per rollout.
    fixed = asyncio.run(Scorer(GradedCig(tokenizer, student_len)).score(
        ScoreRequest.model_validate({"step": 0, "groups": groups})))
    assert fixed.stats.positive.tau == 1.0 and fixed.stats.positive.gated_tokens == 18


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_gate_rate_target_outside_0_1_names_the_field(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        ScoringConfig(gate_rate_target=value)
    assert err.value.errors()[0]["loc"] == ("gate_rate_target",)
