"""Reflection templates and the leak/quality filter (docs/method.md steps 3-5).

Raw privileged context (a reference solution, an accepted peer, verifier feedback) over-conditions
the teacher and leaks the answer, so AMR-SD puts a reflection bottleneck in between: the policy
writes a short Socratic ``<hint>`` or ``<critique>`` from those signals, and only that text, after
this module's filter has accepted it, reaches the teacher (guarantee G5). This module owns the
versioned writer templates, the parsing of the writer's output, the teacher context block and the
reject reasons; it is pure (no engine, network, clock or logging). Pre-filling the assistant turn
with the opening tag and stopping generation at the closing tag is the caller's job; the caller
re-attaches both tags before calling :func:`parse_reflection`.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

# Part of the reflection cache key: add a version whenever any text below that the writer or the
# teacher sees changes (templates, optional sections, teacher block); a cached text of one
# version is never served for another. ScoringConfig.reflection_template picks one per request.
TEMPLATE_VERSIONS = ("v1", "v2")
# Also in the cache key: bump it whenever the filter's checks change, so a record the old filter
# accepted is judged again. 3: the copy check counts words, not tokens. 4: REPEATS_MISTAKE.
FILTER_VERSION = "4"

HINT = "hint"
CRITIQUE = "critique"
KINDS = (HINT, CRITIQUE)

# docs/method.md "Reflection templates", verbatim. {reference_section} is the opt-in reference
# (allow_reference_in_writer); it sits just before the instructions so they stay last.
HINT_TEMPLATE = """\
You solved the following problem correctly.
Problem:
{problem}
Your solution:
{rollout_text}
{reference_section}\
Write one short Socratic hint (at most 3 sentences) that would steer a student toward the key idea
that made this solution work. Phrase it as guidance or a question. Do NOT state the final answer,
any final numeric value, or a complete derivation. Output only: <hint>...</hint>"""

# The bracketed parts of docs/method.md's critique template become {feedback_section} and
# {peer_section}: present only when the caller has the signal.
CRITIQUE_TEMPLATE = """\
The following attempt was checked by a verifier and is INCORRECT.
Problem:
{problem}
Incorrect attempt:
{rollout_text}
{feedback_section}\
{peer_section}\
{reference_section}\
Identify the first step where the attempt goes wrong and explain, in at most 3 sentences, what kind
of mistake it is and what to check instead. Do NOT state the final answer or any final numeric
value, and do not copy the accepted attempt. Output only: <critique>...</critique>"""

# v2 (ours, docs/method.md "Reflection templates"): on the policy's own mistakes a critique that
# only names the faulty step left the teacher at chance (the same model cannot recompute the step
# better than the student that slipped), and one that writes the step out right put the credit on
# it (docs/fidelity.md). So v2 asks for that step written out as the accepted attempt computes it,
# and shows the writer where the two attempts first differ. The hint, likewise, shows the step
# the solution could most easily have got wrong, written as the solution writes it.
HINT_TEMPLATE_V2 = """\
You solved the following problem correctly.
Problem:
{problem}
Your solution:
{rollout_text}
{reference_section}\
Write one short hint (at most 2 sentences) for a student solving this problem: name the step \
that is easiest to get wrong and write that one step out exactly as your solution writes it. Do \
NOT state the final answer and do not copy any other step. Output only: <hint>...</hint>"""

CRITIQUE_TEMPLATE_V2 = """\
The following attempt was checked by a verifier and is INCORRECT.
Problem:
{problem}
Incorrect attempt:
{rollout_text}
{feedback_section}\
{peer_section}\
{difference_section}\
{reference_section}\
Find the first step where the incorrect attempt goes wrong, and write that one step out \
correctly, as the accepted attempt computes it, in the form "Step N should be: <the corrected \
step>". Do NOT repeat the incorrect version, do NOT state the final answer or use the word \
"answer", and do not copy any other step. Output only: <critique>...</critique>"""

_DIFFERENCE_SECTION = ("Where the two attempts first differ:\n"
                       "The incorrect attempt writes: {attempt_line}\n"
                       "The accepted attempt writes: {peer_line}\n")
_TEMPLATES = {"v1": {HINT: HINT_TEMPLATE, CRITIQUE: CRITIQUE_TEMPLATE},
              "v2": {HINT: HINT_TEMPLATE_V2, CRITIQUE: CRITIQUE_TEMPLATE_V2}}

_FEEDBACK_SECTION = "Verifier feedback:\n{feedback}\n"
_PEER_SECTION = "An attempt that the verifier accepted:\n{peer_text}\n"
_REFERENCE_SECTION = "Reference solution:\n{reference_solution}\n"

# docs/method.md "Teacher context block".
_TEACHER_BLOCK = "\n\n{opening}{reflection}{closing}\nKeep this guidance in mind while solving."


class RejectReason(str, enum.Enum):
    """Why a reflection was refused; recorded per attempt (docs/method.md step 5)."""

    MISSING_TAG = "missing_tag"
    UNTERMINATED = "unterminated"
    EMPTY = "empty"
    TOO_LONG = "too_long"
    ANSWER_PHRASE = "answer_phrase"
    CONTAINS_ANSWER = "contains_answer"
    NGRAM_OVERLAP = "ngram_overlap"
    STRAY_TAG = "stray_tag"
    META_TEXT = "meta_text"
    REPETITION = "repetition"
    REPEATS_MISTAKE = "repeats_mistake"


# Lower-cased, whitespace-collapsed phrases that announce an answer rather than guide toward it.
# "answer is" also catches "the correct answer is", which the embedded model writes often.
_ANSWER_PHRASES = ("\\boxed", "answer is", "final answer", "answer:")

# (ours) Markup left inside a reflection ("</" of a closing tag the writer broke, "<hint>" again,
# "<think>"): the writer lost the format, and the teacher would read the markup as guidance.
_TAG_FRAGMENT = re.compile(
    r"</|<\s*/?\s*(?:hint|critique|think|answer|solution|reflection)\b|<[A-Za-z][\w-]*>",
    re.IGNORECASE)
# (ours) Text about the reflection instead of the problem ("This hint is designed to encourage a
# student ..."): it tells the teacher nothing about the solution.
_META_TEXT = re.compile(
    r"\b(?:this|these|the above|the following|my|that)\s+(?:hint|critique|reflection)s?\b",
    re.IGNORECASE)
# (ours) Degenerate repetition: a run of _REPEAT_WORDS words that occurs _REPEAT_TIMES times, or
# one word _REPEAT_TIMES + 1 times in a row ("check check check check").
_REPEAT_WORDS, _REPEAT_TIMES = 4, 3
_WORD = re.compile(r"\w+")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
# A sign counts only when attached to the digits and not after a word, digit or closing bracket
# ("x-3" is 3, "x = -3" is -3). Digits after a letter, "_", "." or an exponent's "^" / "^{" are
# not a stated value ("x_12", "\frac12", "n^2", the "3" of "1.2.3"), so answer "2" never matches
# inside "12", "x2" or "$x^2$".
_NUMBER = re.compile(
    r"(?:(?<![\w.)\]}])-)?(?<![\w.^])(?<!\^\{)(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)

# Whether ``answer`` is mathematically equal to any of ``candidates`` (math-verify). The filter
# takes it from its caller, so this module stays pure: the service passes amr_sd.mathcheck.equal,
# which bounds sympy in time from any thread.
Equal = Callable[[str, Sequence[str]], bool]


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown reflection kind {kind!r}; use one of {KINDS}")
    return kind


def opening_tag(kind: str) -> str:
    """``"<hint>"`` or ``"<critique>"``: the writer's assistant turn is pre-filled with it."""
    return f"<{_check_kind(kind)}>"


def closing_tag(kind: str) -> str:
    """``"</hint>"`` or ``"</critique>"``: the writer's stop string."""
    return f"</{_check_kind(kind)}>"


def strip_think(text: str) -> str:
    """Remove ``<think>…</think>`` reasoning, so peers reach the writer as answers only.

    Also removes an unterminated block (a ``<think>`` never closed: the rest is reasoning) and a
    leading orphan ``</think>`` (templates that pre-fill ``<think>`` in the prompt).
    """
    head, closing, tail = text.partition("</think>")
    if closing and "<think>" not in head:
        text = tail
    text = _THINK_BLOCK.sub("", text)
    text = text.split("<think>", 1)[0]
    return text.strip()


def _given(value: str | None) -> bool:
    return value is not None and value.strip() != ""


def _first_departure(attempt: str, peer: str):
    # Each text's numbers with the index and text of their line, the two number streams aligned
    # (difflib), and the first place where one side writes other numbers than the other:
    # (attempt, peer, i, j) with i, j the first differing positions, or None when they never do.
    def numbers(text: str) -> list[tuple[str, int, str]]:
        lines = text.splitlines()
        return [(n, k, " ".join(line.split())) for k, line in enumerate(lines)
                for n in _numbers(line)]

    a, b = numbers(attempt), numbers(peer)
    matcher = difflib.SequenceMatcher(None, [n for n, _, _ in a], [n for n, _, _ in b],
                                      autojunk=False)
    for op, i, _, j, _ in matcher.get_opcodes():
        if op == "replace":
            return a, b, i, j
    return None


def first_difference(attempt: str, peer: str) -> tuple[str, str] | None:
    """(ours) Where an attempt's numbers first depart from a verified peer's, as (the attempt's
    line, the peer's line) holding those numbers; None when they never do.

    The two number streams are aligned (difflib) so that layout, wording and a restated operand
    are not a difference: a number only one side writes is skipped, and the first number that
    one side writes in place of another is where the attempt went wrong. A text diff would point
    at the first line written differently, usually the first.
    """
    found = _first_departure(attempt, peer)
    if found is None:
        return None
    a, b, i, j = found
    return a[i][2], b[j][2]


def mistaken_numbers(attempt: str, peer: str) -> list[str]:
    """(ours) The numbers of the attempt's line where it first departs from a verified peer
    (:func:`first_difference`), from the departure on, that the peer writes nowhere: the
    attempt's mistake, e.g. ["178"] for "42 * 4 = 178" against "42 * 4 = 168", ["43", "172"] for
    a wrong operand "43 * 4 = 172". A critique that restates one puts the wrong value into the
    teacher's context, which raises the very token the critique should lower (REPEATS_MISTAKE)."""
    found = _first_departure(attempt, peer)
    if found is None:
        return []
    a, b, i, _ = found
    line = a[i][1]
    peer_values = {Decimal(n) for n, _, _ in b}
    wrong = [n for n, k, _ in a[i:] if k == line and Decimal(n) not in peer_values]
    return list(dict.fromkeys(wrong))


def writer_prompt(
    kind: str,
    *,
    problem: str,
    rollout_text: str,
    feedback: str | None = None,
    peer_text: str | None = None,
    reference_solution: str | None = None,
    template: str = "v1",
) -> str:
    """The user-message content for the reflection writer (docs/method.md step 4).

    ``feedback`` and ``peer_text`` fill the critique's optional sections and are ignored for a
    hint, whose template has no place for them. A section is left out when its value is None or
    blank; ``peer_text`` goes through :func:`strip_think` first. ``reference_solution`` is added to
    either kind; pass it only when ``allow_reference_in_writer`` is set. ``template`` is a
    version of :data:`TEMPLATE_VERSIONS` (docs/method.md's own, v1, unless named; the service passes
    ScoringConfig.reflection_template); v2's critique also shows :func:`first_difference` of the
    attempt and the peer.
    """
    _check_kind(kind)
    if template not in _TEMPLATES:
        raise ValueError(f"unknown template version {template!r}; use one of {TEMPLATE_VERSIONS}")
    reference_section = (
        _REFERENCE_SECTION.format(reference_solution=reference_solution)
        if _given(reference_solution)
        else ""
    )
    if kind == HINT:
        return _TEMPLATES[template][HINT].format(
            problem=problem, rollout_text=rollout_text, reference_section=reference_section
        )
    peer = strip_think(peer_text) if peer_text is not None else None
    fields = dict(
        problem=problem,
        rollout_text=rollout_text,
        feedback_section=_FEEDBACK_SECTION.format(feedback=feedback) if _given(feedback) else "",
        peer_section=_PEER_SECTION.format(peer_text=peer) if _given(peer) else "",
        reference_section=reference_section,
    )
    if template == "v1":
        return CRITIQUE_TEMPLATE.format(**fields)
    difference = first_difference(strip_think(rollout_text), peer) if _given(peer) else None
    fields["difference_section"] = "" if difference is None else _DIFFERENCE_SECTION.format(
        attempt_line=difference[0], peer_line=difference[1])
    return CRITIQUE_TEMPLATE_V2.format(**fields)


def parse_reflection(kind: str, text: str) -> tuple[str | None, RejectReason | None]:
    """The stripped text of the first complete ``<kind>…</kind>`` block in the writer's output.

    ``text`` includes the opening tag. Returns ``(reflection, None)``, or ``(None, reason)`` with
    MISSING_TAG (no opening tag), UNTERMINATED (no closing tag after it) or EMPTY (blank inside).
    """
    opening, closing = opening_tag(kind), closing_tag(kind)
    start = text.find(opening)
    if start < 0:
        return None, RejectReason.MISSING_TAG
    start += len(opening)
    end = text.find(closing, start)
    if end < 0:
        return None, RejectReason.UNTERMINATED
    inner = text[start:end].strip()
    if not inner:
        return None, RejectReason.EMPTY
    return inner, None


def teacher_block(kind: str, reflection: str) -> str:
    """The text appended to the last user message of the teacher's prompt (docs/method.md step 6).

    It carries the accepted reflection and nothing else (G5).
    """
    return _TEACHER_BLOCK.format(
        opening=opening_tag(kind), reflection=reflection, closing=closing_tag(kind)
    )


def _last_boxed(text: str) -> str | None:
    # The last \boxed{...} whose braces balance; a truncated one falls back to an earlier one.
    for match in reversed(list(_BOXED_OPEN.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            content = text[match.end() : i - 1].strip()
            if content:
                return content
    return None


def _numbers(text: str) -> list[str]:
    # LaTeX writes thousands as 1{,}000.
    return [m.group().replace(",", "") for m in _NUMBER.finditer(text.replace("{,}", ","))]


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: the last ``\\boxed{…}``, else the last number, else None.

    Numbers drop their thousands commas ("1,000" -> "1000") and keep sign and decimals as written.
    Pass text after :func:`strip_think`; a number inside reasoning is not an answer.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def _as_decimal(text: str) -> Decimal | None:
    stripped = text.strip().strip("$").strip()
    if _NUMBER.fullmatch(stripped.replace("{,}", ",")) is None:
        return None
    try:
        return Decimal(stripped.replace("{,}", "").replace(",", ""))
    except InvalidOperation:
        return None


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _contains_text(text: str, answer: str) -> bool:
    # A one-character answer ("A", "x") is matched with its case: folded, "A" would match the
    # article "a" in nearly every hint. Alphanumeric edges must not continue a longer word.
    folded = len(answer) > 1
    haystack = _normalise(text) if folded else " ".join(text.split())
    needle = _normalise(answer) if folded else answer
    flags = re.IGNORECASE if folded else 0
    left = r"(?<![0-9A-Za-z])" if needle[0].isalnum() else ""
    right = r"(?![0-9A-Za-z])" if needle[-1].isalnum() else ""
    return re.search(left + re.escape(needle) + right, haystack, flags) is not None


def contains_answer(text: str, answer: str, equal: Equal | None = None) -> bool:
    """True if ``text`` states ``answer`` (docs/method.md step 5).

    A numeric answer matches any whole number in the text of equal value ("12.0", "1,000",
    never the "2" inside "12"); another answer matches as a whitespace- and case-normalised
    substring. With ``equal`` (math-verify equivalence), both also match a ``$…$``/``\\(…\\)``
    expression it finds equivalent ("0.5" in "$\\frac{1}{2}$"), and a non-numeric answer a number
    that it finds equivalent.
    """
    answer = answer.strip()
    if not answer:
        return False
    spans = [next(g for g in m.groups() if g is not None) for m in _MATH_SPAN.finditer(text)]
    value = _as_decimal(answer)
    if value is not None:
        if any(Decimal(number) == value for number in _numbers(text)):
            return True
        return equal is not None and bool(spans) and equal(answer, spans)
    if _contains_text(text, answer):
        return True
    candidates = spans + _numbers(text)
    return equal is not None and bool(candidates) and equal(answer, candidates)


def words(text: str) -> list[str]:
    """The words of ``text`` for the copy check: runs of letters and digits, lower-cased;
    punctuation and operators are not words. Counted in words, not tokens, so that one equation
    copied from a peer ("12 * 3 = 36": 3 words) is not a copied solution under a tokenizer that
    writes one digit per token (12 tokens there)."""
    return _WORD.findall(text.lower())


def shares_ngram(a: Sequence, b: Sequence, n: int = 8) -> bool:
    """True if sequences ``a`` and ``b`` (words, token ids) have a common run of ``n`` items."""
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    if len(a) < n or len(b) < n:
        return False
    seen = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    return any(tuple(a[i : i + n]) in seen for i in range(len(a) - n + 1))


def quality_reason(reflection: str) -> RejectReason | None:
    """Why ``reflection`` is not a reflection at all, or None (ours): STRAY_TAG (markup inside
    it), META_TEXT (it talks about the hint or critique itself), REPETITION (degenerate loops)."""
    if _TAG_FRAGMENT.search(reflection):
        return RejectReason.STRAY_TAG
    if _META_TEXT.search(reflection):
        return RejectReason.META_TEXT
    words = [w.lower() for w in _WORD.findall(reflection)]
    runs: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - _REPEAT_WORDS + 1):
        run = tuple(words[i:i + _REPEAT_WORDS])
        runs[run] = runs.get(run, 0) + 1
        if runs[run] >= _REPEAT_TIMES:
            return RejectReason.REPETITION
    same = 1
    for previous, word in zip(words, words[1:]):
        same = same + 1 if word == previous else 1
        if same > _REPEAT_TIMES:
            return RejectReason.REPETITION
    return None


def announces_answer(text: str) -> bool:
    """Whether ``text`` holds a phrase that announces an answer (ANSWER_PHRASE). More text
    cannot undo it, so a writer may be stopped as soon as it is true of a partial reflection."""
    normalised = _normalise(text)
    return any(phrase in normalised for phrase in _ANSWER_PHRASES)


def leak_reason(
    reflection: str,
    *,
    reflection_token_ids: Sequence[int],
    max_reflection_tokens: int,
    answers: Sequence[str] = (),
    sources: Sequence[str] = (),
    ngram: int = 8,
    mistakes: Sequence[str] = (),
    equal: Equal | None = None,
) -> RejectReason | None:
    """Why ``reflection`` must not reach the teacher, or None to accept it (docs/method.md step 5).

    Checks in order: TOO_LONG, ANSWER_PHRASE, then the quality checks of
    :func:`quality_reason` (STRAY_TAG, META_TEXT, REPETITION), CONTAINS_ANSWER (the reference
    answer and the correct peers' extracted answers, :func:`contains_answer` with ``equal``),
    NGRAM_OVERLAP (a run of ``ngram`` words,
    :func:`words`, shared with a peer or reference text the writer saw), REPEATS_MISTAKE (a
    number of ``mistakes``, :func:`mistaken_numbers`: the wrong value the critique was asked to
    correct, not to repeat). ANSWER_PHRASE comes
    before the quality checks so that a writer abandoned at an answer phrase gets the reason it
    would have got had it decoded to the end.
    """
    if len(reflection_token_ids) > max_reflection_tokens:
        return RejectReason.TOO_LONG
    if announces_answer(reflection):
        return RejectReason.ANSWER_PHRASE
    quality = quality_reason(reflection)
    if quality is not None:
        return quality
    if any(answer and contains_answer(reflection, answer, equal) for answer in answers):
        return RejectReason.CONTAINS_ANSWER
    mine = words(reflection)
    if any(shares_ngram(mine, words(source), ngram) for source in sources):
        return RejectReason.NGRAM_OVERLAP
    wrong = {Decimal(n) for n in mistakes}
    if wrong and any(Decimal(n) in wrong for n in _numbers(reflection)):
        return RejectReason.REPEATS_MISTAKE
    return None
