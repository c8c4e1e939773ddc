"""Specification of `ScoreResult`'s shapes for a trainer, and of reading back a saved batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amr_client import ScoreResponse, ScoreResult
from amr_client.saved import load_scored, save_scored

STATS = {
    "groups": 2, "rollouts": 3, "response_tokens": 6, "tokens_scored": 12, "reflected_tokens": 4,
    "gated_tokens": 1, "gate_rate": 0.25, "reflections_requested": 2, "reflections_generated": 2,
    "reflections_accepted": 2, "reflections_rejected": 0, "acceptance_rate": 1.0, "cig_mean": 0.1,
    "cig_std": 0.2, "nonfinite_cig": 0, "mean_abs_base_advantage": 0.7, "mean_abs_advantage": 0.8,
}
# Group 0 holds rollouts of 3 and 1 tokens, group 1 one rollout of 2 tokens.
ROLLOUTS = [
    [{"advantages": [0.5, 0.25, 1.0], "base_advantage": 0.7, "cig": [0.0, 0.1, 0.0],
      "gated": [False, True, False]},
     {"advantages": [-0.75], "base_advantage": -0.7, "cig": [0.0], "gated": [False]}],
    [{"advantages": [0.0, 0.0], "base_advantage": 0.0, "cig": [0.0, 0.0], "gated": [False, False]}],
]
INPUTS = [
    {"prompt": {"text": "2 + 3 ="}, "rollouts": [{"token_ids": [28, 29, 30], "reward": 1.0},
                                               {"token_ids": [31], "reward": 0.0}]},
    {"prompt": {"text": "1 + 1 ="}, "rollouts": [{"token_ids": [40, 41], "reward": 1.0}]},
]


def result(with_cig: bool = True) -> ScoreResult:
    groups = [{"rollouts": [r if with_cig else {k: r[k] for k in ("advantages", "base_advantage")}
                            for r in g]} for g in ROLLOUTS]
    return ScoreResult(ScoreResponse.model_validate({
        "model": "m", "policy_version": "p1", "template_version": "t1", "step": 7,
        "anneal_weight": 0.86, "groups": groups, "stats": STATS}))


def test_len_and_iteration_walk_the_groups_in_request_order():
    scored = result()
    assert len(scored) == 2
    assert [len(group.rollouts) for group in scored] == [2, 1]


def test_cig_and_gated_are_ragged_like_advantages():
    scored = result()
    assert scored.cig() == [[0.0, 0.1, 0.0], [0.0], [0.0, 0.0]]
    assert scored.gated() == [[False, True, False], [False], [False, False]]


def test_cig_not_asked_for_says_how_to_ask():
    with pytest.raises(ValueError, match='returns=."cig": True'):
        result(with_cig=False).cig()


def test_padded_numpy_pads_to_the_longest_rollout_by_default():
    values, mask = result().advantages_padded_numpy()
    assert values.dtype == np.float32 and values.shape == mask.shape == (3, 3)
    np.testing.assert_array_equal(values[1], [-0.75, 0.0, 0.0])
    np.testing.assert_array_equal(mask.sum(axis=1), [3, 1, 2])


def test_padded_to_a_given_width_on_a_given_device():
    values, mask = result().advantages_padded(width=5, device="cpu", pad_value=-1.0)
    assert values.shape == mask.shape == (3, 5) and values.device.type == "cpu"
    assert values.dtype == torch.float32 and mask.dtype == torch.bool
    assert values[2].tolist() == [0.0, 0.0, -1.0, -1.0, -1.0]


def test_a_width_shorter_than_a_rollout_is_refused():
    with pytest.raises(ValueError, match="longest rollout"):
        result().advantages_padded_numpy(width=2)


def test_load_scored_reads_back_what_save_scored_wrote(tmp_path):
    path = save_scored(tmp_path / "step.jsonl", INPUTS, result(), decode=lambda ids: f"<{ids[0]}>")
    saved = load_scored(path)
    assert [s.input.model_dump(exclude_none=True) for s in saved] == INPUTS
    assert [s.scored for s in saved] == result().groups
    assert {(s.model, s.policy_version, s.step, s.anneal_weight) for s in saved} == {("m", "p1", 7, 0.86)}
    assert saved[1].pieces == [["<40>", "<41>"]]


def test_load_scored_names_the_line_that_is_not_a_saved_group(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(ValueError, match="other.jsonl:1"):
        load_scored(path)
