"""The scorer end to end on the real vLLM engine and the embedded model."""

import numpy as np
import pytest

from amr_client.schemas import ScoreRequest
from amr_sd.errors import InvalidRequest
from amr_sd.scoring import Scorer

pytestmark = pytest.mark.integration

# Small budgets keep CPU time down; the pipeline is the same.
FAST = {"max_reflection_tokens": 48, "max_retries": 1}


def request(groups, step=0, **kw):
    return ScoreRequest.model_validate({"groups": groups, "step": step, **kw})


def test_scored_batch_is_aligned_signed_and_amplified(engine, run, example_groups):
    req = request(example_groups[:4], config=FAST, **{"return": {"cig": True, "logprobs": True}})
    resp = run(Scorer(engine).score(req))
    assert len(resp.groups) == 4
    accepted = 0
    for group_in, group_out in zip(req.groups, resp.groups):
        for r_in, r_out in zip(group_in.rollouts, group_out.rollouts):
            a = r_out.base_advantage
            adv = np.array(r_out.advantages)
            assert len(adv) == len(r_in.token_ids)
            assert np.all(np.sign(adv) == np.sign(a))            # G1
            assert np.all(np.abs(adv) >= abs(a))                  # G2
            assert np.all(np.abs(adv) <= abs(a) * 1.8 + 1e-12)     # G3, defaults at step 0
            assert r_out.reflection is not None and r_out.reflection.attempts >= 1
            if r_out.reflection.accepted:
                accepted += 1
                assert len(r_out.student_logprobs) == len(r_in.token_ids)
                assert len(r_out.teacher_logprobs) == len(r_in.token_ids)
                assert len(r_out.cig) == len(r_out.gated) == len(r_in.token_ids)
            else:
                assert r_out.advantages == [a] * len(r_in.token_ids)  # G4: rejected -> GRPO
    stats = resp.stats
    assert stats.reflections_requested == 16
    reflected = [(r, ro) for g, go in zip(req.groups, resp.groups)
                 for r, ro in zip(g.rollouts, go.rollouts) if ro.reflection.accepted]
    assert stats.reflected_tokens == sum(len(r.token_ids) for r, _ in reflected)
    assert stats.gated_tokens == sum(sum(ro.gated) for _, ro in reflected)
    for group in resp.groups:
        for r in group.rollouts:
            rec = r.reflection
            # Every rejected attempt leaves its reason; an accepted one ends the retries.
            assert len(rec.reject_reasons) == rec.attempts - (1 if rec.accepted else 0)
            assert rec.attempts <= FAST["max_retries"] + 1
    assert stats.reflections_accepted == accepted
    assert stats.tokens_scored == sum(
        2 * len(r.token_ids) for g, go in zip(req.groups, resp.groups)
        for r, ro in zip(g.rollouts, go.rollouts) if ro.reflection.accepted)
    # A group is scored once its reflections settle, together with any group settling with it:
    # at most one engine call per group, never one per rollout or pass.
    scored_groups = sum(any(ro.reflection.accepted for ro in go.rollouts) for go in resp.groups)
    assert (1 if accepted else 0) <= engine.score_calls <= scored_groups


def test_step_50_is_exact_grpo_with_no_engine_call(engine, run, example_groups):
    resp = run(Scorer(engine).score(request(example_groups, step=50)))
    assert engine.calls == 0
    assert resp.anneal_weight == 0.0
    for group in resp.groups:
        for r in group.rollouts:
            assert r.advantages == [r.base_advantage] * len(r.advantages)


def test_uniform_group_makes_no_engine_call(engine, run, example_groups):
    group = example_groups[0]
    uniform = {**group, "rollouts": [{**r, "reward": 1.0} for r in group["rollouts"]]}
    resp = run(Scorer(engine).score(request([uniform])))
    assert engine.calls == 0
    assert all(a == 0.0 for r in resp.groups[0].rollouts for a in r.advantages)


def test_overrides_and_student_logprobs_skip_generation_and_student_pass(engine, run, example_groups):
    group = example_groups[1]
    overridden = {**group, "rollouts": [{**r, "reflection_override": "Check each step's sign."}
                                        for r in group["rollouts"]]}
    first = run(Scorer(engine).score(request([overridden], **{"return": {"logprobs": True, "cig": True}})))
    assert engine.generate_calls == 0
    assert first.stats.tokens_scored == 2 * sum(len(r["token_ids"]) for r in group["rollouts"])
    assert all(r.reflection.source == "override" and r.reflection.accepted for r in first.groups[0].rollouts)

    # Feed the student logprobs back as the trainer's own: only the teacher pass runs, same result.
    with_student = {**overridden, "rollouts": [
        {**r, "student_logprobs": out.student_logprobs}
        for r, out in zip(overridden["rollouts"], first.groups[0].rollouts)]}
    second = run(Scorer(engine).score(request([with_student], **{"return": {"cig": True}})))
    assert second.stats.tokens_scored == sum(len(r["token_ids"]) for r in group["rollouts"])
    for a, b in zip(first.groups[0].rollouts, second.groups[0].rollouts):
        np.testing.assert_allclose(a.advantages, b.advantages, atol=1e-9)


def test_empty_override_is_rejected_and_falls_back_to_grpo(engine, run, example_groups):
    group = example_groups[2]
    empty = {**group, "rollouts": [{**r, "reflection_override": "  "} for r in group["rollouts"]]}
    resp = run(Scorer(engine).score(request([empty])))
    assert engine.calls == 0
    for r in resp.groups[0].rollouts:
        assert r.reflection.reject_reason == "empty"
        assert r.advantages == [r.base_advantage] * len(r.advantages)


def test_same_request_twice_gives_identical_output(engine, run, example_groups):
    # Greedy reflections and no retries: the whole response is a function of the request.
    req = request(example_groups[3:5], config={**FAST, "max_retries": 0}, **{"return": {"cig": True}})
    scorer = Scorer(engine)
    a, b = run(scorer.score(req)), run(scorer.score(req))
    assert a.groups == b.groups


def test_bad_token_id_is_rejected_before_engine_work(engine, run, example_groups):
    group = example_groups[0]
    bad = {**group, "rollouts": [group["rollouts"][0],
                                 {**group["rollouts"][1], "token_ids": [5, engine.vocab_size]}]}
    with pytest.raises(InvalidRequest) as err:
        run(Scorer(engine).score(request([group, bad])))
    assert err.value.field == "groups[1].rollouts[1].token_ids[1]"
    assert "vocabulary" in err.value.message
    assert engine.calls == 0


def test_prompt_plus_response_over_max_model_len_is_rejected(engine, run, example_groups):
    group = example_groups[0]
    long = {**group, "rollouts": [{**r, "token_ids": [28] * engine.max_model_len}
                                  for r in group["rollouts"]]}
    with pytest.raises(InvalidRequest) as err:
        run(Scorer(engine).score(request([long])))
    assert err.value.field == "groups[0].rollouts[0].token_ids"
    assert "max_model_len" in err.value.message
    assert engine.calls == 0


def override_all(group, text="Check the sign of each term before adding."):
    return {**group, "rollouts": [{**r, "reflection_override": text} for r in group["rollouts"]]}


def test_batch_of_groups_equals_groups_scored_one_at_a_time(engine, run, example_groups):
    groups = [override_all(g) for g in example_groups[:3]]
    scorer = Scorer(engine)
    together = run(scorer.score(request(groups)))
    for group, joint in zip(groups, together.groups):
        alone = run(scorer.score(request([group]))).groups[0]
        for a, b in zip(joint.rollouts, alone.rollouts):
            np.testing.assert_allclose(a.advantages, b.advantages, rtol=0, atol=1e-6)


def test_prompt_token_ids_are_what_the_student_pass_scores(engine, run, example_groups):
    group = override_all(example_groups[0])
    rendered = engine.tokenizer.apply_chat_template(
        group["prompt"]["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
    ret = {"return": {"logprobs": True}}
    scorer = Scorer(engine)
    plain = run(scorer.score(request([group], **ret))).groups[0]
    same = {**group, "prompt": {**group["prompt"], "prompt_token_ids": rendered}}
    explicit = run(scorer.score(request([same], **ret))).groups[0]
    for a, b in zip(plain.rollouts, explicit.rollouts):
        np.testing.assert_allclose(a.student_logprobs, b.student_logprobs, atol=1e-6)
    # A policy that saw another prompt (no system turn) gets its own student logprobs.
    other = engine.tokenizer.encode(
        "<|im_start|>user\n" + group["prompt"]["messages"][0]["content"] + "<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False)
    custom = {**group, "prompt": {**group["prompt"], "prompt_token_ids": other}}
    moved = run(scorer.score(request([custom], **ret))).groups[0]
    assert not np.allclose(moved.rollouts[0].student_logprobs, plain.rollouts[0].student_logprobs)
    assert moved.rollouts[0].teacher_logprobs == plain.rollouts[0].teacher_logprobs


def test_text_prompt_is_scored_with_the_reflection_appended_to_the_text(engine, run, example_groups):
    group = example_groups[0]
    text = {**override_all(group), "prompt": {"text": group["prompt"]["messages"][0]["content"] + "\n"}}
    resp = run(Scorer(engine).score(request([text], **{"return": {"logprobs": True}})))
    for r_in, r_out in zip(group["rollouts"], resp.groups[0].rollouts):
        assert len(r_out.teacher_logprobs) == len(r_in["token_ids"])
        assert r_out.teacher_logprobs != r_out.student_logprobs


def test_an_abandoned_generation_stops_at_once_and_leaves_no_engine_work(vllm_engine, run):
    from amr_sd.engine.base import GenerationParams

    prompt = vllm_engine.tokenizer.encode("Count from one to fifty in words: one, two, three,",
                                          add_special_tokens=False)
    full = run(vllm_engine.generate([prompt], GenerationParams(max_tokens=48)))[0]
    seen = []

    def three_words(text: str) -> bool:
        seen.append(text)
        return len(text.split()) >= 3

    cut = run(vllm_engine.generate([prompt], GenerationParams(max_tokens=48, abandon_when=three_words)))[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 48
    assert cut.finish_reason == "abandoned" and len(cut.token_ids) < 12
    # Stopped at the first text the predicate held for.
    assert seen[-1] == cut.text and len(seen[-1].split()) >= 3
    assert all(len(t.split()) < 3 for t in seen[:-1])
    # Greedy: the abandoned text is where the full one began, and vLLM holds nothing after it.
    assert full.token_ids[:len(cut.token_ids)] == cut.token_ids
    assert vllm_engine.unfinished_requests() == 0


def test_student_trend_correction_is_the_pure_function_of_the_same_passes(engine, run,
                                                                         example_groups):
    # cig_correction changes CIG after both passes, never the passes: the corrected answer's
    # cig is remove_student_trend of the plain answer's (float32 engine: passes repeat exactly).
    from amr_sd.algo.advantage import remove_student_trend

    groups = [{**g, "rollouts": [{**r, "reflection_override": "Check step 2 again."}
                                 for r in g["rollouts"]]} for g in example_groups[:2]]
    returns = {"return": {"cig": True, "logprobs": True}}
    plain = run(Scorer(engine).score(request(groups, **returns)))
    fixed = run(Scorer(engine).score(request(groups, config={"cig_correction": "student_trend"},
                                             **returns)))
    special = set(engine.tokenizer.all_special_ids)
    changed = 0
    for g_in, g_plain, g_fixed in zip(groups, plain.groups, fixed.groups):
        for r_in, a, b in zip(g_in["rollouts"], g_plain.rollouts, g_fixed.rollouts):
            if a.cig is None:
                continue
            assert b.student_logprobs == a.student_logprobs
            assert b.teacher_logprobs == a.teacher_logprobs
            gateable = np.array([t not in special for t in r_in["token_ids"]])
            expected = remove_student_trend(a.cig, a.student_logprobs, gateable)
            np.testing.assert_allclose(b.cig, expected, atol=1e-6)
            assert np.all(np.sign(b.advantages) == np.sign(a.base_advantage))  # G1 holds
            changed += not np.allclose(b.cig, a.cig)
    assert changed  # the option did something
