"""`make fidelity` on the policy's own mistakes: does the negative gate land on the step that went
wrong?

The model's own sampled solutions (`bench/fidelity/data/onpolicy-MODEL.jsonl`, made by
`bench.fidelity.onpolicy_sample`) are checked step by step (`bench.fidelity.onpolicy_data`): the
first wrong step is located (ProcessBench's label) and its wrong number and first wrong digit are
labelled token by token. Groups with both verdicts (a uniform group has A = 0 under GRPO, so no
credit at all) go to a real `amr-sd serve` (float32, no score cache) over HTTP, once per teacher context:

  oracle        a critique naming the faulty step, no value
  value         the oracle plus the faulty step written out right (the ceiling)
  content_free  a critique that says nothing about this attempt
  feedback      the verifier's raw feedback as the critique (SDPO-style)
  self_v1       the service's own reflections, METHOD's v1 templates (only with --contexts)
  self_v2       the service's own reflections, v2 templates (the default)

Correct rollouts get "every step follows" under the oracle contexts, the verdict under feedback,
and the service's hints under self. Beside them: the student's own surprise (-log p, no
reflection), and the null row (the student pass of two requests compared, on the first groups).
Every context after the first sends the first context's student logprobs, so only teacher passes
run again.

Per context, on the failed rollouts with a located first wrong step: AUROC of -CIG for the first
wrong digit, for the wrong number and for every token from the wrong number on, each against the
tokens before it (the right part of the response); step hit@1 (the step with the most negative
summed CIG is the faulty one); ProcessBench F1 over failed and correct rollouts (the predicted
first wrong step is the first step with a token whose -CIG passes τ-); gate precision / recall /
lift at the request's τ; 95 % bootstrap intervals over rollouts; the student's mean logprob at the
first wrong digit; reflection acceptance, reject reasons, and how often a critique names the
located step and states its right value. With `cig_correction="student_trend"` the same figures
come from the same passes (the option is a pure function of them).

    python -m bench.fidelity.onpolicy [--model qwen2.5-coder-1.5b] [--split heldout]
        [--contexts oracle,value,content_free,feedback,self_v1,self_v2]

About 30 minutes for the 1.5B's held-out split on a 2-core AMX Xeon (float32 scoring runs at
~75 response tokens/s there), a few minutes for the 135M.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from bench import OUT_DIR
from bench.common import procs
from bench.fidelity import onpolicy_data, onpolicy_sample
from bench.fidelity.metrics import (auroc, bootstrap_ci, first_flagged_step, gate_stats, hit_at_1,
                                    processbench_f1, step_sums)

RETURNS = {"cig": True, "logprobs": True, "reflections": True}
CONTEXTS = ("oracle", "value", "content_free", "feedback", "self_v1", "self_v2")
# self_v1 is the old template's row: measured once (docs/fidelity.md), on request since.
DEFAULT_CONTEXTS = tuple(c for c in CONTEXTS if c != "self_v1")
NULL_GROUPS = 6  # the null row re-scores these groups' student passes: noise needs no more
CORRECTIONS = ("none", "student_trend")
AFFIRM = "Every step follows correctly from the one before it."
CONTENT_FREE = "Look over the attempt again before you answer."
TAU = 1.0  # the default τ- (ScoringConfig.tau_neg)


def _feedback(answer: int | None, correct: bool) -> str:
    # What a verifier that reads only the final answer can say.
    if correct:
        return "The final answer is correct."
    return "No final answer was found." if answer is None else \
        f"The final answer {answer} is incorrect."


def _right_step(p: dict, k: int) -> str:
    """Step k as the right solution writes it: its operands are the right chain's, so for a wrong
    operand it is the step the attempt should have written."""
    truth = onpolicy_data.truth(p["start"], p["ops"])
    left = p["start"] if k == 1 else truth[k - 2]
    op, right = p["ops"][k - 1]
    return f"{left} {op} {right} = {truth[k - 1]}"


def overrides(context: str, p: dict, item: dict) -> str | None:
    """The reflection a context puts on one rollout (None: the service writes its own)."""
    if context.startswith("self"):
        return None
    if context == "feedback":
        return item["feedback"]
    if item["correct"]:
        return CONTENT_FREE if context == "content_free" else AFFIRM
    k = item["check"].first_wrong_step
    return {"oracle": f"The mistake is in step {k}: that step is wrong, and every later step "
                      "builds on it.",
            "value": f"The mistake is in step {k}: {_right_step(p, k)}, and every later step "
                     "builds on it.",
            "content_free": CONTENT_FREE}[context]


def build(problems: list[dict], tokenizer, max_correct: int = 2) -> tuple[list[dict], dict]:
    """The scored items of each mixed group (located failures, the shortest correct ones) and the
    counts of everything, kept or not."""
    counts = collections.Counter()
    groups = []
    for p in problems:
        p["ops"] = [tuple(o) for o in p["ops"]]
        items = []
        for s in p["samples"]:
            text = tokenizer.decode(s["token_ids"], skip_special_tokens=True)
            check = onpolicy_data.check(text, p["start"], p["ops"])
            verdict = "truncated" if s["finish_reason"] == "length" else check.verdict
            correct = check.answer == onpolicy_data.truth(p["start"], p["ops"])[-1] \
                and verdict != "truncated"
            counts[verdict] += 1
            counts["reward 1" if correct else "reward 0"] += 1
            items.append({"token_ids": s["token_ids"], "text": text, "check": check,
                          "verdict": verdict, "correct": correct,
                          "feedback": _feedback(check.answer, correct)})
        if len({i["correct"] for i in items}) < 2:
            counts["failed, in a uniform group (A = 0)"] += sum(not i["correct"] for i in items)
            continue
        located = [i for i in items if not i["correct"] and i["verdict"] in ("slip", "operand")]
        for i in located:
            i["labels"] = onpolicy_data.token_labels(tokenizer, i["token_ids"], i["text"],
                                                     i["check"])
            # What a critique must state to correct the step: the right chain's value there.
            i["right_value"] = onpolicy_data.truth(p["start"], p["ops"])[i["check"].first_wrong_step - 1]
            counts[f"scored {i['verdict']}"] += 1
            counts["fault at the last step"] += i["check"].first_wrong_step == len(p["ops"])
        if not located:
            continue
        good = sorted((i for i in items if i["correct"]), key=lambda i: len(i["token_ids"]))
        good = good[:max_correct]
        for i in good:
            i["labels"] = onpolicy_data.token_labels(tokenizer, i["token_ids"], i["text"],
                                                     i["check"])
        counts["scored correct"] += len(good)
        groups.append({"problem": p, "items": good + located})
    return groups, dict(counts)


def request(groups: list[dict], context: str, student: dict | None) -> list[dict]:
    out = []
    for g in groups:
        p = g["problem"]
        rollouts = []
        for n, item in enumerate(g["items"]):
            r = {"token_ids": item["token_ids"], "text": item["text"],
                 "reward": float(item["correct"]), "correct": item["correct"],
                 "feedback": item["feedback"]}
            text = overrides(context, p, item)
            if text is not None:
                r["reflection_override"] = text
            if student is not None:
                r["student_logprobs"] = student[(p["seed"], n)]
            rollouts.append(r)
        truth = onpolicy_data.truth(p["start"], p["ops"])
        out.append({"prompt": {"messages": [{"role": "user", "content": p["question"]}],
                               "prompt_token_ids": p["prompt_token_ids"]},
                    "reference": {"answer": str(truth[-1])}, "rollouts": rollouts})
    return out


def _states(critique: str, number: int) -> bool:
    return any(int(n) == number for n in re.findall(r"-?\d+", critique.replace(",", "")))


def rows(groups: list[dict], answer, correction: str) -> list[dict]:
    """One row per scored rollout: its per-token arrays under this answer, and its labels."""
    from amr_sd.algo import advantage

    out = []
    for g, scored in zip(groups, answer.groups):
        for item, r in zip(g["items"], scored.rollouts):
            n = len(item["token_ids"])
            lab = item["labels"]
            gateable = lab.offsets[:, 1] > lab.offsets[:, 0]  # special tokens have no text
            student = np.asarray(r.student_logprobs, float)
            if r.teacher_logprobs is None:  # rejected reflection: exactly GRPO, CIG 0
                cig, gated = np.zeros(n), np.zeros(n, bool)
            else:
                cig = np.asarray(r.cig, float)
                gated = np.asarray(r.gated, bool)
                if correction != "none":
                    cig = advantage.remove_student_trend(cig, student, gateable)
                    gated = gateable & ((-cig > TAU) if not item["correct"] else (cig > TAU))
            rec = r.reflection
            out.append({"item": item, "cig": cig, "gated": gated, "student": student,
                        "gateable": gateable, "labels": lab, "correct": item["correct"],
                        "reflection": rec})
    return out


def figures(rs: list[dict], boot: int = 1000) -> dict:
    failed = [r for r in rs if not r["correct"]]
    correct = [r for r in rs if r["correct"]]

    def pooled(sub, score_of):
        first, number, after, before = [], [], [], []
        for r in sub:
            lab, keep = r["labels"], r["gateable"]
            score = score_of(r)
            pre = keep & ~lab.after_slip
            first.append(score[lab.first_wrong_digit & keep])
            number.append(score[lab.slip_number & keep])
            after.append(score[lab.after_slip & keep])
            before.append(score[pre])
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        neg = cat(before)

        def roc(pos):
            pos = cat(pos)
            return auroc(np.r_[pos, neg], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
        return {"first_digit": roc(first), "number": roc(number), "after": roc(after)}

    def hits(sub, sums_of):
        return [hit_at_1(step_sums(sums_of(r), r["labels"].step), r["item"]["check"].first_wrong_step)
                for r in sub]

    cig_score = lambda r: -r["cig"]  # noqa: E731
    hit = hits(failed, lambda r: r["cig"])
    out = {"n_failed": len(failed), "n_correct": len(correct), **pooled(failed, cig_score),
           "hit_at_1": float(np.mean(hit)) if hit else None,
           "chance_hit_at_1": float(np.mean([1 / max(r["labels"].n_steps, 1) for r in failed]))
           if failed else None}
    out["ci_first_digit"] = bootstrap_ci(
        len(failed), lambda idx: pooled([failed[i] for i in idx], cig_score)["first_digit"],
        n_boot=boot)
    out["ci_hit_at_1"] = bootstrap_ci(len(failed), lambda idx: float(np.mean([hit[i] for i in idx])),
                                      n_boot=boot)
    pred = [first_flagged_step(r["gateable"] & (-r["cig"] > TAU), r["labels"].step) for r in rs]
    label = [-1 if r["correct"] else r["item"]["check"].first_wrong_step for r in rs]
    out["processbench"] = processbench_f1(pred, label)
    gated = np.concatenate([r["gated"] for r in failed]) if failed else np.zeros(0, bool)
    number = np.concatenate([r["labels"].slip_number for r in failed]) if failed else gated
    first = np.concatenate([r["labels"].first_wrong_digit for r in failed]) if failed else gated
    before = np.concatenate([~r["labels"].after_slip & r["gateable"] for r in failed]) \
        if failed else gated
    g = gate_stats(gated, number)
    keep = first | before
    out.update(gate_rate=g["gate_rate"], gate_precision=g["precision"], gate_recall=g["recall"],
               lift=g["lift"], lift_first_digit=gate_stats(gated[keep], first[keep])["lift"],
               gate_rate_correct=float(np.mean(np.concatenate([r["gated"][r["gateable"]]
                                                               for r in correct])))
               if correct else None)
    return out


def reflections(rs: list[dict]) -> dict:
    """Acceptance and what the written critiques say (self contexts only)."""
    out = {}
    for side, sub in (("critique", [r for r in rs if not r["correct"]]),
                      ("hint", [r for r in rs if r["correct"]])):
        recs = [r["reflection"] for r in sub if r["reflection"] is not None]
        if not recs:
            continue
        reasons = collections.Counter(x for rec in recs for x in rec.reject_reasons)
        out[side] = {"n": len(recs), "acceptance": float(np.mean([rec.accepted for rec in recs])),
                     "reject_reasons": dict(reasons)}
        if side == "critique":
            names = states = both = repeats = 0
            for r in sub:
                rec, check = r["reflection"], r["item"]["check"]
                if rec is None or not rec.accepted or not rec.text:
                    continue
                k = check.first_wrong_step
                name = re.search(rf"\bstep\s*{k}\b", rec.text, re.IGNORECASE) is not None
                state = _states(rec.text, r["item"]["right_value"])
                names, states, both = names + name, states + state, both + (name and state)
                # The wrong number the attempt wrote there (an operation sign is not one).
                written = r["item"]["text"][slice(*check.wrong_span)].replace("−", "-")
                repeats += re.fullmatch(r"-?\d+", written) is not None and \
                    int(written) != r["item"]["right_value"] and _states(rec.text, int(written))
            accepted = sum(rec.accepted for rec in recs) or 1
            out[side].update(names_step=names / accepted, states_right_value=states / accepted,
                             names_and_states=both / accepted,
                             repeats_wrong_value=repeats / accepted)
    return out


def surprise(rs: list[dict]) -> dict:
    failed = [r for r in rs if not r["correct"]]
    fake = [{**r, "cig": r["student"]} for r in rs]  # low logprob plays the part of low CIG
    out = figures(fake, boot=200)
    # -log p is never below τ, so its ProcessBench F1 uses the threshold that fits best (an
    # upper bound on what a tuned threshold would give).
    best = None
    for thr in np.arange(0.5, 12.5, 0.5):
        pred = [first_flagged_step(r["gateable"] & (-r["student"] > thr), r["labels"].step)
                for r in rs]
        label = [-1 if r["correct"] else r["item"]["check"].first_wrong_step for r in rs]
        f1 = processbench_f1(pred, label)
        if f1["f1"] is not None and (best is None or f1["f1"] > best["f1"]):
            best = {**f1, "threshold": float(thr)}
    out["processbench"] = best
    firsts = np.concatenate([r["student"][r["labels"].first_wrong_digit] for r in failed]) \
        if failed else np.zeros(0)
    out["student_logprob_first_digit"] = float(firsts.mean()) if firsts.size else None
    out["share_first_digit_p_over_0.1"] = float((firsts > np.log(0.1)).mean()) \
        if firsts.size else None
    return out


def _student(groups: list[dict], answer) -> dict:
    return {(g["problem"]["seed"], n): r.student_logprobs
            for g, s in zip(groups, answer.groups) for n, r in enumerate(s.rollouts)}


def run(model: str, split: str = "heldout", out_dir: Path = OUT_DIR, dtype: str = "float32",
        max_groups: int | None = None, contexts: tuple[str, ...] = DEFAULT_CONTEXTS) -> dict:
    import httpx
    from transformers import AutoTokenizer

    from amr_client import AMRClient
    from amr_sd.engine.models import resolve_model

    lines = [json.loads(x) for x in onpolicy_sample.data_path(model).read_text().splitlines()]
    meta, problems = lines[0]["meta"], [p for p in lines[1:] if p["split"] == split]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    groups, counts = build(problems, tokenizer)
    groups = groups[:max_groups] if max_groups else groups
    results = {"data": {"model": model, "split": split, "sampled": meta, "dtype": dtype,
                        "counts": counts, "groups": len(groups)}, "contexts": {}}
    if not groups:  # e.g. a model that never gets a chain right: nothing to compare a failure with
        print(f"{model}: no group of the {split} split has both verdicts and a located slip; "
              f"samples by verdict: {counts}", file=sys.stderr)
        return results
    port = procs.free_port()
    server = procs.ServerProcess(
        f"amr-sd-fidelity-onpolicy-{model}",
        [sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port), "--model", model,
         "--dtype", dtype],
        port=port, ready_path="/readyz", log_dir=out_dir,
        env={**os.environ, **procs.NO_SCORE_CACHE, "AMR_REQUEST_TIMEOUT_S": "7200",
             "AMR_MAX_REQUEST_TIMEOUT_S": "7200"})
    student = base = None
    answers = {}
    with server:
        with AMRClient(server.base_url, max_retries=0,
                       timeout=httpx.Timeout(60.0, read=7200.0)) as client:
            # The student passes (sent with every later request, the null's first half and the
            # surprise row) come from a context that scores every rollout: a self-written one
            # leaves a rollout whose reflection was rejected unscored.
            contexts = tuple(sorted(contexts, key=lambda c: c.startswith("self")))
            if contexts[0].startswith("self"):
                base = client.score(request(groups, "content_free", None), step=0,
                                    returns=RETURNS)
                student = _student(groups, base)
            for context in contexts:
                t0 = time.monotonic()
                config = {"reflection_template": "v1" if context == "self_v1" else "v2"}
                answers[context] = client.score(request(groups, context, student), step=0,
                                                returns=RETURNS, config=config)
                seconds = time.monotonic() - t0
                if student is None:
                    base, student = answers[context], _student(groups, answers[context])
                per = {}
                for correction in CORRECTIONS:
                    rs = rows(groups, answers[context], correction)
                    per[correction] = figures(rs)
                per["seconds"] = seconds
                if context.startswith("self"):
                    per["reflections"] = reflections(rows(groups, answers[context], "none"))
                results["contexts"][context] = per
                print(f"{context}: {seconds:.0f} s", file=sys.stderr, flush=True)
            # null: the student pass of a second request, against the first request's.
            t0 = time.monotonic()
            again = client.score(request(groups[:NULL_GROUPS], "content_free", None), step=0,
                                 returns=RETURNS)
            a = np.concatenate([np.asarray(student[(g["problem"]["seed"], n)], float)
                                for g in groups[:NULL_GROUPS] for n in range(len(g["items"]))])
            b = np.concatenate([np.asarray(r.student_logprobs, float)
                                for s in again.groups for r in s.rollouts])
            results["null"] = {"max_abs_cig": float(np.abs(a - b).max()),
                               "mean_abs_cig": float(np.abs(a - b).mean()), "tokens": int(a.size),
                               "seconds": time.monotonic() - t0}
    results["surprise"] = surprise(rows(groups, base, "none"))
    results["examples"] = examples(groups, answers)
    results["data"]["startup_s"] = server.startup_s
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fidelity-onpolicy-{model}-{split}.json").write_text(
        json.dumps(results, indent=2, default=_json))
    return results


def examples(groups, answers, n: int = 4) -> list[dict]:
    """A few critiques the service wrote, beside the located fault (for the docs)."""
    out = []
    for context in ("self_v2", "self_v1"):
        if context not in answers:
            continue
        for g, scored in zip(groups, answers[context].groups):
            for item, r in zip(g["items"], scored.rollouts):
                rec = r.reflection
                if item["correct"] or rec is None or not rec.accepted or len(out) >= 2 * n:
                    continue
                check = item["check"]
                line = item["text"][slice(*check.step_spans[check.first_wrong_step - 1])]
                out.append({"context": context, "faulty_step": line,
                            "right": _right_step(g["problem"], check.first_wrong_step),
                            "critique": rec.text})
    return out


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(type(value))


def _fmt(v, spec=".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_fmt(x, spec) for x in v) + "]"
    return "inf" if v == float("inf") else format(v, spec)


def table(results: dict) -> list[str]:
    d, c = results["data"], results["data"]["counts"]
    lines = [f"{d['model']}, split {d['split']}, {d['dtype']}: {d['groups']} mixed groups; "
             f"samples by verdict: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
             "| context | CIG | first wrong digit [95 % CI] | wrong number | from the slip on | "
             "hit@1 [95 % CI] | ProcessBench F1 | gate rate | precision | recall | lift | "
             "lift first digit | acceptance (critique / hint) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per in results["contexts"].items():
        refl = per.get("reflections", {})
        acc = " / ".join(_fmt(refl.get(k, {}).get("acceptance"), ".0%") for k in ("critique", "hint")) \
            if refl else ""
        for correction in CORRECTIONS:
            f = per[correction]
            lines.append(
                f"| {name} | {correction} | {_fmt(f['first_digit'])} {_fmt(f['ci_first_digit'])} | "
                f"{_fmt(f['number'])} | {_fmt(f['after'])} | {_fmt(f['hit_at_1'])} "
                f"{_fmt(f['ci_hit_at_1'])} | {_fmt(f['processbench']['f1'])} | "
                f"{_fmt(f['gate_rate'], '.1%')} | {_fmt(f['gate_precision'])} | "
                f"{_fmt(f['gate_recall'])} | {_fmt(f['lift'], '.1f')} | "
                f"{_fmt(f['lift_first_digit'], '.1f')} | {acc} |")
    s = results["surprise"]
    lines.append(f"| student's own -log p | - | {_fmt(s['first_digit'])} | {_fmt(s['number'])} | "
                 f"{_fmt(s['after'])} | {_fmt(s['hit_at_1'])} | "
                 f"{_fmt(s['processbench']['f1'])} (best threshold) | | | | | | |")
    n = results["null"]
    lines.append(f"null: max |CIG| {n['max_abs_cig']:.2e}, mean {n['mean_abs_cig']:.2e} over "
                 f"{n['tokens']} tokens; chance hit@1 "
                 f"{_fmt(next(iter(results['contexts'].values()))['none']['chance_hit_at_1'])}; "
                 f"student logprob at the first wrong digit "
                 f"{_fmt(s['student_logprob_first_digit'])} "
                 f"({_fmt(s['share_first_digit_p_over_0.1'], '.0%')} with p > 0.1)")
    for name, per in results["contexts"].items():
        for side, r in per.get("reflections", {}).items():
            extra = "" if side == "hint" else (
                f", names the step {_fmt(r['names_step'], '.0%')}, states its right value "
                f"{_fmt(r['states_right_value'], '.0%')}, both {_fmt(r['names_and_states'], '.0%')}, "
                f"repeats the wrong value {_fmt(r.get('repeats_wrong_value'), '.0%')}")
            lines.append(f"{name} {side}s: {r['n']}, accepted {_fmt(r['acceptance'], '.0%')}, "
                         f"rejects {r['reject_reasons'] or 'none'}{extra}")
    return lines


def demo_groups(model: str, n_groups: int = 6, per_verdict: int = 2) -> list[dict]:
    """Groups the model sampled itself, for `make demo MODEL=...`: the dev split's first
    `n_groups` with both verdicts and a located slip, each with its `per_verdict` shortest correct
    rollouts and located failures, as the wire schema (no overrides: the service reflects)."""
    from transformers import AutoTokenizer

    from amr_sd.engine.models import resolve_model

    lines = [json.loads(x) for x in onpolicy_sample.data_path(model).read_text().splitlines()]
    problems = [p for p in lines[1:] if p["split"] == "dev"]
    groups, _ = build(problems, AutoTokenizer.from_pretrained(resolve_model(model)),
                      max_correct=per_verdict)
    for g in groups:
        g["items"] = [i for i in g["items"] if i["correct"]] + \
            [i for i in g["items"] if not i["correct"]][:per_verdict]
    return request(groups[:n_groups], "self_v2", None)


def main(argv: list[str] | None = None) -> int:
    from amr_sd.engine.models import REFLECTING_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=REFLECTING_MODEL)
    parser.add_argument("--split", default="heldout", choices=sorted(onpolicy_sample.SPLITS))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--dtype", default="float32",
                        help="the server's dtype; float32, since bf16 scores move with the batch")
    parser.add_argument("--max-groups", type=int, help="score only the first N mixed groups")
    parser.add_argument("--contexts", default=",".join(DEFAULT_CONTEXTS),
                        help=f"comma-separated, from {', '.join(CONTEXTS)} (default: all but "
                             "self_v1)")
    parser.add_argument("--write-demo", type=Path, metavar="PATH",
                        help="write the demo's groups (dev split, 6 groups) to PATH and stop")
    args = parser.parse_args(argv)
    if args.write_demo:
        groups = demo_groups(args.model)
        args.write_demo.write_text("".join(json.dumps(g) + "\n" for g in groups))
        print(f"wrote {len(groups)} groups {args.model} sampled itself to {args.write_demo}")
        return 0
    contexts = tuple(c for c in args.contexts.split(",") if c)
    unknown = set(contexts) - set(CONTEXTS)
    if unknown:
        parser.error(f"--contexts: unknown {', '.join(sorted(unknown))}; use {', '.join(CONTEXTS)}")
    results = run(args.model, args.split, args.out, args.dtype, args.max_groups, contexts)
    if results["contexts"]:
        print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
