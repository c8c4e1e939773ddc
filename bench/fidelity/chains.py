"""Arithmetic chains with a known fault: the data of the credit-fidelity benchmark.

Each problem is a chain of operations on a start value. Its solution writes one step per line
("Step 2: 12 * 3 = 36."). A corrupted solution makes one step's result wrong by a nonzero offset
and then computes every later step correctly from that wrong value, so the error propagates to
the later operands, results and the final answer, the way a real slip does. Every number whose
value differs from the correct solution's number at the same place is "wrong"; the first of them
is the fault. The response is tokenised once and each token is labelled by whether its characters
overlap a wrong number, so the labels are exactly the tokens of the wrong numbers. A second,
narrower label marks the one token where the attempt's text first departs from the correct
solution's (SmolLM2 writes one digit per token, so in "39" for 36 the "3" is still what a right
solution writes there; the "9" is the first token no teacher could have expected).

Generated from a seed, offline: no dataset download.
"""

from __future__ import annotations

import dataclasses
import random

OPS = ("+", "-", "*")


@dataclasses.dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int


@dataclasses.dataclass
class Solution:
    """A worked solution as text, with the character spans of its wrong numbers."""

    text: str
    answer: int
    wrong_spans: list[tuple[int, int]]  # [start, end) character offsets
    fault_step: int | None  # 1-based; None for a correct solution
    departs_at: int | None = None  # first character that differs from the correct solution's text
    right_result: int | None = None  # what the faulty step should have written


@dataclasses.dataclass
class Rollout:
    """A solution as the service sees it: response token ids, with a label per token."""

    token_ids: list[int]
    text: str
    correct: bool
    corrupted: list[bool]  # per token: it overlaps a wrong number
    fault: list[bool]  # per token: it overlaps the first wrong number (the slip itself)
    fault_step: int | None
    departs: list[bool]  # per token: it holds the first character that differs from the right text
    right_result: int | None  # the faulty step's right value: never the final answer (the
    # fault is never the last step), so a critique may state it without leaking the answer


def _apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def make_problem(rng: random.Random, n_steps: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and `n_steps` operations; multiplications stay small so numbers stay short."""
    start = rng.randint(2, 20)
    ops = []
    for _ in range(n_steps):
        op = rng.choice(OPS)
        ops.append((op, rng.randint(2, 5) if op == "*" else rng.randint(2, 30)))
    return start, ops


def question(start: int, ops: list[tuple[str, int]]) -> str:
    expression = str(start)
    for op, value in ops:
        expression = f"({expression} {op} {value})"
    return (f"Compute {expression[1:-1] if ops else expression}, one operation at a time from the "
            "innermost parentheses. Write each step, then the final answer.")


def steps(start: int, ops: list[tuple[str, int]], fault_step: int | None = None,
          offset: int = 0) -> list[Step]:
    """The chain's steps; step `fault_step` (1-based) gets `offset` added to its result."""
    out, value = [], start
    for i, (op, right) in enumerate(ops, start=1):
        result = _apply(value, op, right) + (offset if i == fault_step else 0)
        out.append(Step(value, op, right, result))
        value = result
    return out


def write(chain: list[Step], truth: list[Step]) -> Solution:
    """The solution text; a number is wrong where it differs from `truth` at the same place."""
    parts: list[tuple[str, bool]] = []  # (text, is a wrong number)
    for i, (step, good) in enumerate(zip(chain, truth), start=1):
        parts += [(f"Step {i}: ", False), (str(step.left), step.left != good.left),
                  (f" {step.op} {step.right} = ", False),
                  (str(step.result), step.result != good.result), (".\n", False)]
    answer, good_answer = chain[-1].result, truth[-1].result
    parts += [("The answer is ", False), (str(answer), answer != good_answer), (".", False)]
    text, spans, pos = "", [], 0
    for piece, wrong in parts:
        if wrong:
            spans.append((pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    fault = next((i for i, (s, g) in enumerate(zip(chain, truth), start=1) if s.result != g.result),
                 None)
    if fault is None:
        return Solution(text, answer, spans, None)
    right_text = write(truth, truth).text
    departs_at = next((i for i, (a, b) in enumerate(zip(text, right_text)) if a != b),
                      min(len(text), len(right_text)))
    return Solution(text, answer, spans, fault, departs_at, truth[fault - 1].result)


def tokenize(tokenizer, solution: Solution) -> Rollout:
    """Token ids of the response (ending with EOS, as a sampled response does) and its labels."""
    enc = tokenizer(solution.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])

    def overlaps(spans: list[tuple[int, int]]) -> list[bool]:
        return [any(a < e and s < b for s, e in spans) for a, b in offsets]

    corrupted = overlaps(solution.wrong_spans)
    fault = overlaps(solution.wrong_spans[:1])
    at = solution.departs_at
    departs = overlaps([] if at is None else [(at, at + 1)])
    eos = tokenizer.eos_token_id
    return Rollout(ids + [eos], solution.text, not solution.wrong_spans, corrupted + [False],
                   fault + [False], solution.fault_step, departs + [False], solution.right_result)


def make_groups(tokenizer, n_problems: int, n_steps: int = 4, corrupted_per_group: int = 2,
                correct_per_group: int = 2, seed: int = 0) -> tuple[list[dict], list[list[Rollout]]]:
    """Score-request groups (the wire schema) and, beside them, each rollout's labels.

    Each group holds `correct_per_group` copies of the correct solution and
    `corrupted_per_group` solutions corrupted at different steps (never the last: an error must
    have later numbers to propagate to, so early and late slips both occur).
    """
    rng = random.Random(seed)
    groups, labels = [], []
    for _ in range(n_problems):
        start, ops = make_problem(rng, n_steps)
        truth = steps(start, ops)
        rollouts = [tokenize(tokenizer, write(truth, truth)) for _ in range(correct_per_group)]
        fault_steps = rng.sample(range(1, n_steps), k=min(corrupted_per_group, n_steps - 1))
        for k in fault_steps:
            offset = rng.choice([d for d in range(-9, 10) if d != 0])
            rollouts.append(tokenize(tokenizer, write(steps(start, ops, k, offset), truth)))
        answer = truth[-1].result
        groups.append({
            "prompt": {"messages": [{"role": "user", "content": question(start, ops)}]},
            "reference": {"answer": str(answer)},
            "rollouts": [{"token_ids": r.token_ids, "text": r.text, "reward": float(r.correct),
                          "correct": r.correct,
                          # A verifier's verdict, without the answer (it would leak).
                          "feedback": ("The final answer is correct." if r.correct else
                                       "The final answer is wrong.")}
                         for r in rollouts],
        })
        labels.append(rollouts)
    return groups, labels
