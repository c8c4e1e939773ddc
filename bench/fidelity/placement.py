"""Teacher-block alternatives, measured on the fidelity chains before any default changes.

The service has one teacher block (docs/method.md: appended to the last user message, closing "Keep
this guidance in mind while solving.") and one CIG (teacher minus the bare student). This measures
the alternatives the numbers would have to beat, on the same chains and metrics as
`bench.fidelity.synthetic`. Table 1, under the oracle and raw-feedback critiques:

  placement  append (the service's), prepend (the block before the problem, same user turn),
             system (the reflection in a system turn before the user's), assistant (the block
             opens the assistant's turn, right before the response)
  closing    guidance (the service's), exact ("Keep it in mind, and compute every step exactly.")

Table 2, the critique's wording (oracle, naming the step's operation, asking to recompute it,
stating its right value, and a content-free critique), each with CIG against the bare student
(the method's) and against the content-free critique in the same block (a contrastive baseline
that cancels whatever any block does to the teacher, whatever it says).

The alternatives are not in the service, so the passes run here, in process, on the transformers
reference engine (`amr_sd.engine.hf`, float32, the embedded model): its append/guidance row matches
`make fidelity`'s oracle row.

    python -m bench.fidelity.placement [--problems 8] [--out build/bench]   (about 3 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from amr_sd.algo.context import render_prompt, with_block
from amr_sd.algo.reflection import CRITIQUE, HINT, closing_tag, opening_tag
from bench import OUT_DIR
from bench.fidelity import chains
from bench.fidelity.metrics import calibrated_gate, detection, gate_stats
from bench.fidelity.synthetic import TARGET_GATE_RATE, _fault_operation, _oracle, _value

CLOSINGS = {"guidance": "Keep this guidance in mind while solving.",
            "exact": "Keep it in mind, and compute every step exactly."}
PLACEMENTS = ("append", "prepend", "system", "assistant")
TAU = 1.0


def teacher_messages(messages: list[dict], kind: str, reflection: str, placement: str,
                     closing: str) -> list[dict]:
    block = f"{opening_tag(kind)}{reflection}{closing_tag(kind)}\n{CLOSINGS[closing]}"
    if placement == "append":
        return with_block(messages, "\n\n" + block)
    if placement == "prepend":
        out = [dict(m) for m in messages]
        last_user = max(k for k, m in enumerate(out) if m["role"] == "user")
        out[last_user]["content"] = block + "\n\n" + out[last_user]["content"]
        return out
    if placement == "system":
        return [{"role": "system", "content": block}, *messages]
    raise ValueError(f"unknown placement {placement!r}")


def teacher_prompt(tokenizer, messages: list[dict], kind: str, reflection: str, placement: str,
                   closing: str) -> list[int]:
    """Prompt ids of the teacher context; "assistant" opens the assistant turn with the block."""
    if placement == "assistant":
        block = f"{opening_tag(kind)}{reflection}{closing_tag(kind)}\n{CLOSINGS[closing]}\n"
        return render_prompt(tokenizer, messages=messages, prefill=block)
    return render_prompt(tokenizer, messages=teacher_messages(messages, kind, reflection,
                                                              placement, closing))


# Critique wordings (correct solutions get the oracle's hint in all of them).
WORDINGS = {
    "oracle": _oracle,
    "operation": lambda r: (f"Step {r.fault_step}, {_fault_operation(r)}, has a wrong result, and "
                            "every later step builds on it."),
    "recompute": lambda r: (f"Recompute step {r.fault_step} ({_fault_operation(r)}) carefully: the "
                            "attempt got it wrong."),
    "should be": lambda r: ("The mistake is in step {}: its result should be {}, and every later "
                            "step builds on it.".format(r.fault_step, r.right_result)),
    "value": _value,
    "generic": lambda r: "The attempt has a mistake somewhere; check each step.",
}


def _figures(cig, wrong, fault, departs, failed) -> dict:
    f = failed
    neg = gate_stats(-cig[f] > TAU, wrong[f])
    first = f & (departs | ~wrong)
    return {**detection(-cig[f], wrong[f], fault[f], departs[f]),
            "gate_rate": neg["gate_rate"], "precision": neg["precision"], "lift": neg["lift"],
            "lift_departs": gate_stats(-cig[first] > TAU, departs[first])["lift"],
            "calibrated_lift": calibrated_gate(-cig[f], wrong[f], TARGET_GATE_RATE)["lift"]}


def run(out_dir: Path = OUT_DIR, problems: int = 8,
        tables: tuple[str, ...] = ("placement", "wording"), seed: int = 0) -> dict:
    from amr_sd.engine.hf import HFEngine
    from amr_sd.engine.models import EMBEDDED_MODEL

    engine = HFEngine(EMBEDDED_MODEL, dtype="float32")
    tok = engine.tokenizer
    groups, labels = chains.make_groups(tok, n_problems=problems, seed=seed)
    rollouts = [(g, r, wire) for g, rs in zip(groups, labels)
                for r, wire in zip(rs, g["rollouts"])]

    def score(prompts: list[list[int]]) -> list[np.ndarray]:
        seqs = [p + r.token_ids for p, (_, r, _) in zip(prompts, rollouts)]
        return asyncio.run(engine.score(seqs, [len(p) for p in prompts]))

    student = score([render_prompt(tok, messages=g["prompt"]["messages"]) for g, _, _ in rollouts])
    n = [len(r.token_ids) - 1 for _, r, _ in rollouts]
    wrong = np.concatenate([np.asarray(r.corrupted[:k], bool) for (_, r, _), k in zip(rollouts, n)])
    fault = np.concatenate([np.asarray(r.fault[:k], bool) for (_, r, _), k in zip(rollouts, n)])
    departs = np.concatenate([np.asarray(r.departs[:k], bool) for (_, r, _), k in zip(rollouts, n)])
    failed = np.concatenate([np.full(k, not r.correct) for (_, r, _), k in zip(rollouts, n)])

    def teacher(text, placement="append", closing="guidance") -> list[np.ndarray]:
        return score([teacher_prompt(tok, g["prompt"]["messages"], HINT if r.correct else CRITIQUE,
                                     text(r, wire), placement, closing) for g, r, wire in rollouts])

    def figures(teacher_lp, baseline_lp) -> dict:
        cig = np.concatenate([(t - s)[:k] for t, s, k in zip(teacher_lp, baseline_lp, n)])
        return _figures(cig, wrong, fault, departs, failed)

    texts = {"oracle": lambda r, wire: _oracle(r), "feedback": lambda r, wire: wire["feedback"]}
    results = []
    for context, text in texts.items() if "placement" in tables else ():
        for closing in CLOSINGS:
            for placement in PLACEMENTS:
                row = {"table": "placement", "context": context, "closing": closing,
                       "placement": placement,
                       **figures(teacher(text, placement, closing), student)}
                print(json.dumps(row), flush=True)
                results.append(row)
    wordings = {name: teacher(lambda r, wire, w=w: _oracle(r) if r.correct else w(r))
                for name, w in WORDINGS.items()} if "wording" in tables else {}
    for name, teacher_lp in wordings.items():
        for baseline in ("student", "generic"):
            if name == "generic" and baseline == "generic":
                continue  # identically 0
            row = {"table": "wording", "context": name, "baseline": baseline,
                   **figures(teacher_lp, student if baseline == "student" else wordings["generic"])}
            print(json.dumps(row), flush=True)
            results.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fidelity_placement.json").write_text(
        json.dumps({"problems": problems, "seed": seed, "rows": results}, indent=2))
    return {"rows": results}


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else "inf" if v == float("inf") else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--tables", nargs="+", choices=("placement", "wording"),
                        default=["placement", "wording"])
    parser.add_argument("--seed", type=int, default=0,
                        help="the chains' seed (0: make fidelity's chains; others: held out)")
    args = parser.parse_args(argv)
    rows = run(args.out, args.problems, tuple(args.tables), args.seed)["rows"]
    cells = ("| {auroc} | {auroc_fault} | {auroc_departs} | {gate_rate} | {precision} | {lift} | "
             "{lift_departs} | {calibrated_lift} |")
    head = ("| AUROC wrong | AUROC slip | AUROC first wrong digit | gate rate | precision | lift "
            f"| lift on first wrong digit | lift at {TARGET_GATE_RATE:.0%} |")

    def fmt(r):
        return cells.format(**{k: _fmt(r[k], ".1%" if k == "gate_rate" else
                                       ".1f" if "lift" in k else ".2f")
                               for k in ("auroc", "auroc_fault", "auroc_departs", "gate_rate",
                                         "precision", "lift", "lift_departs", "calibrated_lift")})

    if "placement" in args.tables:
        print("| context | closing | placement " + head + "\n|---|---|---" + "|---" * 8 + "|")
        for r in rows:
            if r["table"] == "placement":
                print(f"| {r['context']} | {r['closing']} | {r['placement']} " + fmt(r))
    if "wording" in args.tables:
        print("\n| critique | CIG against " + head + "\n|---|---" + "|---" * 8 + "|")
        for r in rows:
            if r["table"] == "wording":
                print(f"| {r['context']} | {r['baseline']} " + fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
