"""The peer benchmark sends TRL exactly the sequences amr-sd's engine scores: checked against the
scorer itself, with an engine that records what it is asked to score."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import AutoTokenizer

from amr_client.schemas import ScoreRequest
from amr_sd.engine.models import materialize_embedded
from amr_sd.engine.standin import StandInEngine
from amr_sd.scoring import Scorer
from bench.common import corpus
from bench.speed import peer_trl


class RecordingEngine(StandInEngine):
    """The stand-in engine, noting each (sequence, start) it is asked to score."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, model_id="recording")
        self.scored: list[tuple[tuple[int, ...], int]] = []

    async def generate(self, prompts, params, adapter=None):
        raise AssertionError("the peer's rollouts bring their reflection")

    async def score(self, sequences, start_indices, adapter=None):
        self.scored += [(tuple(s), st) for s, st in zip(sequences, start_indices)]
        return [np.zeros(len(s) - st) for s, st in zip(sequences, start_indices)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


@pytest.mark.parametrize("student_logprobs", [False, True])
def test_trl_gets_the_sequences_the_scorer_scores(tokenizer, student_logprobs):
    responses = [s[peer_trl.START:] for s in corpus.sequences(tokenizer, 8, peer_trl.SEQ_LEN)]
    engine = RecordingEngine(tokenizer)
    request = ScoreRequest.model_validate(
        {"groups": peer_trl._amr_groups(responses, student_logprobs), "step": 0})
    asyncio.run(Scorer(engine).score(request))
    teacher, student = peer_trl.scored_sequences(tokenizer, responses)
    expected = teacher if student_logprobs else teacher + student
    assert sorted(engine.scored) == sorted((tuple(s), st) for s, st in expected)
    # Every pass scores exactly the response, behind a prompt the two contexts do not share.
    for (seq, start), ids in zip(teacher, responses):
        assert seq[start:] == ids
    assert len({st for _, st in teacher}) >= 1 and all(st > student[0][1] for _, st in teacher)


def test_agreement_reads_trl_rows_of_one_list_per_token():
    # TRL's actual_logprobs hold [[lp], ...]; compared without flattening they would broadcast.
    trl = [[[-1.0], [-2.0], [-3.5]], [[-0.5]]]
    amr = [[-1.0, -2.25, -3.0], [-0.5]]
    assert peer_trl.agreement(trl, amr) == 0.5
    with pytest.raises(AssertionError, match="3 teacher logprobs where amr-sd gave 2"):
        peer_trl.agreement([[[-1.0]] * 3], [[-1.0, -1.0]])
