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
