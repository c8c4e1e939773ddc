"""The score cache: keys that change with everything a pass depends on, exact values, and a scorer
that reads a resent group's passes back instead of scoring them again.

The engine here is a counting stand-in with made-up numbers: what is under test is which passes
reach the engine and that cached values come back bit for bit, not the numbers themselves (the
real-engine suites test scoring).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import AutoTokenizer

from amr_client.schemas import ScoreRequest
from amr_sd.cache import (SCORE_KEY_PREFIX, MemoryCache, pack_logprobs, score_context, score_key,
                          unpack_logprobs)
from amr_sd.engine.base import EngineSettings, Policy
from amr_sd.engine.models import materialize_embedded
from amr_sd.engine.standin import StandInEngine
from amr_sd.scoring import Scorer

CONTEXT = score_context(model_id="m", policy_version="base", adapter=None, engine="E", dtype="float32")


def test_a_key_changes_with_the_context_the_start_and_every_token():
    seq = [5, 6, 7, 8]
    key = score_key(CONTEXT, seq, 2)
    assert key.startswith(SCORE_KEY_PREFIX)
    assert key == score_key(CONTEXT, tuple(seq), 2) == score_key(CONTEXT, np.array(seq), 2)
    others = {score_key(CONTEXT, seq, 1), score_key(CONTEXT, [5, 6, 7, 9], 2),
              score_key(CONTEXT, [5, 6, 7], 2), score_key(CONTEXT, [5, 6, 7, 8, 0], 2)}
    for field, value in [("model_id", "m2"), ("policy_version", "v2"), ("adapter", ["a", "/p"]),
                         ("engine", "F"), ("dtype", "bfloat16")]:
        parts = dict(model_id="m", policy_version="base", adapter=None, engine="E", dtype="float32")
        others.add(score_key(score_context(**{**parts, field: value}), seq, 2))
    assert key not in others and len(others) == 9


def test_the_context_does_not_depend_on_argument_order():
    assert score_context(a=1, b=[2]) == score_context(b=[2], a=1)


def test_values_round_trip_bit_for_bit():
    values = np.array([-0.0, -1e-300, -3.141592653589793, -np.inf, -7.25])
    back = unpack_logprobs(pack_logprobs(values), len(values))
    assert back.dtype == np.float64 and back.tobytes() == values.tobytes()


@pytest.mark.parametrize("value", [{}, {"f8": 3}, {"f8": "not base64!"}, {"f4": "AAAA"},
                                   pack_logprobs(np.zeros(3))])
def test_a_value_of_another_shape_or_damaged_is_a_miss(value):
    assert unpack_logprobs(value, 4) is None


class CountingEngine(StandInEngine):
    """The stand-in engine: deterministic made-up logprobs, and `passes` counts the passes that
    reach it."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, model_id="counting", max_model_len=1024,
                         settings=EngineSettings(dtype="float32"))

    async def generate(self, prompts, params, adapter=None):
        raise AssertionError("every rollout brings its reflection here")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


def request(tokenizer, student_logprobs=None) -> ScoreRequest:
    wrong = tokenizer.encode("2 + 3 = 6. The answer is 6.", add_special_tokens=False)
    right = tokenizer.encode("2 + 3 = 5. The answer is 5.", add_special_tokens=False)
    rollouts = [{"token_ids": wrong, "reward": 0.0, "reflection_override": "Recheck the sum."},
                {"token_ids": right, "reward": 1.0, "reflection_override": "Adding is right."}]
    if student_logprobs is not None:
        rollouts[0]["student_logprobs"] = [student_logprobs] * len(wrong)
    return ScoreRequest.model_validate({
        "groups": [{"prompt": {"messages": [{"role": "user", "content": f"What is 2 + 3? ({g})"}]},
                    "rollouts": rollouts} for g in range(2)],
        "step": 0, "return": {"cig": True, "logprobs": True}})


def run(scorer, req):
    return asyncio.run(scorer.score(req))


def test_a_resent_request_is_read_back_with_the_same_answer(tokenizer):
    engine = CountingEngine(tokenizer)
    scorer = Scorer(engine, score_cache=MemoryCache())
    first = run(scorer, request(tokenizer))
    assert engine.passes == 8 and first.stats.scores_cached == 0  # 2 groups x 2 rollouts x 2
    assert first.stats.tokens_scored == 2 * first.stats.response_tokens
    second = run(scorer, request(tokenizer))
    assert engine.passes == 8, "a cached pass reached the engine"
    assert second.stats.scores_cached == 8 and second.stats.tokens_scored == 0
    assert second.groups == first.groups


def test_another_policy_version_scores_again(tokenizer):
    engine = CountingEngine(tokenizer)
    scorer = Scorer(engine, score_cache=MemoryCache())
    run(scorer, request(tokenizer))
    again = asyncio.run(scorer.score(request(tokenizer), Policy("step-2")))
    assert engine.passes == 16 and again.stats.scores_cached == 0


def test_a_supplied_student_pass_is_neither_scored_nor_cached(tokenizer):
    engine = CountingEngine(tokenizer)
    scorer = Scorer(engine, score_cache=MemoryCache())
    first = run(scorer, request(tokenizer, student_logprobs=-1.0))
    assert engine.passes == 6  # rollout 0 of each group sends its student pass
    second = run(scorer, request(tokenizer, student_logprobs=-1.0))
    assert engine.passes == 6 and second.stats.scores_cached == 6
    assert second.groups == first.groups
    # The caller's student logprobs changed: the cached teacher pass still serves, CIG follows.
    third = run(scorer, request(tokenizer, student_logprobs=-2.0))
    assert engine.passes == 6 and third.groups != first.groups


def test_a_damaged_entry_is_scored_again_and_replaced(tokenizer):
    engine = CountingEngine(tokenizer)
    cache = MemoryCache()
    scorer = Scorer(engine, score_cache=cache)
    first = run(scorer, request(tokenizer))
    asyncio.run(cache.set_many({key: {"f8": "AAAA"} for key in list(cache._entries)[:1]}))
    second = run(scorer, request(tokenizer))
    assert engine.passes == 9 and second.stats.scores_cached == 7
    assert second.groups == first.groups


def test_without_a_score_cache_every_request_is_scored(tokenizer):
    engine = CountingEngine(tokenizer)
    scorer = Scorer(engine)
    run(scorer, request(tokenizer))
    second = run(scorer, request(tokenizer))
    assert engine.passes == 16 and second.stats.scores_cached == 0
