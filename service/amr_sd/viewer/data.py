"""The credit viewer's data: scored files read and checked, then reduced to what the page shows.

`read_batch` does the reading and every check (each error names the file, the line and the
field); `build` is pure: batches and a token decoder in, the page's JSON-ready data out. Per-token
arrays travel as base64 typed arrays, one buffer per field per batch, because a 512 x 1024 batch
as JSON numbers is several times larger and slower to parse; the page decodes a batch only when
it is shown. Everything a summary needs is computed here, once: the batch's, each group's (the
group view, and one prompt followed across steps: prompts are one table shared by every batch),
and the algorithm settings (`settings.py`).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from amr_client.saved import token_pieces
from amr_client.schemas import ScoringConfig
from amr_sd.viewer.settings import GateSamples, batch_settings

HIST_BINS = 41
TOP_TOKENS = 20
# `config` (the request's ScoringConfig overrides) and `stats` (its BatchStats, for the τ the
# gate used) are read when a line has them; saved lines today carry neither (settings.py).
HEAD_KEYS = ("model", "policy_version", "step", "anneal_weight", "config", "stats")


class ViewError(ValueError):
    """A scored file the viewer cannot show; the message says where and why."""


@dataclass
class Batch:
    label: str
    head: dict[str, Any]
    groups: list[dict[str, Any]]  # scored groups, each with "input" (the group sent) and maybe "pieces"
    source: list[str] = field(default_factory=list)  # "file:line" of each group, for errors


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ViewError(f"{path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ViewError(f"{path}:{n}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ViewError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    if not out:
        raise ViewError(f"{path}: empty (one scored group per line expected)")
    return out


def read_batch(path: Path, inputs: list[dict] | None = None, inputs_name: str = "--in") -> Batch:
    """A scored file; `inputs` (the groups that were scored, in order) for lines without `input`."""
    lines = read_jsonl(path)
    for n, line in lines:
        if _is_unscored(line):
            raise ViewError(f"{path}:{n}: this file is not scored: score it first with `amr-sd score "
                            f"--in {path} --out SCORED.jsonl` or pass it as --in beside a scored file")
    needs_input = [n for n, line in lines if "input" not in line]
    if needs_input and inputs is None:
        raise ViewError(f"{path}:{needs_input[0]}: input: the group that was scored is not in the file; "
                        f"pass {inputs_name} GROUPS.jsonl (the file given to `amr-sd score`)")
    if needs_input and len(inputs) != len(lines):
        raise ViewError(f"{path}: {len(lines)} scored groups, but {inputs_name} has {len(inputs)}: "
                        "give the file that was scored")
    groups, source = [], []
    for k, (n, line) in enumerate(lines):
        where = f"{path}:{n}"
        group = dict(line)
        group.setdefault("input", inputs[k] if inputs is not None else None)
        _check_group(group, where)
        groups.append(group)
        source.append(where)
    first = lines[0][1]
    head = {key: first.get(key) for key in HEAD_KEYS}
    if head["config"] is not None:
        try:
            ScoringConfig.model_validate(head["config"])
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ViewError(f"{path}:{lines[0][0]}: config.{'.'.join(map(str, err['loc']))}: "
                            f"{err['msg']}") from None
    for (n, line) in lines[1:]:
        if line.get("step") != head["step"]:
            raise ViewError(f"{path}:{n}: step: {line.get('step')!r} where line {lines[0][0]} has "
                            f"{head['step']!r}; one file is one batch (one step)")
    return Batch(label=path.name, head=head, groups=groups, source=source)


def _is_unscored(line: dict) -> bool:
    """A group as sent to `amr-sd score` (a prompt, rollouts with token ids), with no scores."""
    rollouts = line.get("rollouts")
    return ("prompt" in line and isinstance(rollouts, list) and bool(rollouts)
            and all(isinstance(r, dict) and "advantages" not in r and "base_advantage" not in r
                    for r in rollouts))


def _check_group(group: dict, where: str) -> None:
    rollouts, sent = group.get("rollouts"), group["input"]
    if not isinstance(rollouts, list) or not rollouts:
        raise ViewError(f"{where}: rollouts: missing or empty; expected a scored group as "
                        "`amr-sd score` writes it")
    if not isinstance(sent, dict) or not isinstance(sent.get("rollouts"), list):
        raise ViewError(f"{where}: input.rollouts: missing; expected the group that was scored")
    if len(sent["rollouts"]) != len(rollouts):
        raise ViewError(f"{where}: rollouts: {len(rollouts)} scored, but the input group has "
                        f"{len(sent['rollouts'])}: the input file does not match")
    pieces = group.get("pieces")
    for j, (r, r_in) in enumerate(zip(rollouts, sent["rollouts"])):
        name = f"{where}: rollouts[{j}]"
        for key in ("advantages", "base_advantage"):
            if key not in r:
                raise ViewError(f"{name}.{key}: missing; expected a scored rollout")
        # The service sends no cig for a rollout the teacher never saw a reflection for (A = 0, or
        # every attempt rejected): its CIG is 0 and nothing is gated. An accepted reflection
        # without cig means the batch was scored without asking for it.
        accepted = (r.get("reflection") or {}).get("accepted")
        for key in ("cig", "gated"):
            if r.get(key) is None and accepted:
                raise ViewError(f"{name}.{key}: missing; score with --return-cig (`amr-sd score`) "
                                "or returns={'cig': True} (AMRClient)")
        n_tokens = len(r_in.get("token_ids") or [])
        for key in ("advantages", "cig", "gated", "student_logprobs", "teacher_logprobs"):
            if r.get(key) is not None and len(r[key]) != n_tokens:
                raise ViewError(f"{name}.{key}: {len(r[key])} values for {n_tokens} response tokens "
                                "in the input group: the input file does not match")
        if pieces is not None and len(pieces[j]) != n_tokens:
            raise ViewError(f"{where}: pieces[{j}]: {len(pieces[j])} pieces for {n_tokens} tokens")


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode("ascii")


def _prompt_text(prompt: dict) -> str:
    if prompt.get("messages"):
        return "\n\n".join(f"[{m['role']}] {m['content']}" for m in prompt["messages"])
    return prompt.get("text") or f"({len(prompt.get('prompt_token_ids') or [])} prompt token ids, no text)"


def _histogram(values: np.ndarray, span: float) -> list[int]:
    edges = np.linspace(-span, span, HIST_BINS + 1)
    counts, _ = np.histogram(np.clip(values, -span, span), bins=edges)
    return counts.tolist()


def _rate(n: float, d: float) -> float:
    return n / d if d else 0.0


class _Table:
    """Distinct strings (token texts, prompts) in first-seen order; the data refers to them by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.texts: list[str] = []

    def id(self, text: str) -> int:
        k = self.index.get(text)
        if k is None:
            k = self.index[text] = len(self.texts)
            self.texts.append(text)
        return k


class _Pieces(_Table):
    """The page's table of distinct token texts; rollouts refer to it by index."""

    def __init__(self, decode: Callable[[list[int]], str] | None):
        super().__init__()
        self.decode, self.memo = decode, {}

    def ids(self, token_ids: Sequence[int], given: Sequence[str] | None, where: str) -> list[int]:
        if given is None:
            if self.decode is None:
                raise ViewError(f"{where}: pieces: the file holds token ids only and no tokenizer "
                                "was given to decode them (amr-sd view --model)")
            given = token_pieces(self.decode, token_ids, self.memo)
        return [self.id(piece) for piece in given]


def build(batches: Sequence[Batch], decode: Callable[[list[int]], str] | None = None) -> dict[str, Any]:
    """The page's data for `batches` (in the order given: a run's steps, say)."""
    pieces, prompts = _Pieces(decode), _Table()
    out = [_build_batch(b, pieces, prompts) for b in batches]
    return {"batches": out, "pieces": pieces.texts, "prompts": prompts.texts,
            "trend": [{"label": b["label"], "step": b["step"], **{k: b["summary"][k] for k in (
                "gate_rate", "gate_rate_positive", "gate_rate_negative", "acceptance_rate")}}
                for b in out]}


class _GroupTally:
    """One group's figures for the group view and for following its prompt across steps."""

    def __init__(self, prompt: int, row: int):
        self.prompt, self.row, self.rewards = prompt, row, []
        self.requested = self.accepted = 0
        self.reflected = {"positive": 0, "negative": 0}
        self.gated = {"positive": 0, "negative": 0}

    def as_dict(self) -> dict[str, Any]:
        rewards = [x for x in self.rewards if isinstance(x, (int, float))]
        reflected, gated = sum(self.reflected.values()), sum(self.gated.values())
        return {
            "prompt": self.prompt, "row": self.row, "size": len(self.rewards),
            "mean_reward": float(np.mean(rewards)) if rewards else None,
            "reflections_requested": self.requested, "reflections_accepted": self.accepted,
            "acceptance_rate": _rate(self.accepted, self.requested),
            "reflected_tokens": reflected, "gated_tokens": gated, "gate_rate": _rate(gated, reflected),
            "gate_rate_positive": _rate(self.gated["positive"], self.reflected["positive"]),
            "gate_rate_negative": _rate(self.gated["negative"], self.reflected["negative"]),
        }


def _build_batch(batch: Batch, pieces: _Pieces, prompts: _Table) -> dict[str, Any]:
    rows, groups = [], []
    ids, adv, cig, gated, slp, tlp = [], [], [], [], [], []
    final_reasons: Counter[str] = Counter()
    attempt_reasons: Counter[str] = Counter()
    gated_pieces: Counter[int] = Counter()
    seen_pieces: Counter[int] = Counter()
    branch_cig: dict[str, list[np.ndarray]] = {"positive": [], "negative": []}
    branch = {k: {"rollouts": 0, "reflected_tokens": 0, "gated_tokens": 0} for k in branch_cig}
    samples = {"positive": GateSamples(), "negative": GateSamples()}
    requested = accepted = 0
    sum_abs_adv = sum_abs_base = max_abs_cig = 0.0
    offset = 0
    for g, (group, where) in enumerate(zip(batch.groups, batch.source)):
        tally = _GroupTally(prompts.id(_prompt_text(group["input"].get("prompt") or {})), len(rows))
        for j, (r, r_in) in enumerate(zip(group["rollouts"], group["input"]["rollouts"])):
            token_ids = r_in["token_ids"]
            given = group["pieces"][j] if group.get("pieces") is not None else None
            p_ids = pieces.ids(token_ids, given, f"{where}: rollouts[{j}]")
            a = np.asarray(r["advantages"], dtype=np.float64)
            base = float(r["base_advantage"])
            n = len(token_ids)
            c = np.zeros(n) if r.get("cig") is None else np.asarray(r["cig"], dtype=np.float64)
            m = np.zeros(n, bool) if r.get("gated") is None else np.asarray(r["gated"], dtype=bool)
            ids.append(np.asarray(p_ids, dtype=np.int32))
            adv.append(a.astype(np.float32))
            cig.append(c.astype(np.float32))
            gated.append(m.astype(np.uint8))
            for dst, key in ((slp, "student_logprobs"), (tlp, "teacher_logprobs")):
                values = r.get(key)
                dst.append(np.full(n, np.nan, np.float32) if values is None else
                           np.asarray([np.nan if v is None else v for v in values], dtype=np.float32))
            sum_abs_adv += float(np.abs(a).sum())
            sum_abs_base += abs(base) * n
            if n:
                max_abs_cig = max(max_abs_cig, float(np.abs(c).max()))

            ref = r.get("reflection") or {}
            if ref:
                requested += 1
                accepted += bool(ref.get("accepted"))
                tally.requested += 1
                tally.accepted += bool(ref.get("accepted"))
                if not ref.get("accepted"):
                    final_reasons[ref.get("reject_reason") or "unknown"] += 1
                attempt_reasons.update(ref.get("reject_reasons") or [])
            side = "positive" if base > 0 else "negative" if base < 0 else None
            if side and ref.get("accepted"):
                branch[side]["rollouts"] += 1
                branch[side]["reflected_tokens"] += n
                branch[side]["gated_tokens"] += int(m.sum())
                branch_cig[side].append(c)
                seen_pieces.update(p_ids)
                tally.reflected[side] += n
                tally.gated[side] += int(m.sum())
            if side and m.any():
                # Â/A - 1 = scale_eff · (±Î - τ) on a gated token (settings.py).
                samples[side].add(c[m] if side == "positive" else -c[m], a[m] / base - 1.0)
            gated_pieces.update(np.asarray(p_ids)[m].tolist())
            tally.rewards.append(r_in.get("reward"))
            ratio = np.divide(a, base, out=np.ones_like(a), where=base != 0)
            row = {
                "g": g, "r": j, "off": offset, "n": n,
                "reward": r_in.get("reward"), "A": base,
                "kind": ref.get("kind"), "accepted": ref.get("accepted"),
                "reason": ref.get("reject_reason"), "reasons": ref.get("reject_reasons") or [],
                "attempts": ref.get("attempts"), "source": ref.get("source"), "cached": ref.get("cached"),
                "text": ref.get("text"), "feedback": r_in.get("feedback"),
                "gated": int(m.sum()), "max_amp": float(ratio.max()) if n else 1.0,
                "mean_cig": float(c.mean()) if n else 0.0,
            }
            if ref.get("rejected_texts"):
                # Each attempt's text: the rejected ones beside their reasons, then the accepted
                # one (`text`). Records written before rejected_texts keep the last text only.
                row["attempt_texts"] = list(ref["rejected_texts"]) + ([ref.get("text")] if ref.get("accepted") else [])
            rows.append(row)
            offset += n
        groups.append(tally.as_dict())

    settings = batch_settings(batch.head, samples["positive"], samples["negative"], max_abs_cig)
    total_tokens = offset
    all_cig = np.concatenate([np.concatenate(v) for v in branch_cig.values() if v] or [np.zeros(0)])
    percentile = float(np.quantile(np.abs(all_cig), 0.995)) if all_cig.size else 1.0
    # The axis spans the bulk of |Î| (its 99.5th percentile), widened so that both gate margins
    # show, but never past κ, where Î is clipped; tokens beyond fall into the end bins.
    taus = [settings[k]["value"] for k in ("tau_pos", "tau_neg") if settings[k]["value"] is not None]
    span = max(percentile, 1.15 * max(taus, default=0.0), 0.05)
    if settings["kappa"]["value"] is not None:
        span = min(span, settings["kappa"]["value"])
    reflected = sum(b["reflected_tokens"] for b in branch.values())
    n_gated = sum(b["gated_tokens"] for b in branch.values())
    for side, b in branch.items():
        b["gate_rate"] = _rate(b["gated_tokens"], b["reflected_tokens"])
        values = np.concatenate(branch_cig[side]) if branch_cig[side] else np.zeros(0)
        b["hist"] = _histogram(values, span)
    top = [{"piece": p, "gated": k, "seen": seen_pieces[p]} for p, k in gated_pieces.most_common(TOP_TOKENS)]
    summary = {
        "groups": len(batch.groups), "rollouts": len(rows), "tokens": total_tokens,
        "gated_tokens": int(sum(x["gated"] for x in rows)), "reflected_tokens": reflected,
        "gate_rate": _rate(n_gated, reflected),
        "gate_rate_positive": branch["positive"]["gate_rate"],
        "gate_rate_negative": branch["negative"]["gate_rate"],
        "reflections_requested": requested, "reflections_accepted": accepted,
        "acceptance_rate": _rate(accepted, requested),
        "reject_reasons": dict(final_reasons.most_common()),
        "attempt_reject_reasons": dict(attempt_reasons.most_common()),
        "mean_abs_advantage": _rate(sum_abs_adv, total_tokens),
        "mean_abs_base_advantage": _rate(sum_abs_base, total_tokens),
        "branches": branch, "hist_span": span, "hist_percentile": percentile, "hist_bins": HIST_BINS,
        "top_gated": top, "has_logprobs": any(not np.isnan(x).all() for x in slp),
    }

    def packed(parts: list[np.ndarray], dtype) -> str:
        return _b64(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))

    head = batch.head
    step = head.get("step")
    return {
        "label": batch.label, "step": step if isinstance(step, int) else None,
        "model": head.get("model"), "policy_version": head.get("policy_version"),
        "anneal_weight": head.get("anneal_weight"), "settings": settings,
        "summary": summary, "rows": rows, "groups": groups,
        "arrays": {"ids": packed(ids, np.int32), "adv": packed(adv, np.float32),
                   "cig": packed(cig, np.float32), "gated": packed(gated, np.uint8),
                   "slp": packed(slp, np.float32), "tlp": packed(tlp, np.float32)},
    }
