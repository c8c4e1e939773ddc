"""The transformers reference engine honours the same protocol as the vLLM engine."""

import asyncio

import numpy as np
import pytest

from amr_client.schemas import ScoreRequest
from amr_sd.algo.context import render_prompt
from amr_sd.engine.base import GenerationParams
from amr_sd.engine.hf import HFEngine
from amr_sd.engine.models import EMBEDDED_MODEL
from amr_sd.scoring import Scorer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hf():
    return HFEngine(EMBEDDED_MODEL)


def test_generation_stops_at_the_stop_string_and_keeps_it(hf):
    prompt = render_prompt(hf.tokenizer, messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                           prefill="4, 5,")
    [free] = asyncio.run(hf.generate([prompt], GenerationParams(max_tokens=12)))
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop = free.text.strip()[:2]  # a string the greedy continuation is known to produce
    [cut] = asyncio.run(hf.generate([prompt], GenerationParams(max_tokens=12, stop=(stop,))))
    assert cut.finish_reason == "stop" and cut.text.endswith(stop)
    assert free.text.startswith(cut.text)


def test_scorer_runs_on_the_reference_engine(hf, example_groups):
    group = example_groups[0]
    group = {**group, "rollouts": [{**r, "reflection_override": "Add the two numbers."}
                                   for r in group["rollouts"]]}
    req = ScoreRequest.model_validate({"groups": [group], "step": 0, "return": {"logprobs": True}})
    resp = asyncio.run(Scorer(hf).score(req))
    for r_in, r_out in zip(group["rollouts"], resp.groups[0].rollouts):
        assert len(r_out.advantages) == len(r_in["token_ids"])
        assert np.all(np.array(r_out.student_logprobs) <= 0)
