"""The credit-fidelity benchmark's data (a known fault, exact token labels) and its metrics."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from amr_client.schemas import Group
from amr_sd.engine.models import materialize_embedded
from bench.fidelity import chains as fd
from bench.fidelity.metrics import amplification, auroc, calibrated_gate, gate_stats


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


# ---- data --------------------------------------------------------------------------------------

def test_a_correct_chain_computes_its_steps():
    chain = fd.steps(7, [("+", 5), ("*", 3), ("-", 4)])
    assert [(s.left, s.op, s.right, s.result) for s in chain] == \
        [(7, "+", 5, 12), (12, "*", 3, 36), (36, "-", 4, 32)]


def test_a_slip_propagates_to_every_later_number():
    ops = [("+", 5), ("*", 3), ("-", 4)]
    truth, bad = fd.steps(7, ops), fd.steps(7, ops, fault_step=1, offset=2)
    assert [s.result for s in bad] == [14, 42, 38]  # 12+2, then computed right from 14
    solution = fd.write(bad, truth)
    wrong = [solution.text[a:b] for a, b in solution.wrong_spans]
    # step 1's result, step 2's operand and result, step 3's operand and result, the answer
    assert wrong == ["14", "14", "42", "42", "38", "38"]
    assert solution.fault_step == 1 and solution.answer == 38
    assert fd.write(truth, truth).wrong_spans == [] and fd.write(truth, truth).fault_step is None


def test_a_late_slip_leaves_earlier_numbers_right():
    ops = [("+", 5), ("*", 3), ("-", 4)]
    solution = fd.write(fd.steps(7, ops, fault_step=3, offset=-1), fd.steps(7, ops))
    assert [solution.text[a:b] for a, b in solution.wrong_spans] == ["31", "31"]
    assert "Step 1: 7 + 5 = 12." in solution.text


def test_labels_are_exactly_the_tokens_of_the_wrong_numbers(tokenizer):
    rng = random.Random(3)
    for _ in range(30):
        start, ops = fd.make_problem(rng, 4)
        truth = fd.steps(start, ops)
        k = rng.randint(1, 3)
        solution = fd.write(fd.steps(start, ops, k, rng.choice([-3, 2, 7])), truth)
        rollout = fd.tokenize(tokenizer, solution)
        assert rollout.token_ids[-1] == tokenizer.eos_token_id and not rollout.corrupted[-1]
        assert len(rollout.corrupted) == len(rollout.token_ids) == len(rollout.fault)
        # The labelled tokens decode to the wrong numbers and nothing else (spaces aside).
        runs, run = [], []
        for tid, bad in zip(rollout.token_ids, rollout.corrupted):
            if bad:
                run.append(tid)
            elif run:
                runs.append(run)
                run = []
        decoded = [tokenizer.decode(r).strip() for r in runs]
        assert decoded == [solution.text[a:b] for a, b in solution.wrong_spans]
        # The fault is the first wrong number only.
        fault_ids = [t for t, f in zip(rollout.token_ids, rollout.fault) if f]
        assert tokenizer.decode(fault_ids).strip() == solution.text.__getitem__(
            slice(*solution.wrong_spans[0]))
        # And the ids are the response's own tokenisation.
        assert tokenizer.decode(rollout.token_ids[:-1]) == solution.text
        # One token marks where the text first departs from the right solution's: everything
        # before it is the right text, and it lies inside the slip.
        right = fd.write(truth, truth).text
        (at,) = [i for i, d in enumerate(rollout.departs) if d]
        before = tokenizer.decode(rollout.token_ids[:at])
        assert right.startswith(before) and not right.startswith(
            tokenizer.decode(rollout.token_ids[:at + 1]))
        assert rollout.fault[at]
        assert rollout.right_result == truth[k - 1].result


def test_where_a_slip_departs_from_the_right_text():
    ops = [("+", 5), ("*", 3), ("-", 4)]
    truth = fd.steps(7, ops)  # 12, 36, 32
    solution = fd.write(fd.steps(7, ops, fault_step=2, offset=3), truth)  # 39 for 36
    # "3" of 39 is what the right solution writes too; the "9" is where it departs.
    assert solution.text[solution.departs_at - 1:solution.departs_at + 1] == "39"
    assert solution.right_result == 36
    correct = fd.write(truth, truth)
    assert correct.departs_at is None and correct.right_result is None


def test_groups_follow_the_wire_schema_and_mix_verdicts(tokenizer):
    groups, labels = fd.make_groups(tokenizer, n_problems=5, seed=1)
    assert len(groups) == len(labels) == 5
    for group, rollouts in zip(groups, labels):
        Group.model_validate(group)  # the service would accept it
        verdicts = [r["correct"] for r in group["rollouts"]]
        assert verdicts.count(True) == 2 and verdicts.count(False) == 2
        answer = group["reference"]["answer"]
        for wire, label in zip(group["rollouts"], rollouts):
            assert wire["token_ids"] == label.token_ids
            assert any(label.corrupted) != wire["correct"]
            assert answer not in wire["feedback"]
            assert re.search(r"The answer is -?\d+\.$", wire["text"])
    again, _ = fd.make_groups(tokenizer, n_problems=5, seed=1)
    assert again == groups  # seeded: the same benchmark every run


# ---- metrics ------------------------------------------------------------------------------------

def test_auroc_on_hand_made_arrays():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count half
    # positives 0.9 and 0.7 beat both negatives (0.4, 0.6), 0.3 beats neither: 4 of 6 pairs
    assert auroc([0.9, 0.7, 0.3, 0.4, 0.6], [1, 1, 1, 0, 0]) == pytest.approx(4 / 6)
    assert auroc([0.1, 0.2], [1, 1]) is None


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) \
        / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(pairwise)


def test_gate_stats_on_hand_made_arrays():
    gated = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    wrong = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    s = gate_stats(gated, wrong)
    assert s["gate_rate"] == 0.3 and s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["lift"] == pytest.approx((2 / 3) / (1 / 7))
    assert math.isinf(gate_stats([1, 0, 0], [1, 0, 0])["lift"])
    assert gate_stats([0, 0, 0], [1, 0, 0])["lift"] is None
    assert gate_stats([0, 0], [0, 0])["precision"] is None


def test_amplification_leaves_out_rollouts_without_an_advantage():
    s = amplification([1.5, 1.0, 0.0, -0.6], [1.0, 1.0, 0.0, -0.5], [1, 0, 1, 0])
    assert s["wrong"] == pytest.approx(1.5) and s["other"] == pytest.approx((1.0 + 1.2) / 2)


def test_calibrated_gate_opens_on_the_target_share_of_tokens():
    scores = np.arange(100, dtype=float)  # -CIG 0 .. 99
    labels = scores >= 95
    out = calibrated_gate(scores, labels, rate=0.10)
    assert out["tau"] == pytest.approx(89.1)
    assert out["gate_rate"] == pytest.approx(0.10)  # 90 .. 99 pass
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(1.0)
    assert out["lift"] == pytest.approx(1.0 / (5 / 95))
    with pytest.raises(ValueError, match="rate"):
        calibrated_gate(scores, labels, rate=0.0)


def test_placements_put_the_same_block_append_matching_the_service():
    from amr_sd.algo.context import with_block
    from amr_sd.algo.reflection import teacher_block
    from bench.fidelity.placement import teacher_messages

    messages = [{"role": "user", "content": "Compute 2 + 3."}]
    append = teacher_messages(messages, "critique", "Step 1 is off.", "append", "guidance")
    assert append == with_block(messages, teacher_block("critique", "Step 1 is off."))
    prepend = teacher_messages(messages, "critique", "Step 1 is off.", "prepend", "guidance")
    assert prepend[0]["content"].startswith("<critique>Step 1 is off.</critique>\n")
    assert prepend[0]["content"].endswith("\n\nCompute 2 + 3.")
    system = teacher_messages(messages, "hint", "Add.", "system", "exact")
    assert system == [{"role": "system", "content": "<hint>Add.</hint>\nKeep it in mind, and "
                                                    "compute every step exactly."}, *messages]
    assert messages == [{"role": "user", "content": "Compute 2 + 3."}]  # not changed in place


def test_critiques_name_the_faulty_step_its_operation_and_its_right_value():
    from bench.fidelity.synthetic import _quote, _value
    from bench.fidelity.placement import WORDINGS

    ops = [("+", 5), ("*", 3), ("-", 4)]
    solution = fd.write(fd.steps(7, ops, fault_step=2, offset=3), fd.steps(7, ops))  # 39 for 36
    slip = fd.Rollout(token_ids=[], text=solution.text, correct=False, corrupted=[], fault=[],
                      fault_step=2, departs=[], right_result=solution.right_result)
    assert _quote(slip) == ('The first wrong step is "Step 2: 12 * 3 = 39." Its result is wrong, '
                            "and every later step builds on it.")
    assert _value(slip) == WORDINGS["value"](slip) == (
        "The mistake is in step 2: 12 * 3 = 36, and every later step builds on it.")
    assert WORDINGS["operation"](slip) == (
        "Step 2, 12 * 3, has a wrong result, and every later step builds on it.")
    assert WORDINGS["recompute"](slip) == (
        "Recompute step 2 (12 * 3) carefully: the attempt got it wrong.")
    assert WORDINGS["should be"](slip) == (
        "The mistake is in step 2: its result should be 36, and every later step builds on it.")


def test_the_assistant_placement_opens_the_response_turn_with_the_block(tokenizer):
    from amr_sd.algo.context import render_prompt
    from bench.fidelity.placement import teacher_prompt

    messages = [{"role": "user", "content": "Compute 2 + 3."}]
    ids = teacher_prompt(tokenizer, messages, "critique", "Step 1 is off.", "assistant", "guidance")
    student = render_prompt(tokenizer, messages=messages)
    assert ids[:len(student)] == student  # the user turn is untouched
    assert tokenizer.decode(ids[len(student):]) == (
        "<critique>Step 1 is off.</critique>\nKeep this guidance in mind while solving.\n")


def test_detection_scores_the_slip_against_right_tokens_only():
    from bench.fidelity.metrics import detection

    # tokens: right, slip, propagated wrong, right
    scores = np.array([0.0, 3.0, 5.0, 1.0])
    wrong = np.array([False, True, True, False])
    fault = np.array([False, True, False, False])
    out = detection(scores, wrong, fault)
    assert out["auroc"] == pytest.approx(1.0)  # both wrong tokens above both right ones
    # The propagated 5.0 is left out: the slip (3.0) against 0.0 and 1.0 only.
    assert out["auroc_fault"] == pytest.approx(1.0)
    assert detection(-scores, wrong, fault)["auroc_fault"] == pytest.approx(0.0)
    # The first wrong digit (here the slip's) against the right tokens only, the same way.
    departs = fault.copy()
    assert detection(scores, wrong, fault, departs)["auroc_departs"] == pytest.approx(1.0)
    assert "auroc_departs" not in out


# ---- auroc, vectorised ---------------------------------------------------------------------------

def _auroc_loop(scores, labels):
    """auroc as it was: average ranks filled in one Python iteration per run of equal scores."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def test_vectorised_auroc_equals_the_loop_on_random_data_with_ties():
    from bench.fidelity import metrics as fm

    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(2, 400))
        # Few distinct values (many ties), rounded floats, or all distinct.
        scores = [rng.integers(0, 4, n).astype(float), np.round(rng.normal(size=n), 1),
                  rng.normal(size=n)][trial % 3]
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        assert auroc(scores, labels) == _auroc_loop(scores, labels)
        # The numpy fallback (used where scipy is not installed) ranks the same way.
        loop_ranks = np.empty(n)
        order = np.argsort(scores, kind="mergesort")
        starts = np.r_[0, np.flatnonzero(np.diff(scores[order])) + 1]
        for a, b in zip(starts, np.r_[starts[1:], n]):
            loop_ranks[order[a:b]] = (a + b + 1) / 2
        assert np.array_equal(fm._average_ranks(scores), loop_ranks)


# ---- steps ---------------------------------------------------------------------------------------

def test_step_sums_leave_out_tokens_outside_the_steps():
    from bench.fidelity.metrics import step_sums

    values = [5.0, -1.0, -2.0, 0.5, -3.0, 9.0]
    step = [0, 1, 1, 2, 3, 0]  # a prompt-like token, steps 1 .. 3, then the answer line
    # step 1: -1 - 2 = -3; step 2: 0.5; step 3: -3; the two step-0 tokens (5, 9) count nowhere
    assert step_sums(values, step).tolist() == [-3.0, 0.5, -3.0]
    assert step_sums([1.0, 2.0], [0, 3]).tolist() == [0.0, 0.0, 2.0]  # empty steps sum to 0
    assert step_sums([1.0], [0]).tolist() == []


def test_hit_at_1_takes_the_first_most_negative_step():
    from bench.fidelity.metrics import hit_at_1

    sums = np.array([-3.0, 0.5, -3.0])  # steps 1 and 3 tie at -3: argmin takes step 1
    assert hit_at_1(sums, 1) and not hit_at_1(sums, 3) and not hit_at_1(sums, 2)
    assert not hit_at_1(sums, -1) and not hit_at_1(sums, None) and not hit_at_1([], 1)


def test_first_flagged_step():
    from bench.fidelity.metrics import first_flagged_step

    step = np.array([0, 1, 1, 2, 3, 3, 0])
    assert first_flagged_step([1, 0, 0, 0, 1, 0, 1], step) == 3  # flags outside steps ignored
    assert first_flagged_step([0, 0, 1, 1, 1, 0, 0], step) == 1
    assert first_flagged_step([1, 0, 0, 0, 0, 0, 1], step) == -1


def test_processbench_f1_on_hand_made_labels():
    from bench.fidelity.metrics import processbench_f1

    label = [2, 2, 4, -1, -1, -1, -1, 1]
    pred = [2, 3, 4, -1, -1, 2, -1, -1]
    out = processbench_f1(pred, label)
    # erroneous: 2 of 4 found at the exact step (2, 4; not 3 for 2, not -1 for 1) -> 0.5
    # correct: 3 of 4 left unflagged -> 0.75; F1 = 2 * 0.5 * 0.75 / 1.25 = 0.6
    assert out["acc_error"] == pytest.approx(0.5) and out["acc_correct"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.6) and (out["n_error"], out["n_correct"]) == (4, 4)
    assert processbench_f1([-1, -1], [2, 3])["f1"] is None  # no correct samples
    assert processbench_f1([1, 1], [-1, 3])["f1"] == 0.0  # both accuracies 0


def test_bootstrap_ci_resamples_items():
    from bench.fidelity.metrics import bootstrap_ci

    hits = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # mean 0.7
    low, high = bootstrap_ci(len(hits), lambda idx: float(hits[idx].mean()), n_boot=2000)
    assert low < 0.7 < high and 0.0 <= low and high <= 1.0
    assert (low, high) == bootstrap_ci(len(hits), lambda idx: float(hits[idx].mean()),
                                       n_boot=2000)  # seeded
    # A constant statistic has a zero-width interval; a narrower level is inside a wider one.
    assert bootstrap_ci(5, lambda idx: 2.0) == (2.0, 2.0)
    narrow = bootstrap_ci(len(hits), lambda idx: float(hits[idx].mean()), level=0.5)
    assert low <= narrow[0] <= narrow[1] <= high
    # None (a side left empty in a resample) is skipped, not counted.
    seen = []

    def only_with_item_0(idx):
        seen.append(0 in idx)
        return 1.0 if 0 in idx else None

    assert bootstrap_ci(3, only_with_item_0, n_boot=200) == (1.0, 1.0)
    assert not all(seen)  # some resamples did leave item 0 out
    assert bootstrap_ci(3, lambda idx: None) == (None, None)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(3, lambda idx: 1.0, level=1.0)
