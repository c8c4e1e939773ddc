"""`make fidelity`: does the credit land on the wrong tokens?

Arithmetic chains with one slip at a known step (`bench.fidelity.chains`: the slip propagates, and
every token of every wrong number is labelled) are scored through a real `amr-sd serve` on the
embedded model, over HTTP with AMRClient, under several teacher contexts:

  oracle    a critique naming the faulty step, not the right value (`reflection_override`);
            correct solutions get a hint that every step follows
  quote     the oracle quoting the faulty step as written ("Step 2: 12 * 3 = 39."): the best a
            writer asked to quote the first wrong step could do
  value     the oracle plus the faulty step written out right ("12 * 3 = 36": an intermediate value,
            never the final answer, so the leak filter lets it through): the most a critique can
            tell the teacher, and the ceiling on what a writer could reach
  feedback  the verifier's raw feedback as the reflection (the SDPO-style baseline)
  self      the service's own reflections, written from verdicts, peers and feedback
  null      the student context scored twice, in two requests (the score cache off, so both are
            scored): a reflection that adds nothing.
            Its |CIG| is the pipeline's own noise (batching, kernels), the floor under every
            other figure

Per context, on the failed rollouts (the negative branch): AUROC of -CIG for wrong-number tokens
against the other response tokens, for the slip's own tokens against the right ones, and for the
first wrong digit (the token where the attempt departs from the right text) against them; gate
precision / recall / lift at the request's tau, and the lift on the first wrong digit; lift with
tau calibrated to a 10 % gate rate (the (1 - rate) quantile of the batch's -CIG, what a per-batch
calibrated gate would use); mean |Â|/|A| on wrong vs other tokens; acceptance and reject reasons;
on correct rollouts, the share of +CIG mass and of gated tokens that falls on number tokens.
Beside them, the student's own surprise (-log p with no reflection) as a detector: what the model
already knows without a teacher.

    python -m bench.fidelity.synthetic [--problems 8] [--out build/bench] [--dtype float32]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from bench import OUT_DIR
from bench.common import corpus, procs
from bench.fidelity import chains
from bench.fidelity.metrics import amplification, calibrated_gate, detection, gate_stats

RETURNS = {"cig": True, "logprobs": True, "reflections": True}
# The gate rate a calibrated tau would aim for (users are told 5-15 %).
TARGET_GATE_RATE = 0.10
_NUMBER = re.compile(r"^\s*-?\d+\s*$")


def _oracle(label: chains.Rollout) -> str:
    if label.fault_step is None:
        return "Every step follows correctly from the one before it."
    return (f"The mistake is in step {label.fault_step}: its result does not follow from the "
            "numbers in that step, and every later step builds on it.")


def _fault_line(label: chains.Rollout) -> str:
    """The faulty step as the response wrote it ("Step 2: 12 * 3 = 39.")."""
    return label.text.splitlines()[label.fault_step - 1]


def _fault_operation(label: chains.Rollout) -> str:
    """The faulty step's operation as written ("12 * 3"): its operands are right, only the result
    slips."""
    return _fault_line(label).split(": ", 1)[1].split(" = ")[0]


def _quote(label: chains.Rollout) -> str:
    """The oracle, quoting the faulty step as written (wrong value included, right value not):
    what a writer asked to quote the first wrong step would give at best."""
    if label.fault_step is None:
        return _oracle(label)
    return (f'The first wrong step is "{_fault_line(label)}" Its result is wrong, and every later '
            "step builds on it.")


def _value(label: chains.Rollout) -> str:
    """The oracle with the faulty step written out right. Written as the response writes a step
    ("12 * 3 = 36"): "its result should be 36" moved the teacher far less (docs/fidelity.md)."""
    if label.fault_step is None:
        return _oracle(label)
    return (f"The mistake is in step {label.fault_step}: {_fault_operation(label)} = "
            f"{label.right_result}, and every later step builds on it.")


def _with_overrides(groups: list[dict], labels, text) -> list[dict]:
    out = []
    for group, rollouts in zip(groups, labels):
        g = copy.deepcopy(group)
        for wire, label in zip(g["rollouts"], rollouts):
            wire["reflection_override"] = text(wire, label)
        out.append(g)
    return out


def _number_tokens(labels, tokenizer) -> list[list[np.ndarray]]:
    """Per rollout, which response tokens are numbers (decoded once for every context)."""
    return [[np.array([bool(_NUMBER.match(tokenizer.decode([t]))) for t in r.token_ids[:-1]])
             for r in rollouts] for rollouts in labels]


def _tokens(answer, labels, numbers) -> dict:
    """Flat per-token arrays over all rollouts, with the rollout's verdict beside each token."""
    from amr_sd.algo.advantage import clipped_cig, remove_student_trend

    rows = {k: [] for k in ("cig", "trend", "gated", "adv", "base", "wrong", "fault", "departs",
                            "failed", "number")}
    for scored, rollouts, group_numbers in zip(answer.groups, labels, numbers):
        for out, label, number in zip(scored.rollouts, rollouts, group_numbers):
            n = len(label.token_ids) - 1  # the closing EOS is never gated; leave it out
            if out.teacher_logprobs is None:
                # No accepted reflection: no pass at all, exactly GRPO; its CIG counts as 0.
                rows["cig"].append(np.zeros(n))
                rows["trend"].append(np.zeros(n))
                rows["gated"].append(np.zeros(n, bool))
            else:
                teacher = np.asarray(out.teacher_logprobs[:n], float)
                student = np.asarray(out.student_logprobs[:n], float)
                rows["cig"].append(teacher - student)
                # cig_correction="student_trend": the same pure function the service applies.
                rows["trend"].append(remove_student_trend(clipped_cig(teacher, student)[0],
                                                          student, np.ones(n, bool)))
                rows["gated"].append(np.asarray(out.gated[:n], bool))
            rows["adv"].append(np.asarray(out.advantages[:n], float))
            rows["base"].append(np.full(n, out.base_advantage))
            rows["wrong"].append(np.asarray(label.corrupted[:n], bool))
            rows["fault"].append(np.asarray(label.fault[:n], bool))
            rows["departs"].append(np.asarray(label.departs[:n], bool))
            rows["failed"].append(np.full(n, not label.correct))
            rows["number"].append(number)
    return {k: np.concatenate(v) for k, v in rows.items()}


def _figures(t: dict, stats) -> dict:
    f, c = t["failed"], ~t["failed"]
    neg = gate_stats(t["gated"][f], t["wrong"][f])
    first = f & (t["departs"] | ~t["wrong"])  # first wrong digits against the right tokens
    positive_cig = np.clip(t["cig"][c], 0, None)
    return {
        **detection(-t["cig"][f], t["wrong"][f], t["fault"][f], t["departs"][f]),
        "student_trend": detection(-t["trend"][f], t["wrong"][f], t["fault"][f], t["departs"][f]),
        "lift_departs": gate_stats(t["gated"][first], t["departs"][first])["lift"],
        "calibrated": calibrated_gate(-t["cig"][f], t["wrong"][f], TARGET_GATE_RATE),
        "gate_precision": neg["precision"], "gate_recall": neg["recall"], "lift": neg["lift"],
        "gate_rate_failed": neg["gate_rate"],
        "amplification": amplification(t["adv"][f], t["base"][f], t["wrong"][f]),
        "acceptance_rate": stats.acceptance_rate, "reject_reasons": dict(stats.reject_reasons),
        "reflections_generated": stats.reflections_generated,
        "correct": {
            "gate_rate": float(t["gated"][c].mean()) if c.any() else None,
            "number_token_share": float(t["number"][c].mean()) if c.any() else None,
            "positive_cig_on_numbers": (float(positive_cig[t["number"][c]].sum() / positive_cig.sum())
                                        if positive_cig.sum() > 0 else None),
            "gated_on_numbers": (float(t["number"][c][t["gated"][c]].mean())
                                 if t["gated"][c].any() else None),
        },
        "max_abs_cig": float(np.abs(t["cig"]).max()),
    }


def run(out_dir: Path = OUT_DIR, problems: int = 8, dtype: str = "float32",
        model: str | None = None) -> dict:
    import httpx

    from amr_client import AMRClient
    from amr_sd.engine.models import EMBEDDED_MODEL

    model = model or EMBEDDED_MODEL
    tokenizer = corpus.load_tokenizer(model)
    groups, labels = chains.make_groups(tokenizer, n_problems=problems, seed=0)
    numbers = _number_tokens(labels, tokenizer)
    port = procs.free_port()
    # No score cache: the null row compares the student pass of two requests, which the cache would
    # answer from the first request's pass.
    server = procs.ServerProcess(
        f"amr-sd-fidelity-{model}", [sys.executable, "-m", "amr_sd.cli", "serve", "--port",
                                     str(port), "--dtype", dtype, "--model", model],
        port=port, ready_path="/readyz", log_dir=out_dir,
        env={**os.environ, **procs.NO_SCORE_CACHE, "AMR_REQUEST_TIMEOUT_S": "3600"})
    contexts = {
        "oracle": _with_overrides(groups, labels, lambda w, label: _oracle(label)),
        "quote": _with_overrides(groups, labels, lambda w, label: _quote(label)),
        "value": _with_overrides(groups, labels, lambda w, label: _value(label)),
        "feedback": _with_overrides(groups, labels, lambda w, label: w["feedback"]),
        "self": groups,
    }
    results, answers = {}, {}
    with server:
        with AMRClient(server.base_url, max_retries=0,
                       timeout=httpx.Timeout(60.0, read=3600.0)) as client:
            for name, request in contexts.items():
                t0 = time.monotonic()
                answers[name] = client.score(request, step=0, returns=RETURNS)
                tokens = _tokens(answers[name], labels, numbers)
                results[name] = {**_figures(tokens, answers[name].stats),
                                 "seconds": time.monotonic() - t0}
    # null: the same student context from two requests (oracle's and self's batches differ).
    pairs = [(ro.student_logprobs, rs.student_logprobs)
             for go, gs in zip(answers["oracle"].groups, answers["self"].groups)
             for ro, rs in zip(go.rollouts, gs.rollouts) if rs.student_logprobs is not None]
    a, b = (np.concatenate([np.asarray(p[i], float) for p in pairs]) for i in (0, 1))
    results["null"] = {"max_abs_cig": float(np.abs(a - b).max()),
                       "mean_abs_cig": float(np.abs(a - b).mean()), "tokens": int(a.size)}
    # The student's own surprise, -log p, with no reflection at all: how far the model already
    # tells the wrong numbers from the rest, the signal a teacher context would have to sharpen.
    t = _tokens(answers["oracle"], labels, numbers)  # every rollout there has a student pass
    surprise = -np.concatenate([np.asarray(r.student_logprobs[:len(label.token_ids) - 1], float)
                                for g, rollouts in zip(answers["oracle"].groups, labels)
                                for r, label in zip(g.rollouts, rollouts)])
    f = t["failed"]
    results["surprise"] = detection(surprise[f], t["wrong"][f], t["fault"][f], t["departs"][f])
    # How likely the student found the slip: near zero for a synthetic corruption, the point of
    # comparison with the policy's own slips (bench.fidelity.onpolicy).
    results["surprise"]["student_logprob_first_digit"] = float(-surprise[f & t["departs"]].mean())
    results["data"] = {"model": model, "dtype": dtype, "problems": len(groups),
                       "rollouts": sum(len(g["rollouts"]) for g in groups),
                       "wrong_tokens": int(sum(sum(r.corrupted) for rs in labels for r in rs)),
                       "response_tokens": int(sum(len(r.token_ids) for rs in labels for r in rs))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fidelity-synthetic-{model}.json").write_text(json.dumps(results, indent=2))
    return results


def _fmt(v, spec=".2f") -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else format(v, spec)


def table(results: dict) -> list[str]:
    d = results["data"]
    lines = [f"{d['model']}, {d['dtype']}: {d['problems']} problems, {d['rollouts']} rollouts, "
             f"{d['response_tokens']} response tokens, {d['wrong_tokens']} of them wrong numbers",
             "| context | AUROC wrong | AUROC slip | AUROC first wrong digit | the same three with "
             "cig_correction=student_trend | gate rate | "
             "precision | recall | lift | lift on first wrong digit | "
             f"lift at {TARGET_GATE_RATE:.0%} (τ) | mean Â/A wrong / other | acceptance | "
             "+CIG on numbers (correct) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("oracle", "quote", "value", "feedback", "self"):
        r = results[name]
        amp, cal, trend = r["amplification"], r["calibrated"], r["student_trend"]
        lines.append(f"| {name} | {_fmt(r['auroc'])} | {_fmt(r['auroc_fault'])} | "
                     f"{_fmt(r['auroc_departs'])} | {_fmt(trend['auroc'])} / "
                     f"{_fmt(trend['auroc_fault'])} / {_fmt(trend['auroc_departs'])} | "
                     f"{_fmt(r['gate_rate_failed'], '.1%')} | {_fmt(r['gate_precision'])} | "
                     f"{_fmt(r['gate_recall'])} | {_fmt(r['lift'], '.1f')} | "
                     f"{_fmt(r['lift_departs'], '.1f')} | "
                     f"{_fmt(cal['lift'], '.1f')} ({_fmt(cal['tau'])}) | "
                     f"{_fmt(amp['wrong'], '.3f')} / {_fmt(amp['other'], '.3f')} | "
                     f"{_fmt(r['acceptance_rate'], '.0%')} | "
                     f"{_fmt(r['correct']['positive_cig_on_numbers'], '.0%')} |")
    n = results["null"]
    lines.append(f"| null | max abs CIG {n['max_abs_cig']:.2e}, mean {n['mean_abs_cig']:.2e} over "
                 f"{n['tokens']} tokens | | | | | | | | | | | | |")
    sur = results["surprise"]
    lines.append(f"| student's own -log p (no reflection) | {_fmt(sur['auroc'])} | "
                 f"{_fmt(sur['auroc_fault'])} | {_fmt(sur['auroc_departs'])} | | | | | | | | | | |")
    lines.append(f"student logprob at the first wrong digit: "
                 f"{_fmt(sur['student_logprob_first_digit'])}")
    reasons = results["self"]["reject_reasons"]
    lines.append(f"self-written reject reasons: {reasons or 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8,
                        help="chains to score, 4 rollouts each (8: about 2 minutes on a 2-core "
                             "AMX Xeon, 5 on a 2-core EPYC)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--dtype", default="float32",
                        help="the server's dtype; float32 by default, since bf16 scores move by up "
                             "to 0.3-0.4 nats with the batch on a bf16 CPU (docs/design.md \"Engines\"), "
                             "the size of the effects measured here")
    parser.add_argument("--model", help="embedded name or model folder (default: the embedded "
                                         "default)")
    args = parser.parse_args(argv)
    results = run(args.out, args.problems, args.dtype, args.model)
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
