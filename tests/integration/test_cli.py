"""`amr-sd score` as a user runs it: a real process, a real engine, files in and out."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "groups.jsonl"
FAST = json.dumps({"max_reflection_tokens": 48, "max_retries": 1})


def amr_sd(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "amr_sd.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_writes_one_aligned_scored_group_per_line(tmp_path):
    src = tmp_path / "groups.jsonl"
    src.write_text("".join(EXAMPLES.read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", src, "--out", out, "--step", 0, "--config", FAST,
                  "--return-cig", "--return-logprobs", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups, scored = read_jsonl(src), read_jsonl(out)
    assert len(scored) == len(groups)
    for group, line in zip(groups, scored):
        assert line["anneal_weight"] == 1.0 and line["step"] == 0
        for r_in, r_out in zip(group["rollouts"], line["rollouts"]):
            base = r_out["base_advantage"]
            assert len(r_out["advantages"]) == len(r_in["token_ids"])
            assert all(math.copysign(1, a) == math.copysign(1, base) for a in r_out["advantages"])
            if r_out["reflection"]["accepted"]:
                assert len(r_out["cig"]) == len(r_out["teacher_logprobs"]) == len(r_in["token_ids"])
    # Self-contained: the group as sent and each token's text, so the viewer needs nothing else.
    for group, line in zip(groups, scored):
        assert [r["token_ids"] for r in line["input"]["rollouts"]] == [r["token_ids"] for r in group["rollouts"]]
        assert line["input"]["prompt"] == group["prompt"]
        assert [len(p) for p in line["pieces"]] == [len(r["token_ids"]) for r in group["rollouts"]]
        assert all(isinstance(piece, str) for pieces in line["pieces"] for piece in pieces)
    page = tmp_path / "view.html"
    viewed = amr_sd("view", out, "--out", page)
    assert viewed.returncode == 0, viewed.stderr[-2000:]
    assert page.stat().st_size > 0
    # The summary is the last line: vLLM's processes exit before it, none killed, nothing leaked.
    assert "force killing" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr[-2000:]
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    assert summary["groups"] == 3 and 0.0 <= summary["acceptance_rate"] <= 1.0


def test_score_at_step_50_is_exactly_grpo(tmp_path):
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", EXAMPLES, "--out", out, "--step", 50, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = read_jsonl(out)
    assert len(scored) == len(EXAMPLES.read_text().splitlines())
    for line in scored:
        assert line["anneal_weight"] == 0.0
        for r in line["rollouts"]:
            assert r["advantages"] == [r["base_advantage"]] * len(r["advantages"])
            assert "reflection" not in r  # nothing was reflected


def test_bad_reward_names_line_and_field_and_writes_nothing(tmp_path):
    lines = EXAMPLES.read_text().splitlines()[:3]
    bad = json.loads(lines[1])
    bad["rollouts"][2]["reward"] = None
    src = tmp_path / "groups.jsonl"
    src.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", src, "--out", out, "--step", 0)
    assert proc.returncode == 2
    assert f"{src}:2: rollouts[2].reward:" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_unknown_config_field_is_rejected(tmp_path):
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", EXAMPLES, "--out", out, "--step", 0, "--config", '{"tau": 1}')
    assert proc.returncode == 2
    assert "--config: config.tau: Extra inputs are not permitted" in proc.stderr
    assert not out.exists()


def test_negative_step_is_rejected(tmp_path):
    proc = amr_sd("score", "--in", EXAMPLES, "--out", tmp_path / "o.jsonl", "--step", -1)
    assert proc.returncode == 2
    assert "step:" in proc.stderr and "greater than or equal to 0" in proc.stderr


def test_token_outside_vocabulary_names_line_and_writes_nothing(tmp_path):
    lines = EXAMPLES.read_text().splitlines()[:4]
    bad = json.loads(lines[2])
    bad["rollouts"][0]["token_ids"][1] = 10**6
    src = tmp_path / "groups.jsonl"
    # A blank line is skipped, yet the error still names the file's own line number (4).
    src.write_text("\n".join(lines[:2] + ["", json.dumps(bad), lines[3]]) + "\n")
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", src, "--out", out, "--step", 0, "--batch-groups", 2)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{src}:4: rollouts[0].token_ids[1]: token id 1000000 is outside the model's vocabulary" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_engine_flags_reach_the_engine(tmp_path):
    # --max-model-len 64: the first example group's prompt is 46 tokens, its first rollout 64.
    out = tmp_path / "scored.jsonl"
    proc = amr_sd("score", "--in", EXAMPLES, "--out", out, "--step", 0, "--max-model-len", 64)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"{EXAMPLES}:1: rollouts[0].token_ids: prompt (46 tokens) + response (64 tokens) "
            "= 110 tokens exceeds max_model_len 64") in proc.stderr
    assert not out.exists()
