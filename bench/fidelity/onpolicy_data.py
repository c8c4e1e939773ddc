"""A model's own arithmetic solutions, checked step by step: the on-policy fidelity data.

`bench.fidelity.chains` writes a slip into a correct solution by hand, so its faults are the ones
we chose and its text is the one we wrote. Here the model samples its own solutions to chains hard
enough to get wrong (five operations, two-digit operands, products by up to 19), and a checker reads
each sample back to find where it went wrong. The credit then has to land on a fault the model
made itself, in text the model wrote itself, which is the case training sees.

The checker judges each step against its own written operands, not against the right values: a
chain that carries a wrong value forward and computes every later step correctly from it has one
erroneous step, the first (ProcessBench's label). At that step it tells an arithmetic slip (the
operands are right, the result is not) from a wrong operand (a value copied wrong from the line
before, or an operation or operand that is not the problem's), and records the exact characters
of the wrong number, so each response token can be labelled by whether it holds them.

Pure: no engine, no model. Problems are generated from a seed, offline.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator

import numpy as np

from bench.fidelity import chains

OPS = ("+", "-", "*")
N_STEPS = 5
FORMAT_LINE = 'Write each step on its own line as "Step k: a op b = c.", then "The answer is N."'

# Models write the operation and the sign the typographic way too; both normalise to ASCII.
_OP_ALIASES = {"×": "*", "x": "*", "−": "-"}
_NUM = r"[-−]?\d+"
# A step is a line's equation "a op b = c" (its last one: the model often writes "Step 1: Compute
# (34 - 16) = 18", "Step 2:" on a line of its own with the equation below it, or "(18 * 5) - 26 =
# 90 - 26 = 64"). Its own operands are what the checker judges. A number that goes on ("6,09",
# "6.5") is not one the checker can read.
_EQUATION = re.compile(rf"({_NUM})\s*([-+*×x−])\s*({_NUM})\s*\)?\s*=\s*({_NUM})(?![,.]?\d)")
_ANSWER = re.compile(rf"The answer is\s*:?\s*({_NUM})", re.IGNORECASE)

Span = tuple[int, int]  # [start, end) character offsets in the response text


def _apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def _int(written: str) -> int:
    return int(written.replace("−", "-"))


def make_problem(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """A start value and five operations; two-digit sums and products by up to 19 make the
    numbers long enough for a small model to slip on."""
    start = rng.randint(10, 60)
    ops = []
    for _ in range(N_STEPS):
        op = rng.choice(OPS)
        ops.append((op, rng.randint(3, 19) if op == "*" else rng.randint(11, 99)))
    return start, ops


def question(start: int, ops: list[tuple[str, int]]) -> str:
    """The synthetic bench's question, its last sentence replaced by the exact format the
    checker reads."""
    asked = chains.question(start, ops)
    return asked[:asked.index(" Write each step")] + f"\n{FORMAT_LINE}"


def truth(start: int, ops: list[tuple[str, int]]) -> list[int]:
    """The right result after each step."""
    out, value = [], start
    for op, right in ops:
        value = _apply(value, op, right)
        out.append(value)
    return out


def solution(start: int, ops: list[tuple[str, int]]) -> str:
    """The right solution, written the way the question asks."""
    lines, value = [], start
    for k, ((op, right), result) in enumerate(zip(ops, truth(start, ops)), start=1):
        lines.append(f"Step {k}: {value} {op} {right} = {result}.")
        value = result
    return "\n".join(lines + [f"The answer is {value}."])


@dataclasses.dataclass(frozen=True)
class WrittenStep:
    """One parsed step line: its values as written (operation normalised) and where they are."""

    number: int  # the k the line says
    left: int
    op: str
    right: int
    result: int
    line: Span  # the line without surrounding whitespace
    left_span: Span
    op_span: Span
    right_span: Span
    result_span: Span


@dataclasses.dataclass
class Check:
    """The checker's verdict on one response, and where in its text the fault is."""

    verdict: str  # "correct", "slip", "operand", "answer" or "format"
    first_wrong_step: int | None  # 1-based; -1 when every step is right; None for format
    answer: int | None  # the final answer line's number; None when there is none
    wrong_span: Span | None  # the wrong number at the first wrong step (for "answer": the answer)
    right_number: int | None  # what that number should have been (None for a wrong operation)
    departs_at: int | None  # first character of the wrong number that a right one would not have
    step_spans: list[Span]  # each step line, in order
    answer_span: Span | None  # the final answer line
    steps: list[WrittenStep] = dataclasses.field(default_factory=list)
    # Which part of the first wrong step is wrong: "left", "op", "right", "result", or "answer".
    wrong_part: str | None = None
    right_text: str | None = None  # what should stand at wrong_span (the operation, for "op")
    answer_number_span: Span | None = None


def _lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, stripped line) of each line, offsets into `text`."""
    pos = 0
    for raw in text.split("\n"):
        lead = len(raw) - len(raw.lstrip())
        stripped = raw.strip()
        yield pos + lead, pos + lead + len(stripped), stripped
        pos += len(raw) + 1


def _parse_step(line: str, at: int, number: int) -> WrittenStep | None:
    """The step a line states (its last "a op b = c"), or None if it states none."""
    m = None
    for m in _EQUATION.finditer(line):
        pass
    if m is None:
        return None

    def span(group: int) -> Span:
        return at + m.start(group), at + m.end(group)

    return WrittenStep(number, _int(m[1]), _OP_ALIASES.get(m[2], m[2]), _int(m[3]), _int(m[4]),
                       (at, at + len(line)), span(1), span(2), span(3), span(4))


def _wrong_part(step: WrittenStep, left: int, op: str, right: int) -> str | None:
    """Which part of `step` is wrong, given the left operand it should carry and the problem's
    operation; None when the step is right."""
    # "3 * 12" for "12 * 3" is a right step: the question's "a op b" is a format, not the math.
    swapped = op in "+*" and step.op == op and (step.left, step.right) == (right, left)
    if not swapped:
        # In reading order: the first wrong part is where the text leaves a right solution.
        if step.left != left:
            return "left"
        if step.op != op:
            return "op"
        if step.right != right:
            return "right"
    if step.result != _apply(left, op, right):
        return "result"
    return None


def _common(a: str, b: str) -> int:
    """Length of the common prefix of `a` and `b`."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _departs(written: str, right: str) -> int:
    """Offset in `written` of its first character that `right` does not have there: "305" for
    "315" departs at the "0", "31" for "315" right after the "1"."""
    return _common(written.replace("−", "-"), right)


def check(text: str, start: int, ops: list[tuple[str, int]]) -> Check:
    """Read each line's equation "a op b = c" as a step and "The answer is N." as the answer,
    and judge them.

    Lines without an equation (a preamble, a "Step 2:" heading, a remark) are ignored, and so is
    the numbering: layout is not arithmetic. Anything but one equation per operation is a format
    failure. The first wrong step is the first whose left operand is not the previous written
    result (the start for step 1), whose operation or right operand is not the problem's, or
    whose result is not its own operands' (a commuted "+" or "*" is right). Its first wrong part
    in reading order is the wrong number.
    """
    steps, answer, answer_span, answer_number_span = [], None, None, None
    for a, b, line in _lines(text):
        if m := _ANSWER.search(line):  # the last one counts: a model may restate it
            answer, answer_span = _int(m[1]), (a, b)
            answer_number_span = (a + m.start(1), a + m.end(1))
        elif step := _parse_step(line, a, len(steps) + 1):
            steps.append(step)
    out = Check("format", None, answer, None, None, None, [s.line for s in steps], answer_span,
                steps, answer_number_span=answer_number_span)
    if len(steps) != len(ops):
        return out

    def fault(part: str, span: Span, right_text: str, right_number: int | None) -> Check:
        written = text[span[0]:span[1]]
        return dataclasses.replace(out, wrong_part=part, wrong_span=span, right_text=right_text,
                                   right_number=right_number,
                                   departs_at=span[0] + _departs(written, right_text))

    left = start
    for k, (step, (op, right)) in enumerate(zip(steps, ops), start=1):
        part = _wrong_part(step, left, op, right)
        if part is not None:
            out = dataclasses.replace(out, first_wrong_step=k,
                                      verdict="slip" if part == "result" else "operand")
            span = {"left": step.left_span, "op": step.op_span, "right": step.right_span,
                    "result": step.result_span}[part]
            should = {"left": left, "op": None, "right": right,
                      "result": _apply(left, op, right)}[part]
            return fault(part, span, op if should is None else str(should), should)
        left = step.result  # right here, so the next step's left operand must be this
    out = dataclasses.replace(out, first_wrong_step=-1)
    if answer == left:
        return dataclasses.replace(out, verdict="correct")
    out = dataclasses.replace(out, verdict="answer")
    return out if answer_number_span is None else fault("answer", answer_number_span, str(left),
                                                       left)


@dataclasses.dataclass
class Labels:
    """Per-token labels of one response (numpy arrays of len(token_ids))."""

    offsets: np.ndarray  # (n, 2) [start, end) characters of each token; special tokens empty
    first_wrong_digit: np.ndarray  # the one token holding the character at departs_at
    slip_number: np.ndarray  # the tokens of the wrong number
    after_slip: np.ndarray  # the wrong number's tokens and every token after it
    step: np.ndarray  # the 1-based step line a token overlaps, 0 outside any step line
    n_steps: int


def char_offsets(tokenizer, token_ids: list[int], text: str) -> np.ndarray:
    """[start, end) characters of each token, read off incremental decoding: the decoding of the
    response's own ids, so the labels fit the tokens the model sampled (a re-tokenisation of the
    text could split it differently)."""
    full = tokenizer.decode(token_ids, skip_special_tokens=True)
    if full != text:
        raise ValueError(f"the token ids decode to {full!r}, not to the text {text!r}")
    ends = np.zeros(len(token_ids), dtype=int)
    for i in range(len(token_ids)):
        prefix = tokenizer.decode(token_ids[:i + 1], skip_special_tokens=True)
        # A token ending inside a multi-byte character decodes to U+FFFD: that character
        # belongs to the token that completes it.
        ends[i] = _common(prefix, text)
    ends = np.maximum.accumulate(ends) if len(ends) else ends
    starts = np.r_[0, ends[:-1]] if len(ends) else ends
    return np.stack([starts, ends], axis=1).reshape(-1, 2)


def token_labels(tokenizer, token_ids: list[int], text: str, check: Check) -> Labels:
    """Label each token of a response by where the checker put its fault."""
    offsets = char_offsets(tokenizer, token_ids, text)
    starts, ends = offsets[:, 0], offsets[:, 1]
    special = np.isin(np.asarray(token_ids, dtype=np.int64),
                      np.asarray(list(tokenizer.all_special_ids), dtype=np.int64))
    real = ~special & (ends > starts)

    def overlaps(span: Span | None) -> np.ndarray:
        if span is None:
            return np.zeros(len(token_ids), dtype=bool)
        return real & (starts < span[1]) & (span[0] < ends)

    at = check.departs_at
    slip_number = overlaps(check.wrong_span)
    after = (np.zeros(len(token_ids), dtype=bool) if check.wrong_span is None else
             real & ((starts >= check.wrong_span[0]) | slip_number))
    step = np.zeros(len(token_ids), dtype=int)
    for k, span in reversed(list(enumerate(check.step_spans, start=1))):
        step[overlaps(span)] = k  # reversed: a token spanning two lines counts for the first
    return Labels(offsets, overlaps(None if at is None else (at, at + 1)), slip_number, after,
                  step, len(check.step_spans))
