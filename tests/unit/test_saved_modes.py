"""Scored batches on disk get the mode `open()` would give them: 0o666 less the umask.

Teammates sharing a run folder must be able to read `runs/amr/`; the atomic write (a temporary file
renamed at the end) must not narrow that to the owner alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from amr_client import ScoreResponse, ScoreResult
from amr_client.saved import replaced_atomically, save_scored
from amr_sd import cli
from amr_sd.scoring.stats import BatchTally

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "groups.jsonl"
UMASKS = [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it after."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def group():
    return {"prompt": {"text": "2+2?"}, "rollouts": [{"token_ids": [5, 6], "reward": 1.0}]}


def response():
    rollout = {"advantages": [0.0, 0.0], "base_advantage": 0.0}
    return ScoreResponse.model_validate({
        "model": "toy", "policy_version": "base", "template_version": "1", "step": 3, "anneal_weight": 1.0,
        "groups": [{"rollouts": [rollout]}],
        "stats": {"groups": 1, "rollouts": 1, "response_tokens": 2, "tokens_scored": 0, "reflected_tokens": 0,
                  "gated_tokens": 0, "gate_rate": 0.0, "reflections_requested": 0, "reflections_generated": 0,
                  "reflections_accepted": 0, "reflections_rejected": 0, "acceptance_rate": 0.0,
                  "cig_mean": 0.0, "cig_std": 0.0, "nonfinite_cig": 0, "mean_abs_base_advantage": 0.0,
                  "mean_abs_advantage": 0.0}})


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_save_scored_writes_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    path = save_scored(tmp_path / "runs" / "amr" / "step-000003.jsonl", [group()], ScoreResult(response()))
    assert mode_of(path) == expected
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_amr_sd_score_out_writes_the_umask_mode(tmp_path, umask, monkeypatch, mask, expected):
    async def scored(args, groups, line_numbers, config, out):
        out.write('{"step": 0}\n')
        return BatchTally(), 0.0

    monkeypatch.setattr(cli, "_score", scored)
    umask(mask)
    out = tmp_path / "scored.jsonl"
    assert cli.main(["score", "--in", str(EXAMPLES), "--out", str(out), "--step", "0"]) == 0
    assert mode_of(out) == expected and out.read_text() == '{"step": 0}\n'
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_replacing_keeps_the_old_file_when_the_block_fails(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "scored.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), replaced_atomically(path) as out:
        out.write("half")
        raise RuntimeError("scoring failed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_replacing_sets_the_umask_mode_on_an_existing_file_too(tmp_path, umask):
    # The new file replaces the old inode, so its mode comes from the umask now, not the old file.
    path = tmp_path / "scored.jsonl"
    path.write_text("old\n")
    path.chmod(0o600)
    umask(0o022)
    with replaced_atomically(path) as out:
        out.write("new\n")
    assert path.read_text() == "new\n" and mode_of(path) == 0o644
