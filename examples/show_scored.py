"""Show why tokens got their credit: one successful and one failed rollout from `amr-sd score`.

    python examples/show_scored.py build/scored.jsonl [--in examples/data/groups.jsonl]

Each response token is printed with its colour set by Â/A: green where a hint raised the credit,
red where a critique added blame, plain where the advantage is the GRPO one. The reflection the
teacher saw is printed above the tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model


def colour(piece: str, ratio: float, positive: bool, enabled: bool) -> str:
    if not enabled or ratio <= 1.0:
        return piece
    # Green for hint credit, red for critique blame; darker shades for a bigger ratio.
    shades = (22, 28, 34, 40, 46) if positive else (52, 88, 124, 160, 196)
    level = min(4, int((ratio - 1.0) * 10))
    return f"\x1b[48;5;{shades[level]}m{piece}\x1b[0m"


def show(label: str, rollout_in: dict, rollout_out: dict, tok, enabled: bool) -> None:
    base = rollout_out["base_advantage"]
    reflection = rollout_out.get("reflection") or {}
    print(f"--- {label}: reward {rollout_in['reward']}, base advantage {base:+.3f}")
    print(f"    {reflection.get('kind')}: {reflection.get('text')!r}")
    pieces = []
    for token, adv in zip(rollout_in["token_ids"], rollout_out["advantages"]):
        piece = tok.decode([token])
        ratio = adv / base if base else 1.0
        pieces.append(colour(piece, ratio, base > 0, enabled) + (f"[{ratio:.3f}x]" if ratio > 1.0 else ""))
    print("    " + "".join(pieces).replace("\n", " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scored", type=Path)
    parser.add_argument("--in", dest="input", type=Path, default=Path("examples/data/groups.jsonl"))
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    enabled = sys.stdout.isatty()
    shown = set()
    for line_in, line_out in zip(args.input.open(), args.scored.open()):
        group_in, group_out = json.loads(line_in), json.loads(line_out)
        for r_in, r_out in zip(group_in["rollouts"], group_out["rollouts"]):
            kind = "hint" if r_out["base_advantage"] > 0 else "critique"
            gated = any(a != r_out["base_advantage"] for a in r_out["advantages"])
            if kind not in shown and gated:
                show("successful rollout" if kind == "hint" else "failed rollout", r_in, r_out, tok, enabled)
                shown.add(kind)
    if not shown:
        print("no rollout had a gated token at this step")


if __name__ == "__main__":
    main()
