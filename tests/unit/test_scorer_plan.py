"""Specification of the scorer's logic that needs no engine: short-circuits and plan errors.

`NoCallEngine` holds the embedded model's real tokenizer and limits, and fails any engine call,
so a passing short-circuit test proves METHOD step 2: exact GRPO with zero engine calls.
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
from amr_sd.errors import InvalidRequest
from amr_sd.scorer import Scorer

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
TOKENS = [28, 29, 30]
VOCAB_SIZE = 49152
MAX_MODEL_LEN = 512


class NoCallEngine:
    """The engine surface the scorer reads, with every engine call failing the test."""

    model_id = "test"
    policy_version = "base"
    vocab_size = VOCAB_SIZE
    max_model_len = MAX_MODEL_LEN
    supports_seed = False

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    async def generate(self, prompts, params, adapter=None):
        raise AssertionError("engine called")

    async def score(self, sequences, start_indices, adapter=None):
        raise AssertionError("engine called")

    async def warmup(self):
        raise AssertionError("engine called")

    async def close(self):
        pass


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


# --- short-circuits (METHOD step 2, worked numbers 2 and 3) ------------------------------------


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
        assert record.text == "The answer is 5"
        assert rollout.advantages == [rollout.base_advantage] * len(TOKENS)
    assert answer.stats.reflections_generated == 6
