"""The credit viewer's data and page, on hand-made scored groups (no engine, no browser)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from amr_client import ScoreResponse, ScoreResult
from amr_client.saved import StepSaver, save_scored, step_path, token_pieces
from amr_sd.cli import main as cli_main
from amr_sd.viewer import ViewError, build, read_batch, render

# Token ids decode to these pieces; 7 is a response that tries to run a script.
VOCAB = {1: "The", 2: " answer", 3: " is", 4: " 4", 5: ".", 6: " Wait", 7: "<script>alert(1)</script>"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def scored_line(step=3):
    """One group: a hinted success (2 tokens gated), a critique rejected twice, a zero-A rollout."""
    return {
        "model": "toy", "policy_version": "base", "step": step, "anneal_weight": 0.5,
        "rollouts": [
            {"advantages": [1.0, 1.5, 1.0, 1.2], "base_advantage": 1.0,
             "cig": [0.0, 0.9, 0.01, 0.4], "gated": [False, True, False, True],
             "student_logprobs": [-1.0, -2.0, -0.5, -3.0], "teacher_logprobs": [-1.0, -1.1, -0.49, -2.6],
             "reflection": {"kind": "hint", "text": "Check the sum <b>twice</b>.", "accepted": True,
                            "reject_reasons": [], "attempts": 1, "source": "generated"}},
            {"advantages": [-1.0, -1.0, -1.0], "base_advantage": -1.0,
             "cig": [0.0, 0.0, 0.0], "gated": [False, False, False],
             "reflection": {"kind": "critique", "text": "The answer is 4", "accepted": False,
                            "reject_reason": "answer_leak", "reject_reasons": ["stray_tag", "answer_leak"],
                            "attempts": 2, "source": "generated"}},
            {"advantages": [0.0, 0.0], "base_advantage": 0.0, "cig": [0.0, 0.0], "gated": [False, False]},
        ],
    }


def input_group():
    return {"prompt": {"messages": [{"role": "user", "content": "2 + 2 = ?"}]},
            "rollouts": [{"token_ids": [1, 2, 6, 4], "reward": 1.0},
                         {"token_ids": [1, 7, 5], "reward": 0.0, "feedback": "wrong: 5"},
                         {"token_ids": [3, 4], "reward": 0.5}]}


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def unpack(b64, dtype):
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def test_summary_counts_come_from_the_tokens(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line()])
    data = build([read_batch(path, [input_group()])], decode)
    (batch,) = data["batches"]
    s = batch["summary"]
    assert (s["groups"], s["rollouts"], s["tokens"]) == (1, 3, 9)
    assert s["gated_tokens"] == 2 and s["reflected_tokens"] == 4  # only the accepted hint's tokens
    assert s["gate_rate_positive"] == 0.5 and s["gate_rate_negative"] == 0.0
    assert (s["reflections_requested"], s["reflections_accepted"]) == (2, 1)
    assert s["reject_reasons"] == {"answer_leak": 1}
    assert s["attempt_reject_reasons"] == {"stray_tag": 1, "answer_leak": 1}
    assert s["mean_abs_advantage"] == pytest.approx((4.7 + 3.0) / 9)
    assert s["mean_abs_base_advantage"] == pytest.approx(7 / 9)
    assert sum(s["branches"]["positive"]["hist"]) == 4 and sum(s["branches"]["negative"]["hist"]) == 0
    top = {data["pieces"][t["piece"]]: (t["gated"], t["seen"]) for t in s["top_gated"]}
    assert top == {" answer": (1, 1), " 4": (1, 1)}
    hint, critique, zero = batch["rows"]
    assert (hint["gated"], hint["max_amp"], hint["off"], hint["n"]) == (2, 1.5, 0, 4)
    assert (critique["reason"], critique["reasons"], critique["off"]) == ("answer_leak", ["stray_tag", "answer_leak"], 4)
    assert zero["kind"] is None and zero["reward"] == 0.5


def test_packed_arrays_line_up_with_each_rollouts_tokens(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line()])
    (batch,) = build([read_batch(path, [input_group()])], decode)["batches"]
    pieces = build([read_batch(path, [input_group()])], decode)["pieces"]
    a = batch["arrays"]
    ids, adv, gated = unpack(a["ids"], np.int32), unpack(a["adv"], np.float32), unpack(a["gated"], np.uint8)
    slp = unpack(a["slp"], np.float32)
    assert [pieces[i] for i in ids] == ["The", " answer", " Wait", " 4", "The", VOCAB[7], ".", " is", " 4"]
    assert adv.tolist() == pytest.approx([1.0, 1.5, 1.0, 1.2, -1.0, -1.0, -1.0, 0.0, 0.0])
    assert gated.tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0]
    assert slp[:4].tolist() == [-1.0, -2.0, -0.5, -3.0] and np.isnan(slp[4:]).all()


def test_model_text_is_escaped_in_the_page(tmp_path):
    line = scored_line()
    line["rollouts"][0]["reflection"]["text"] = "hint </script><script>alert('x')</script>"
    path = write_jsonl(tmp_path / "s.jsonl", [line])
    page = render(build([read_batch(path, [input_group()])], decode), "t <script>")
    # Only the page's own two script blocks; the model's text is inside the JSON, escaped.
    assert len(re.findall(r"<script\b", page)) == 2 and page.count("</script>") == 2
    assert "alert(1)" in page and "alert('x')" in page
    assert "<title>t &lt;script&gt;</title>" in page
    blob = re.search(r'<script type="application/json" id="amr-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert VOCAB[7] in data["pieces"]
    assert data["batches"][0]["rows"][0]["text"] == "hint </script><script>alert('x')</script>"


def toy_response(step=12):
    return ScoreResponse.model_validate({
        "model": "toy", "policy_version": "base", "template_version": "1", "step": step, "anneal_weight": 0.5,
        "groups": [{"rollouts": scored_line(step)["rollouts"]}],
        "stats": {"groups": 1, "rollouts": 3, "response_tokens": 9, "tokens_scored": 18, "reflected_tokens": 4,
                  "gated_tokens": 2, "gate_rate": 0.5, "reflections_requested": 2, "reflections_generated": 3,
                  "reflections_accepted": 1, "reflections_rejected": 1, "acceptance_rate": 0.5,
                  "cig_mean": 0.1, "cig_std": 0.1, "nonfinite_cig": 0, "mean_abs_base_advantage": 0.8,
                  "mean_abs_advantage": 0.9}})


def test_saved_batches_carry_input_and_pieces(tmp_path):
    response = toy_response(12)
    path = save_scored(step_path(tmp_path / "run", 12), [input_group()], ScoreResult(response), decode=decode)
    assert path.name == "step-000012.jsonl"
    saved = json.loads(path.read_text())
    assert saved["input"]["rollouts"][1]["feedback"] == "wrong: 5" and saved["step"] == 12
    assert saved["pieces"][1] == ["The", VOCAB[7], "."]
    # No model, no --in: the file is enough.
    data = build([read_batch(path)])
    assert data["batches"][0]["summary"]["gated_tokens"] == 2
    with pytest.raises(ValueError, match="2 groups given"):
        save_scored(tmp_path / "x.jsonl", [input_group(), input_group()], ScoreResult(response))
    assert not (tmp_path / "x.jsonl").exists()


def test_token_pieces_decodes_each_distinct_id_once():
    calls = []
    assert token_pieces(lambda ids: calls.append(ids) or VOCAB[ids[0]], [1, 2, 1, 1]) == ["The", " answer", "The", "The"]
    assert calls == [[1], [2]]


@pytest.mark.parametrize("mutate, message", [
    (lambda s, i: s["rollouts"][0].pop("cig"), r"s.jsonl:1: rollouts\[0\].cig: missing; score with --return-cig"),
    (lambda s, i: s["rollouts"][1]["advantages"].append(0.0), r"rollouts\[1\].advantages: 4 values for 3 response tokens"),
    (lambda s, i: i["rollouts"].pop(), r"rollouts: 3 scored, but the input group has 2"),
    (lambda s, i: s.pop("rollouts"), r"rollouts: missing or empty"),
])
def test_bad_files_name_the_line_and_field(tmp_path, mutate, message):
    line, group = scored_line(), input_group()
    mutate(line, group)
    path = write_jsonl(tmp_path / "s.jsonl", [line])
    with pytest.raises(ViewError, match=message):
        read_batch(path, [group])


def test_missing_input_and_mismatched_input_file_are_explained(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line(), scored_line()])
    with pytest.raises(ViewError, match=r"s.jsonl:1: input: .* pass --in GROUPS.jsonl"):
        read_batch(path)
    with pytest.raises(ViewError, match=r"2 scored groups, but --in has 1"):
        read_batch(path, [input_group()])
    (tmp_path / "bad.jsonl").write_text('{"rollouts": [\n')
    with pytest.raises(ViewError, match=r"bad.jsonl:1: not JSON"):
        read_batch(tmp_path / "bad.jsonl")
    other = scored_line(step=4)
    write_jsonl(path, [scored_line(), other])
    with pytest.raises(ViewError, match=r"s.jsonl:2: step: 4 where line 1 has 3; one file is one batch"):
        read_batch(path, [input_group(), input_group()])


def test_ids_without_pieces_need_a_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line()])
    with pytest.raises(ViewError, match="no tokenizer was given"):
        build([read_batch(path, [input_group()])])


def test_several_files_become_a_trend_in_step_order(tmp_path, capsys):
    for step in (20, 5, 10):
        line = {**scored_line(step), "input": input_group(),
                "pieces": [[VOCAB[t] for t in r["token_ids"]] for r in input_group()["rollouts"]]}
        if step == 10:  # the hint rejected at this step: its gate rate falls to 0
            line["rollouts"][0]["reflection"]["accepted"] = False
            line["rollouts"][0]["reflection"]["reject_reason"] = "too_long"
        write_jsonl(tmp_path / f"step-{step}.jsonl", [line])
    out = tmp_path / "view.html"
    files = [str(tmp_path / f"step-{s}.jsonl") for s in (20, 5, 10)]
    assert cli_main(["view", *files, "--out", str(out)]) == 0
    assert "3 batch(es), 9 rollouts, 27 tokens" in capsys.readouterr().err
    data = json.loads(re.search(r'id="amr-data">(.*?)</script>', out.read_text(), re.S).group(1))
    assert [t["step"] for t in data["trend"]] == [5, 10, 20]
    assert [t["acceptance_rate"] for t in data["trend"]] == [0.5, 0.0, 0.5]
    assert [t["gate_rate_positive"] for t in data["trend"]] == [0.5, 0.0, 0.5]


def test_cli_reports_bad_input_with_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line()])
    assert cli_main(["view", str(path)]) == 2
    assert "amr-sd view: " in capsys.readouterr().err
    assert not (tmp_path / "s.html").exists()


def test_step_saver_picks_every_nth_step_and_survives_a_failed_write(tmp_path, caplog):
    saver = StepSaver(tmp_path, 3)
    assert [s for s in range(8) if saver.wants(s)] == [0, 3, 6]
    assert saver.returns(3) == {"cig": True, "logprobs": True, "reflections": True} and saver.returns(4) is None
    assert not StepSaver(None, 0).wants(0)
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be: the write fails with OSError
    with caplog.at_level("WARNING"):
        assert StepSaver(blocked, 1).save(0, [input_group()], ScoreResult(toy_response()), decode) is None
    assert "could not save step 0" in caplog.text
    with pytest.raises(ValueError, match="amr_save_steps is set but amr_save_dir is not"):
        StepSaver(None, 2)


def test_an_unscored_groups_file_is_named_as_such(tmp_path, capsys):
    path = write_jsonl(tmp_path / "groups.jsonl", [input_group(), input_group()])
    with pytest.raises(ViewError, match=r"groups.jsonl:1: this file is not scored: score it first with "
                                        r"`amr-sd score --in .*groups.jsonl --out SCORED.jsonl` or pass it as --in"):
        read_batch(path)
    assert cli_main(["view", str(path)]) == 2
    assert "this file is not scored" in capsys.readouterr().err


def gate_line(anneal_weight=0.5):
    """The hint gated at Î = 2 and 3 with Â/A = 1.1 and 1.2: λ_eff = 0.1 and τ+ = 1 solve both
    (0.1·(2 - 1) = 0.1, 0.1·(3 - 1) = 0.2); the critique was rejected, so nothing of it is gated."""
    line = scored_line()
    line["anneal_weight"] = anneal_weight
    line["rollouts"][0].update(advantages=[1.0, 1.1, 1.0, 1.2], cig=[0.0, 2.0, 0.5, 3.0])
    return line


def settings_of(tmp_path, line):
    path = write_jsonl(tmp_path / "s.jsonl", [line])
    return build([read_batch(path, [input_group()])], decode)["batches"][0]["settings"]


def test_tau_and_lambda_are_fitted_to_the_gated_tokens_and_the_rest_are_defaults(tmp_path):
    s = settings_of(tmp_path, gate_line())
    assert (s["tau_pos"]["source"], s["lambda_eff"]["source"]) == ("fitted", "fitted")
    assert s["tau_pos"]["value"] == pytest.approx(1.0) and s["lambda_eff"]["value"] == pytest.approx(0.1)
    assert "2 gated hint tokens" in s["tau_pos"]["note"]
    # Nothing gated on the critique branch: ScoringConfig's τ- = 1 and γ = 0.1 times w = 0.5.
    assert (s["tau_neg"]["value"], s["tau_neg"]["source"]) == (1.0, "default")
    assert (s["gamma_eff"]["value"], s["gamma_eff"]["source"]) == (pytest.approx(0.05), "default")
    assert (s["kappa"]["value"], s["kappa"]["source"]) == (5.0, "default")
    assert (s["anneal_weight"]["value"], s["anneal_weight"]["source"]) == (0.5, "file")


def test_gated_tokens_off_one_line_are_not_fitted(tmp_path):
    line = gate_line()
    # A third gated token, Î = 1.5 with Â/A = 1.3 where λ_eff = 0.1, τ+ = 1 give 1.05: no line
    # holds all three, so the file is not the gate described and nothing is fitted.
    line["rollouts"][0].update(advantages=[1.0, 1.1, 1.3, 1.2], cig=[0.0, 2.0, 1.5, 3.0],
                               gated=[False, True, True, True])
    s = settings_of(tmp_path, line)
    assert (s["tau_pos"]["value"], s["tau_pos"]["source"]) == (1.0, "default")
    assert s["lambda_eff"]["value"] == pytest.approx(0.2 * 0.5)


def test_config_and_stats_in_the_file_win_over_fit_and_defaults(tmp_path):
    line = gate_line()
    line["config"] = {"tau_neg": 2.0, "gamma_neg": 0.4, "kappa": 3}
    line["stats"] = {"positive": {"tau": 0.75}}
    s = settings_of(tmp_path, line)
    assert (s["tau_pos"]["value"], s["tau_pos"]["source"]) == (0.75, "file")
    assert (s["tau_neg"]["value"], s["tau_neg"]["source"]) == (2.0, "file")
    assert (s["gamma_eff"]["value"], s["gamma_eff"]["source"]) == (pytest.approx(0.2), "file")
    assert (s["kappa"]["value"], s["kappa"]["source"]) == (3.0, "file")
    line["config"] = {"kappa": -1}
    with pytest.raises(ViewError, match=r"s.jsonl:1: config.kappa: "):
        settings_of(tmp_path, line)


def test_cig_beyond_the_default_kappa_leaves_kappa_unknown(tmp_path):
    line = scored_line()
    line["rollouts"][0]["cig"][0] = 7.5
    s = settings_of(tmp_path, line)
    assert s["kappa"]["value"] is None and "at least 7.5" in s["kappa"]["note"]


def test_the_histogram_axis_shows_both_margins_but_stops_at_kappa(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [gate_line()])
    s = build([read_batch(path, [input_group()])], decode)["batches"][0]["summary"]
    # |Î| of the hint's four tokens: 0, 2, 0.5, 3; its 99.5th percentile is just under 3 and τ = 1.
    assert s["hist_percentile"] == pytest.approx(np.quantile([0, 2, 0.5, 3], 0.995))
    assert s["hist_span"] == s["hist_percentile"]
    line = scored_line()  # |Î| up to 0.9: the axis widens to 1.15 τ- so that -τ- shows
    write_jsonl(path, [line])
    s = build([read_batch(path, [input_group()])], decode)["batches"][0]["summary"]
    assert s["hist_percentile"] < 0.9 and s["hist_span"] == pytest.approx(1.15)


def test_each_group_is_summed_for_the_group_view(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scored_line(), scored_line()])
    (batch,) = build([read_batch(path, [input_group(), input_group()])], decode)["batches"]
    first, second = batch["groups"]
    assert (first["row"], first["size"], second["row"]) == (0, 3, 3)
    assert first["mean_reward"] == pytest.approx(0.5)  # rewards 1, 0, 0.5
    assert (first["reflections_requested"], first["reflections_accepted"]) == (2, 1)
    # Only the accepted hint's 4 tokens are reflected; 2 of them gated.
    assert (first["reflected_tokens"], first["gated_tokens"], first["gate_rate"]) == (4, 2, 0.5)
    assert (first["gate_rate_positive"], first["gate_rate_negative"]) == (0.5, 0.0)


def test_one_prompt_is_one_entry_across_batches(tmp_path):
    other = input_group()
    other["prompt"] = {"text": "3 + 3 = ?"}
    a = write_jsonl(tmp_path / "a.jsonl", [scored_line(1), scored_line(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [scored_line(2)])
    data = build([read_batch(a, [other, input_group()]), read_batch(b, [input_group()])], decode)
    assert data["prompts"] == ["3 + 3 = ?", "[user] 2 + 2 = ?"]
    assert [g["prompt"] for b in data["batches"] for g in b["groups"]] == [0, 1, 1]


def test_each_attempts_text_comes_from_rejected_texts_then_the_accepted_text(tmp_path):
    line = scored_line()
    record = line["rollouts"][1]["reflection"]
    record.update(rejected_texts=["<critique>x", "The answer is 4"], reject_reasons=["unparsed", "answer_phrase"])
    path = write_jsonl(tmp_path / "s.jsonl", [line])
    rows = build([read_batch(path, [input_group()])], decode)["batches"][0]["rows"]
    want = ["<critique>x", "The answer is 4"] + ([record["text"]] if record["accepted"] else [])
    assert rows[1]["attempt_texts"] == want
    assert "attempt_texts" not in rows[0]  # a record without rejected attempts: its `text` alone
