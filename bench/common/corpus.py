"""Token sequences and score requests built from real text, shared by every part.

Random token ids would make attention and the softmax see nothing like real traffic, so every
benchmark scores windows of the embedded model's own example rollouts (examples/data), tokenised
with the tokenizer under test. Windows start at different offsets so no two sequences are equal.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "data" / "groups.jsonl"
FALLBACK_TEXT = ROOT / "README.md"

# The prompt every synthetic group asks; its answer is irrelevant to speed.
PROMPT = {"messages": [{"role": "user", "content": "What is 17 + 25? Think step by step."}]}
REFLECTION = "Check each addition step before stating the final sum."


def _texts() -> list[str]:
    if EXAMPLES.exists():
        rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
        texts = [r["text"] for g in rows for r in g["rollouts"] if r.get("text")]
        if texts:
            return texts
    return [FALLBACK_TEXT.read_text()]


@functools.lru_cache(maxsize=4)
def _stream(tokenizer) -> tuple[int, ...]:
    return tuple(tokenizer.encode("\n\n".join(_texts()), add_special_tokens=False))


def window(tokenizer, length: int, offset: int) -> list[int]:
    """`length` ids of the text stream from `offset`, wrapping around when the text is short."""
    stream = _stream(tokenizer)
    return [stream[(offset + i) % len(stream)] for i in range(length)]


def sequences(tokenizer, n: int, length: int) -> list[list[int]]:
    """n distinct sequences of `length` ids; an odd stride keeps them from lining up."""
    return [window(tokenizer, length, offset=i * 997) for i in range(n)]


def generation_prompts(tokenizer, n: int) -> list[list[int]]:
    """n real chat prompts that ask for a long answer, rendered as the service renders them.

    The example prompts alone ask for a bare number, so greedy decoding would stop after a few
    tokens and measure start-up overhead instead of decoding.
    """
    rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()] \
        if EXAMPLES.exists() else []
    problems = [g["prompt"]["messages"][-1]["content"] for g in rows
                if g.get("prompt", {}).get("messages")] or [PROMPT["messages"][0]["content"]]
    prompts = []
    for i in range(n):
        ask = f"Explain in detail, step by step, how to solve this problem: {problems[i % len(problems)]}"
        text = tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                             add_generation_prompt=True)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    return prompts


def group(tokenizer, size: int, response_len: int, *, offset: int = 0,
          student_logprobs: float | None = None) -> dict:
    """One synthetic group for `POST /v1/score` that needs no reflection writing.

    Rewards alternate so the group is mixed (a uniform group short-circuits to GRPO with no
    engine work), and `reflection_override` replaces generation: only scoring runs. With
    `student_logprobs` every token carries that value, so the service skips the student pass.
    """
    rollouts = []
    for i in range(size):
        ids = window(tokenizer, response_len, offset=offset + i * 613)
        rollout = {"token_ids": ids, "reward": 1.0 if i % 2 == 0 else 0.0,
                   "reflection_override": REFLECTION}
        if student_logprobs is not None:
            rollout["student_logprobs"] = [student_logprobs] * response_len
        rollouts.append(rollout)
    return {"prompt": PROMPT, "rollouts": rollouts}


def groups(tokenizer, n: int, size: int, response_len: int, **kwargs) -> list[dict]:
    return [group(tokenizer, size, response_len, offset=g * 7919, **kwargs) for g in range(n)]


def model() -> str:
    """The model every part measures: `python -m bench --model` (which sets AMR_BENCH_MODEL, so
    the engines and servers a part starts in other processes see it too); the embedded default
    otherwise."""
    from amr_sd.engine.models import EMBEDDED_MODEL

    return os.environ.get("AMR_BENCH_MODEL", EMBEDDED_MODEL)


def example_groups() -> list[dict]:
    """The example groups for the measured model: the ones it sampled itself where they are
    shipped (examples/data/groups-MODEL.jsonl); otherwise the embedded default's, whose token ids
    are that model's, re-tokenised from their text for any other model."""
    from amr_sd.engine.models import EMBEDDED_MODEL

    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    own = EXAMPLES.with_name(f"groups-{model()}.jsonl")
    if model() == EMBEDDED_MODEL or not own.exists():
        rows = read(EXAMPLES)
        if model() != EMBEDDED_MODEL:
            tok = load_tokenizer()
            for g in rows:
                g["prompt"].pop("prompt_token_ids", None)
                for r in g["rollouts"]:
                    r["token_ids"] = tok.encode(r["text"], add_special_tokens=False)
        return rows
    return read(own)


def load_tokenizer(name: str | None = None):
    """A model's tokenizer (the measured model's unless named), without starting an engine."""
    from transformers import AutoTokenizer

    from amr_sd.engine.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(name or model()))
