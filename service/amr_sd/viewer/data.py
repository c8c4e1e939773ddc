"""The credit viewer's data: scored files read and checked, then reduced to what the page shows.

`read_batch` does the reading and every check (each error names the file, the line and the
field); `build` is pure: batches and a token decoder in, the page's JSON-ready data out. Per-token
arrays travel as base64 typed arrays, one buffer per field per batch, because a 512 x 1024 batch
as JSON numbers is several times larger and slower to parse; the page decodes a batch only when
it is shown. Everything a summary needs is computed here, once.
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

from amr_client.saved import token_pieces

HIST_BINS = 41
TOP_TOKENS = 20
HEAD_KEYS = ("model", "policy_version", "step", "anneal_weight")


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
    for (n, line) in lines[1:]:
        if line.get("step") != head["step"]:
            raise ViewError(f"{path}:{n}: step: {line.get('step')!r} where line {lines[0][0]} has "
                            f"{head['step']!r}; one file is one batch (one step)")
    return Batch(label=path.name, head=head, groups=groups, source=source)


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


class _Pieces:
    """The page's table of distinct token texts; rollouts refer to it by index."""

    def __init__(self, decode: Callable[[list[int]], str] | None):
        self.decode, self.index, self.texts, self.memo = decode, {}, [], {}

    def ids(self, token_ids: Sequence[int], given: Sequence[str] | None, where: str) -> list[int]:
        if given is None:
            if self.decode is None:
                raise ViewError(f"{where}: pieces: the file holds token ids only and no tokenizer "
                                "was given to decode them (amr-sd view --model)")
            given = token_pieces(self.decode, token_ids, self.memo)
        out = []
        for piece in given:
            k = self.index.get(piece)
            if k is None:
                k = self.index[piece] = len(self.texts)
                self.texts.append(piece)
            out.append(k)
        return out


def build(batches: Sequence[Batch], decode: Callable[[list[int]], str] | None = None) -> dict[str, Any]:
    """The page's data for `batches` (in the order given: a run's steps, say)."""
    pieces = _Pieces(decode)
    out = [_build_batch(b, pieces) for b in batches]
    return {"batches": out, "pieces": pieces.texts,
            "trend": [{"label": b["label"], "step": b["step"], **{k: b["summary"][k] for k in (
                "gate_rate", "gate_rate_positive", "gate_rate_negative", "acceptance_rate")}}
                for b in out]}


def _build_batch(batch: Batch, pieces: _Pieces) -> dict[str, Any]:
    rows, prompts = [], []
    ids, adv, cig, gated, slp, tlp = [], [], [], [], [], []
    final_reasons: Counter[str] = Counter()
    attempt_reasons: Counter[str] = Counter()
    gated_pieces: Counter[int] = Counter()
    seen_pieces: Counter[int] = Counter()
    branch_cig: dict[str, list[np.ndarray]] = {"positive": [], "negative": []}
    branch = {k: {"rollouts": 0, "reflected_tokens": 0, "gated_tokens": 0} for k in branch_cig}
    requested = accepted = 0
    sum_abs_adv = sum_abs_base = 0.0
    offset = 0
    for g, (group, where) in enumerate(zip(batch.groups, batch.source)):
        prompts.append(_prompt_text(group["input"].get("prompt") or {}))
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

            ref = r.get("reflection") or {}
            if ref:
                requested += 1
                accepted += bool(ref.get("accepted"))
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
            gated_pieces.update(np.asarray(p_ids)[m].tolist())
            ratio = np.divide(a, base, out=np.ones_like(a), where=base != 0)
            rows.append({
                "g": g, "r": j, "off": offset, "n": n,
                "reward": r_in.get("reward"), "A": base,
                "kind": ref.get("kind"), "accepted": ref.get("accepted"),
                "reason": ref.get("reject_reason"), "reasons": ref.get("reject_reasons") or [],
                "attempts": ref.get("attempts"), "source": ref.get("source"), "cached": ref.get("cached"),
                "text": ref.get("text"), "feedback": r_in.get("feedback"),
                "gated": int(m.sum()), "max_amp": float(ratio.max()) if n else 1.0,
                "mean_cig": float(c.mean()) if n else 0.0,
            })
            offset += n

    total_tokens = offset
    all_cig = np.concatenate([np.concatenate(v) for v in branch_cig.values() if v] or [np.zeros(0)])
    span = float(np.quantile(np.abs(all_cig), 0.995)) if all_cig.size else 1.0
    span = max(span, 0.05)
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
        "branches": branch, "hist_span": span, "hist_bins": HIST_BINS, "top_gated": top,
        "has_logprobs": any(not np.isnan(x).all() for x in slp),
    }

    def packed(parts: list[np.ndarray], dtype) -> str:
        return _b64(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))

    head = batch.head
    step = head.get("step")
    return {
        "label": batch.label, "step": step if isinstance(step, int) else None,
        "model": head.get("model"), "policy_version": head.get("policy_version"),
        "anneal_weight": head.get("anneal_weight"),
        "summary": summary, "rows": rows, "prompts": prompts,
        "arrays": {"ids": packed(ids, np.int32), "adv": packed(adv, np.float32),
                   "cig": packed(cig, np.float32), "gated": packed(gated, np.uint8),
                   "slp": packed(slp, np.float32), "tlp": packed(tlp, np.float32)},
    }
