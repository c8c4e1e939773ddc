"""The peer benchmark sends the peers exactly the sequences amr-sd's engine scores (checked against
the scorer itself, with an engine that records what it is asked to score), reads their answers
as amr-sd reads its engine's, and reads each row against the peer row doing the same passes."""

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
from bench.speed import peer


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
def test_peers_get_the_sequences_the_scorer_scores(tokenizer, student_logprobs):
    responses = [s[peer.START:] for s in corpus.sequences(tokenizer, 8, peer.SEQ_LEN)]
    engine = RecordingEngine(tokenizer)
    request = ScoreRequest.model_validate(
        {"groups": peer._amr_groups(responses, student_logprobs), "step": 0})
    asyncio.run(Scorer(engine).score(request))
    teacher, student = peer.scored_sequences(tokenizer, responses)
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
    assert peer.agreement(trl, amr) == 0.5
    with pytest.raises(AssertionError, match="3 teacher logprobs where amr-sd gave 2"):
        peer.agreement([[[-1.0]] * 3], [[-1.0, -1.0]])


def test_completions_payload_scores_token_ids_without_generating():
    items = [([1, 2, 3], 2), ([4, 5], 1)]
    assert peer.completions_payload("m", items, 0) == {
        "model": "m", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1, "temperature": 1.0,
        "prompt_logprobs": 0}


def test_response_logprobs_reads_each_actual_token_from_its_row():
    # vLLM's shape: None at position 0, rows keyed by token id as a string; at k = 1 a row holds
    # the top token and the actual one. Choices are matched to sequences by index, not order.
    items = [([7, 8, 9], 1), ([5, 6], 1)]
    answer = {"choices": [
        {"index": 1, "prompt_logprobs": [None, {"6": {"logprob": -0.5, "rank": 1}}]},
        {"index": 0, "prompt_logprobs": [
            None,
            {"3": {"logprob": -0.1, "rank": 1}, "8": {"logprob": -2.0, "rank": 4}},
            {"9": {"logprob": -0.25, "rank": 1}}]}]}
    assert peer.response_logprobs(answer, items) == [[-2.0, -0.25], [-0.5]]


def test_response_logprobs_fails_on_a_row_without_the_actual_token():
    answer = {"choices": [{"index": 0, "prompt_logprobs": [None, {"3": {"logprob": -0.1, "rank": 1}}]}]}
    with pytest.raises(AssertionError, match="row 1 lacks the actual token 8"):
        peer.response_logprobs(answer, [([7, 8], 1)])


def test_each_row_is_read_against_plain_vllm_doing_the_same_passes():
    # 100 response tokens each; tok/s chosen so every ratio is exact.
    def row(path, tok_s, resp_bytes):
        return {"path": path, "response_tok_s": tok_s, "response_bytes": resp_bytes}

    rows = [row(peer.VLLM_TEACHER_K0, 200.0, 400), row(peer.VLLM_BOTH_K0, 100.0, 800),
            row(peer.TRL_TEACHER_K0, 100.0, 800), row(peer.TRL_BOTH_K0, 50.0, 1600),
            row(peer.AMR_TWO_PASS, 125.0, 200), row(peer.AMR_ONE_PASS, 250.0, 200)]
    peer.compare(rows)
    got = {r["path"]: r for r in rows}
    two, one = got[peer.AMR_TWO_PASS], got[peer.AMR_ONE_PASS]
    assert (two["baseline"], two["x_vllm_same_passes"], two["x_trl_same_passes"],
            two["x_without_amr"]) == (peer.VLLM_BOTH_K0, 1.25, 2.5, 1.25)
    # With student_logprobs: one pass, against vllm's teacher pass and against both vllm passes.
    assert (one["baseline"], one["x_vllm_same_passes"], one["x_trl_same_passes"],
            one["x_without_amr"]) == (peer.VLLM_TEACHER_K0, 1.25, 2.5, 2.5)
    assert one["bytes_vs_vllm_same_passes"] == 0.5
    assert got[peer.TRL_BOTH_K0]["x_vllm_same_passes"] == 0.5
    assert "x_without_amr" not in got[peer.TRL_BOTH_K0]


def test_a_peer_that_did_not_start_leaves_its_ratios_empty():
    rows = [{"path": peer.AMR_ONE_PASS, "response_tok_s": 10.0, "response_bytes": 1}]
    peer.compare(rows)
    r = rows[0]
    assert (r["baseline"], r["x_vllm_same_passes"], r["x_without_amr"]) == (None, None, None)


def test_every_other_round_runs_the_paths_in_reverse():
    ran = []
    paths = {name: (lambda name=name: ran.append(name)) for name in "abc"}
    timings = peer._alternate(paths, repeats=3, wire=peer.WireCounter())
    assert ran == list("abc" + "cba" + "abc")
    assert all(len(t["seconds"]) == 3 for t in timings.values())
