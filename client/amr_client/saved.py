"""Scored batches on disk, for `amr-sd view`: one JSON line per group, the scored group beside the
group that was sent.

A line is what `amr-sd score` writes (`model`, `policy_version`, `step`, `anneal_weight`, its
request's `stats` and `config`, the scored `rollouts`) plus `input`, the request's group as sent, and, when a tokenizer was at hand,
`pieces`: each rollout's tokens decoded one by one. With both, the file needs nothing else to be
viewed: no model, no input file. The trainer adapters write one file per saved step
(`step-000123.jsonl`); `save_scored` is the function they share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from amr_client.results import ScoreResult
from amr_client.schemas import BatchStats, Group, ScoredGroup

__all__ = ["VIEW_RETURNS", "SavedGroup", "StepSaver", "line_head", "load_scored", "replaced_atomically",
           "save_scored", "scored_line", "step_path", "token_pieces"]

logger = logging.getLogger(__name__)

# What a request needs returned for the viewer to show a batch in full.
VIEW_RETURNS = {"cig": True, "logprobs": True, "reflections": True}


def step_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}.jsonl"


def token_pieces(decode: Callable[[list[int]], str], token_ids: Sequence[int],
                 memo: dict[int, str] | None = None) -> list[str]:
    """Each token decoded on its own (a tokenizer's `decode([id])`), each distinct id once."""
    memo = {} if memo is None else memo
    out = []
    for t in token_ids:
        piece = memo.get(t)
        if piece is None:
            piece = memo[t] = decode([t])
        out.append(piece)
    return out


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file that becomes `path` when the block ends without error, and vanishes otherwise.

    It is created with mode 0o666 as `open()` creates one, so the umask (and the folder's default
    ACL) decide who may read it: `tempfile.mkstemp`'s 0o600 would hide a run's batches from the
    teammates who share its folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # O_EXCL: never an existing file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_scored(path: str | os.PathLike, groups: Iterable[Group | Mapping[str, Any]],
                result: ScoreResult, *, decode: Callable[[list[int]], str] | None = None,
                config: Mapping[str, Any] | None = None) -> Path:
    """Write `groups` with their scores to `path`, whole or not at all (a rename at the end).
    `config`, the request's ScoringConfig overrides, lets the viewer show the settings used."""
    sent = [g.model_dump(mode="json", exclude_none=True) if isinstance(g, Group)
            else Group.model_validate(g).model_dump(mode="json", exclude_none=True) for g in groups]
    if len(sent) != len(result.groups):
        raise ValueError(f"{len(sent)} groups given for a result of {len(result.groups)}")
    head = line_head(result.model, result.policy_version, result.response.step, result.anneal_weight,
                     stats=result.stats, config=config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    memo: dict[int, str] = {}
    with replaced_atomically(path) as out:
        for group, scored in zip(sent, result.groups, strict=True):
            out.write(json.dumps(scored_line(head, scored, group, decode, memo)) + "\n")
    return path


def line_head(model: str, policy_version: str, step: int, anneal_weight: float, *,
              stats: BatchStats | None = None, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every line of a scored file repeats: the answer's context, its request's `stats`
    (the margins τ the gate used among them) and `config` (the request's overrides), so the
    viewer can show the settings a batch was scored with."""
    head = {"model": model, "policy_version": policy_version, "step": step, "anneal_weight": anneal_weight}
    if stats is not None:
        head["stats"] = stats.model_dump(mode="json")
    if config:
        head["config"] = dict(config)
    return head


def scored_line(head: Mapping[str, Any], scored: ScoredGroup, group: Mapping[str, Any],
                decode: Callable[[list[int]], str] | None = None,
                memo: dict[int, str] | None = None) -> dict[str, Any]:
    """One self-contained line: the head, the scored group, `input` (the group as sent, JSON) and,
    given `decode`, `pieces` (each rollout's tokens decoded one by one; `memo` shares the work
    across lines). `amr-sd score --out` and `save_scored` both write these."""
    line = {**head, **scored.model_dump(mode="json", exclude_none=True), "input": dict(group)}
    if decode is not None:
        line["pieces"] = [token_pieces(decode, r["token_ids"], memo) for r in group["rollouts"]]
    return line


@dataclass(frozen=True)
class SavedGroup:
    """One line of a file `save_scored` wrote: the group as sent, its scores and their context."""

    input: Group
    scored: ScoredGroup
    model: str
    policy_version: str
    step: int
    anneal_weight: float
    pieces: list[list[str]] | None = None  # each rollout's tokens decoded one by one, if saved


def load_scored(path: str | os.PathLike) -> list[SavedGroup]:
    """The groups `save_scored` wrote to `path`, in the order they were sent.

    Each line is checked against the wire models, so a file that is not one of ours raises
    ValueError naming its line.
    """
    saved = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                saved.append(SavedGroup(
                    input=Group.model_validate(item["input"]),
                    scored=ScoredGroup.model_validate({"rollouts": item["rollouts"]}),
                    model=item["model"], policy_version=item["policy_version"],
                    step=item["step"], anneal_weight=item["anneal_weight"],
                    pieces=item.get("pieces")))
            except (ValueError, KeyError, TypeError) as exc:  # pydantic's errors are ValueErrors
                raise ValueError(f"{path}:{number}: not a line save_scored writes ({exc!r})") from exc
    return saved


class StepSaver:
    """The adapters' `amr_save_dir` / `amr_save_steps`: every N-th step's batch, from step 0 on."""

    def __init__(self, folder: str | os.PathLike | None, every: int):
        if every < 0:
            raise ValueError(f"amr_save_steps must be >= 0 (0 saves nothing), got {every}")
        if every and folder is None:
            raise ValueError("amr_save_steps is set but amr_save_dir is not: name the folder to save to")
        self.folder = Path(folder) if folder is not None else None
        self.every = every

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def returns(self, step: int) -> dict[str, bool] | None:
        """What to ask the service for at `step`: the viewer's arrays on a saved step only."""
        return VIEW_RETURNS if self.wants(step) else None

    def save(self, step: int, groups: Iterable[Group | Mapping[str, Any]], result: ScoreResult,
             decode: Callable[[list[int]], str] | None) -> Path | None:
        try:
            path = save_scored(step_path(self.folder, step), groups, result, decode=decode)
        except OSError as exc:  # a full disk must not stop the run; the step still trains
            logger.warning("amr-sd: could not save step %d's scored batch (%s)", step, exc)
            return None
        logger.info("amr-sd: saved step %d's scored batch to %s (amr-sd view %s)", step, path, path)
        return path
