"""Where the teacher's reflection goes, and how the block closes, measured on the fidelity chains.

The service has one teacher block (METHOD.md: appended to the last user message, closing "Keep
this guidance in mind while solving."). This measures the alternatives the numbers would have to
beat before that default changes, on the same chains and metrics as `bench.fidelity`:

  placement  append (the service's), prepend (the block before the problem, same user turn),
             system (the reflection in a system turn before the user's)
  closing    guidance (the service's), exact ("Keep it in mind, and compute every step exactly.")

under the oracle and raw-feedback critiques. The alternatives are not in the service, so the
passes run here, in process, on the transformers reference engine (`amr_sd.engine.hf`, float32,
the embedded model): its append/guidance row matches `make fidelity`'s oracle row.

    python -m bench.fidelity_placement [--problems 8] [--out build/bench]   (about 6 minutes)
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
from bench import fidelity_data
from bench.fidelity import OUT_DIR, TARGET_GATE_RATE, _oracle
from bench.fidelity_metrics import calibrated_gate, detection, gate_stats

CLOSINGS = {"guidance": "Keep this guidance in mind while solving.",
            "exact": "Keep it in mind, and compute every step exactly."}
PLACEMENTS = ("append", "prepend", "system")
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


def _figures(cig, wrong, fault, failed) -> dict:
    f = failed
    neg = gate_stats(-cig[f] > TAU, wrong[f])
    return {**detection(-cig[f], wrong[f], fault[f]),
            "gate_rate": neg["gate_rate"], "precision": neg["precision"], "lift": neg["lift"],
            "calibrated_lift": calibrated_gate(-cig[f], wrong[f], TARGET_GATE_RATE)["lift"]}


def run(out_dir: Path = OUT_DIR, problems: int = 8) -> dict:
    from amr_sd.engine.hf import HFEngine
    from amr_sd.engine.models import EMBEDDED_MODEL

    engine = HFEngine(EMBEDDED_MODEL, dtype="float32")
    tok = engine.tokenizer
    groups, labels = fidelity_data.make_groups(tok, n_problems=problems, seed=0)
    rollouts = [(g, r, wire) for g, rs in zip(groups, labels)
                for r, wire in zip(rs, g["rollouts"])]

    def score(prompts: list[list[int]]) -> list[np.ndarray]:
        seqs = [p + r.token_ids for p, (_, r, _) in zip(prompts, rollouts)]
        return asyncio.run(engine.score(seqs, [len(p) for p in prompts]))

    student = score([render_prompt(tok, messages=g["prompt"]["messages"]) for g, _, _ in rollouts])
    n = [len(r.token_ids) - 1 for _, r, _ in rollouts]
    wrong = np.concatenate([np.asarray(r.corrupted[:k], bool) for (_, r, _), k in zip(rollouts, n)])
    fault = np.concatenate([np.asarray(r.fault[:k], bool) for (_, r, _), k in zip(rollouts, n)])
    failed = np.concatenate([np.full(k, not r.correct) for (_, r, _), k in zip(rollouts, n)])
    texts = {"oracle": lambda r, wire: _oracle(r), "feedback": lambda r, wire: wire["feedback"]}
    results = []
    for context, text in texts.items():
        for closing in CLOSINGS:
            for placement in PLACEMENTS:
                teacher = score([render_prompt(tok, messages=teacher_messages(
                    g["prompt"]["messages"], HINT if r.correct else CRITIQUE, text(r, wire),
                    placement, closing)) for g, r, wire in rollouts])
                cig = np.concatenate([(t - s)[:k] for t, s, k in zip(teacher, student, n)])
                row = {"context": context, "closing": closing, "placement": placement,
                       **_figures(cig, wrong, fault, failed)}
                print(json.dumps(row), flush=True)
                results.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fidelity_placement.json").write_text(json.dumps(results, indent=2))
    return {"rows": results}


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else "inf" if v == float("inf") else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    rows = run(args.out, args.problems)["rows"]
    print("| context | closing | placement | AUROC wrong | AUROC slip | gate rate | precision | "
          f"lift | lift at {TARGET_GATE_RATE:.0%} |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['closing']} | {r['placement']} | {_fmt(r['auroc'])} | "
              f"{_fmt(r['auroc_fault'])} | {_fmt(r['gate_rate'], '.1%')} | {_fmt(r['precision'])} | "
              f"{_fmt(r['lift'], '.1f')} | {_fmt(r['calibrated_lift'], '.1f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
