"""The on-policy fidelity data: a checker that finds where a sampled solution went wrong, and token
labels that hold exactly the wrong characters."""

from __future__ import annotations

import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from amr_sd.engine.models import materialize_embedded
from bench.fidelity import onpolicy_data as od

START = 12
OPS = [("+", 30), ("*", 4), ("-", 20), ("+", 55), ("*", 3)]  # 42, 168, 148, 203, 609

# A slip at step 2 (158 for 168), carried forward and computed right from there on.
SLIP = ("Step 1: 12 + 30 = 42.\n"
        "Step 2: 42 * 4 = 158.\n"
        "Step 3: 158 - 20 = 138.\n"
        "Step 4: 138 + 55 = 193.\n"
        "Step 5: 193 * 3 = 579.\n"
        "The answer is 579.")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


def lines(*steps: str, answer: str | None) -> str:
    return "\n".join(list(steps) + ([] if answer is None else [f"The answer is {answer}."]))


def at(text: str, span) -> str:
    return text[span[0]:span[1]]


# ---- problems ----------------------------------------------------------------------------------

def test_problems_have_five_operations_in_their_ranges():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        start, ops = od.make_problem(rng)
        assert 10 <= start <= 60 and len(ops) == 5
        for op, value in ops:
            seen.add(op)
            assert 3 <= value <= 19 if op == "*" else 11 <= value <= 99
    assert seen == {"+", "-", "*"}
    assert od.make_problem(random.Random(4)) == od.make_problem(random.Random(4))  # seeded


def test_the_question_nests_the_chain_and_states_the_format():
    assert od.question(START, OPS) == (
        "Compute ((((12 + 30) * 4) - 20) + 55) * 3, one operation at a time from the innermost "
        "parentheses.\n"
        'Write each step on its own line as "Step k: a op b = c.", then "The answer is N."')
    assert od.truth(START, OPS) == [42, 168, 148, 203, 609]


# ---- the checker -------------------------------------------------------------------------------

def test_a_correct_chain():
    text = od.solution(START, OPS)
    c = od.check(text, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.answer) == ("correct", -1, 609)
    assert c.wrong_span is None and c.departs_at is None and c.right_number is None
    assert [at(text, s) for s in c.step_spans] == text.split("\n")[:5]
    assert at(text, c.answer_span) == "The answer is 609."
    assert [at(text, s.result_span) for s in c.steps] == ["42", "168", "148", "203", "609"]
    assert [(at(text, s.left_span), at(text, s.right_span)) for s in c.steps[:2]] == \
        [("12", "30"), ("42", "4")]


def test_the_checker_tolerates_the_ways_models_write_the_same_steps():
    # Indentation, no final ".", "×" and "x" for "*", and a commuted product.
    text = lines("  Step 1: 12 + 30 = 42", "Step 2: 4 × 42 = 168.", "Step 3:168 - 20 = 148.",
                 "Step 4: 148 + 55 = 203.  ", "Step 5: 203 x 3 = 609.", answer="609")
    c = od.check("Let me compute it.\n" + text + "\n", START, OPS)
    assert (c.verdict, c.first_wrong_step) == ("correct", -1)
    assert [s.op for s in c.steps] == ["+", "*", "-", "+", "*"]


def test_a_slip_with_a_multi_digit_result():
    c = od.check(SLIP, START, OPS)
    # Only step 2 is erroneous: steps 3-5 compute right from the 158 they were given.
    assert (c.verdict, c.first_wrong_step, c.answer) == ("slip", 2, 579)
    assert at(SLIP, c.wrong_span) == "158" and c.right_number == 168
    assert c.wrong_part == "result" and c.right_text == "168"
    # "158" for "168": the "1" is what a right solution writes; the "5" is where it departs.
    assert SLIP[c.departs_at] == "5" and c.departs_at == c.wrong_span[0] + 1


def test_the_first_of_two_slips_is_the_fault():
    text = SLIP.replace("138 + 55 = 193", "138 + 55 = 183")  # a second slip at step 4
    c = od.check(text, START, OPS)
    assert (c.verdict, c.first_wrong_step) == ("slip", 2)


def test_where_a_wrong_number_departs_from_the_right_one():
    right = od.solution(START, OPS)
    # Same length: "305" for "315" would depart at the "0"; here "619" for "609" at the "1".
    same = right.replace("203 * 3 = 609.", "203 * 3 = 619.")
    c = od.check(same, START, OPS)
    assert (c.verdict, c.first_wrong_step, at(same, c.wrong_span)) == ("slip", 5, "619")
    assert c.departs_at == c.wrong_span[0] + 1 and same[c.departs_at] == "1"
    # A prefix: "60" for "609" departs right after the "60", at the "." no right text has there.
    short = right.replace("203 * 3 = 609.", "203 * 3 = 60.")
    c = od.check(short, START, OPS)
    assert c.departs_at == c.wrong_span[1] and short[c.departs_at] == "."
    # Longer: "6090" departs at its extra "0".
    long = right.replace("203 * 3 = 609.", "203 * 3 = 6090.")
    c = od.check(long, START, OPS)
    assert c.departs_at == c.wrong_span[0] + 3 and at(long, c.wrong_span) == "6090"


def test_negative_numbers():
    ops = [("-", 40), ("*", 3), ("+", 11), ("-", 99), ("*", 5)]
    assert od.truth(15, ops) == [-25, -75, -64, -163, -815]
    text = od.solution(15, ops)
    assert "Step 2: -25 * 3 = -75." in text
    assert od.check(text, 15, ops).verdict == "correct"
    # The typographic minus, as a sign and as the operation.
    typographic = text.replace("-25 * 3 = -75", "−25 × 3 = −75").replace("-64 - 99", "-64 − 99")
    assert od.check(typographic, 15, ops).verdict == "correct"
    slip = text.replace("-64 - 99 = -163.\nStep 5: -163 * 5 = -815.\nThe answer is -815.",
                        "-64 - 99 = -153.\nStep 5: -153 * 5 = -765.\nThe answer is -765.")
    c = od.check(slip, 15, ops)
    assert (c.verdict, c.first_wrong_step, c.answer) == ("slip", 4, -765)
    assert at(slip, c.wrong_span) == "-153" and c.right_number == -163
    assert slip[c.departs_at] == "5"
    # A sign dropped: "25" for "-25" departs at its first character.
    unsigned = text.replace("= -25.", "= 25.")
    c = od.check(unsigned, 15, ops)
    assert (c.verdict, c.first_wrong_step, c.departs_at) == ("slip", 1, c.wrong_span[0])


def test_a_wrong_operand_copied_from_the_line_before_is_not_a_slip():
    # Step 2 writes 168 right, step 3 copies it as 186 and computes right from there.
    text = lines("Step 1: 12 + 30 = 42.", "Step 2: 42 * 4 = 168.", "Step 3: 186 - 20 = 166.",
                 "Step 4: 166 + 55 = 221.", "Step 5: 221 * 3 = 663.", answer="663")
    c = od.check(text, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.wrong_part) == ("operand", 3, "left")
    assert at(text, c.wrong_span) == "186" and c.right_number == 168
    assert text[c.departs_at] == "8" and c.departs_at == c.wrong_span[0] + 1


def test_a_wrong_right_operand_or_operation_is_an_operand_error():
    right = od.solution(START, OPS)
    operand = right.replace("148 + 55 = 203.", "148 + 45 = 193.").replace("203 * 3 = 609.",
                                                                        "193 * 3 = 579.")
    c = od.check(operand, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.wrong_part) == ("operand", 4, "right")
    assert at(operand, c.wrong_span) == "45" and c.right_number == 55
    op = right.replace("168 - 20 = 148.", "168 + 20 = 188.")
    c = od.check(op, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.wrong_part) == ("operand", 3, "op")
    assert at(op, c.wrong_span) == "+" and c.right_text == "-" and c.right_number is None
    assert c.departs_at == c.wrong_span[0]


def test_right_steps_with_a_wrong_or_missing_answer_line():
    right = od.solution(START, OPS)
    wrong = right.replace("The answer is 609.", "The answer is 690.")
    c = od.check(wrong, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.answer) == ("answer", -1, 690)
    assert at(wrong, c.wrong_span) == "690" and c.right_number == 609
    assert wrong[c.departs_at] == "9"
    missing = right.rsplit("\n", 1)[0]
    c = od.check(missing, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.answer, c.answer_span) == ("answer", -1, None, None)
    assert c.wrong_span is None and c.departs_at is None


@pytest.mark.parametrize("text", [
    "The answer is 609.",  # no steps
    od.solution(START, OPS).replace("Step 5: 203 * 3 = 609.\n", ""),  # four steps
    od.solution(START, OPS).replace("The answer", "Step 6: 609 + 0 = 609.\nThe answer"),  # six
    od.solution(START, OPS).replace("168 - 20 = 148.", "168 - 20 equals 148."),  # unparseable
    od.solution(START, OPS).replace("= 609", "= 6,09"),  # a thousands comma
])
def test_format_failures(text):
    # Anything but one readable equation per operation.
    c = od.check(text, START, OPS)
    assert (c.verdict, c.first_wrong_step, c.wrong_span, c.departs_at) == \
        ("format", None, None, None)


def test_format_failures_still_report_the_answer():
    c = od.check("I think it is big.\nThe answer is 609.", START, OPS)
    assert (c.verdict, c.answer, c.step_spans) == ("format", 609, [])


# ---- token labels ------------------------------------------------------------------------------

def decode_where(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)


def test_labels_decode_to_the_first_wrong_digit_and_the_wrong_number(tokenizer):
    ids = tokenizer(SLIP, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    c = od.check(SLIP, START, OPS)
    lab = od.token_labels(tokenizer, ids, SLIP, c)
    assert all(len(a) == len(ids) for a in (lab.first_wrong_digit, lab.slip_number,
                                            lab.after_slip, lab.step))
    assert decode_where(tokenizer, ids, lab.first_wrong_digit) == "5"
    assert decode_where(tokenizer, ids, lab.slip_number) == "158"
    # Everything from the wrong number on, and nothing before it.
    assert decode_where(tokenizer, ids, lab.after_slip) == SLIP[c.wrong_span[0]:]
    first = int(np.argmax(lab.after_slip))
    assert lab.after_slip[first:-1].all() and tokenizer.decode(ids[:first]) == \
        SLIP[:c.wrong_span[0]]
    # Each step's tokens are exactly its line; the answer line and EOS are outside any step.
    assert lab.n_steps == 5
    for k, line in enumerate(SLIP.split("\n")[:5], start=1):
        assert decode_where(tokenizer, ids, lab.step == k) == line
    assert decode_where(tokenizer, ids, lab.step == 0) == "\n" * 5 + "The answer is 579."
    # EOS is labelled nothing.
    assert not (lab.first_wrong_digit[-1] or lab.slip_number[-1] or lab.after_slip[-1])
    assert lab.step[-1] == 0


def slipped(result: int, rng: random.Random) -> int:
    """`result` with one digit changed or dropped, the way a sampled slip looks."""
    digits = str(abs(result))
    while True:
        j = rng.randrange(len(digits))
        if rng.random() < 0.3 and len(digits) > 1:
            changed = digits[:j] + digits[j + 1:]
        else:
            changed = digits[:j] + str((int(digits[j]) + rng.randint(1, 9)) % 10) + digits[j + 1:]
        value = int(("-" if result < 0 else "") + changed)
        if value != result:  # "05" for "5" reads as 5: no slip
            return value


def test_labels_hold_exactly_the_wrong_characters_of_sampled_like_slips(tokenizer):
    rng = random.Random(7)
    for _ in range(40):
        start, ops = od.make_problem(rng)
        k = rng.randint(1, 5)
        value, written = start, []
        for i, (op, operand) in enumerate(ops, start=1):
            result = od._apply(value, op, operand)
            result = slipped(result, rng) if i == k else result
            written.append(f"Step {i}: {value} {op} {operand} = {result}.")
            value = result  # carried forward and computed right from there
        text = "\n".join(written + [f"The answer is {value}."])
        c = od.check(text, start, ops)
        assert (c.verdict, c.first_wrong_step) == ("slip", k), text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        lab = od.token_labels(tokenizer, ids, text, c)
        number = at(text, c.wrong_span)
        # SmolLM2 writes a minus sign with the space before it (" -"), digits one per token.
        expected = " " + number if number.startswith("-") else number
        assert decode_where(tokenizer, ids, lab.slip_number) == expected
        assert decode_where(tokenizer, ids, lab.first_wrong_digit) == text[c.departs_at]
        assert lab.first_wrong_digit.sum() == 1
        # Before the departing token the text is still the right solution's.
        (j,) = np.flatnonzero(lab.first_wrong_digit)
        truth_text = od.solution(start, ops)
        assert truth_text.startswith(tokenizer.decode(ids[:j]))
        assert not truth_text.startswith(tokenizer.decode(ids[:j + 1]))


def test_labels_of_a_correct_response_are_empty(tokenizer):
    text = od.solution(START, OPS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lab = od.token_labels(tokenizer, ids, text, od.check(text, START, OPS))
    assert not (lab.first_wrong_digit.any() or lab.slip_number.any() or lab.after_slip.any())
    assert sorted(set(lab.step.tolist())) == [0, 1, 2, 3, 4, 5]


def test_offsets_come_from_the_ids_and_must_decode_to_the_text(tokenizer):
    ids = tokenizer(SLIP, add_special_tokens=False)["input_ids"]
    offsets = od.char_offsets(tokenizer, ids, SLIP)
    assert [SLIP[a:b] for a, b in offsets] == [tokenizer.decode([t]) for t in ids]
    with pytest.raises(ValueError, match="decode"):
        od.token_labels(tokenizer, ids, SLIP.replace("158", "159"), od.check(SLIP, START, OPS))
    # A character split over byte tokens belongs to the token that completes it.
    text = "Step 2: −25 × 3 = −75. ≈ 😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [text[a:b] for a, b in od.char_offsets(tokenizer, ids, text)]
    assert "".join(pieces) == text and pieces[-4:] == [" ", "≈", " ", "😀"]


@pytest.mark.parametrize("layout", [
    lambda t: t.replace("Step 3:", "Step 2:"),  # numbering is layout
    lambda t: t.replace("Step 2: ", "Step 2:\n"),  # the equation under its heading
    lambda t: t.replace("12 + 30 = 42.", "Compute (12 + 30) = 42"),  # words, brackets, no "."
])
def test_layout_is_not_arithmetic(layout):
    assert od.check(layout(od.solution(START, OPS)), START, OPS).verdict == "correct"


def test_two_operations_in_one_equation_line_are_a_format_failure():
    # "(12 + 30) * 4 = 42 * 4 = 168" states one equation for two operations: not readable as steps.
    text = od.solution(START, OPS).replace("Step 1: 12 + 30 = 42.\nStep 2: 42 * 4 = 168.",
                                           "Step 1: (12 + 30) * 4 = 42 * 4 = 168.")
    assert od.check(text, START, OPS).verdict == "format"


# --- the contexts the on-policy bench scores ------------------------------------------------------


def test_the_value_critique_writes_the_faulty_step_out_right():
    from bench.fidelity import onpolicy as fo

    problem = {"start": START, "ops": OPS}
    slip = od.solution(START, OPS).replace("42 * 4 = 168", "42 * 4 = 178")
    item = {"correct": False, "check": od.check(slip, START, OPS), "feedback": "F"}
    assert item["check"].first_wrong_step == 2
    assert fo.overrides("value", problem, item) == \
        "The mistake is in step 2: 42 * 4 = 168, and every later step builds on it."
    assert "168" not in fo.overrides("oracle", problem, item)  # names the step, no value
    assert fo.overrides("feedback", problem, item) == "F"
    assert fo.overrides("self_v2", problem, item) is None  # the service writes its own
    # A wrong operand: the step as the right chain writes it (left operand 42, not the copy).
    copied = od.solution(START, OPS).replace("42 * 4 = 168", "24 * 4 = 96")
    item = {"correct": False, "check": od.check(copied, START, OPS), "feedback": "F"}
    assert "42 * 4 = 168" in fo.overrides("value", problem, item)


# ---- what the written critiques say -------------------------------------------------------------


def test_critique_figures_count_naming_the_step_stating_its_value_and_repeating_the_mistake():
    from amr_client.schemas import ReflectionRecord
    from bench.fidelity.onpolicy import reflections

    check = od.check(SLIP, START, OPS)
    item = {"text": SLIP, "check": check, "right_value": 168}

    def row(text, accepted=True, reasons=()):
        record = ReflectionRecord(kind="critique", text=text, accepted=accepted,
                                  reject_reasons=list(reasons))
        return {"correct": False, "item": item, "reflection": record}

    figures = reflections([
        row("Step 2 should be: 42 * 4 = 168."),  # names, states
        row("Step 2 should be: 42 * 4 = 168, not 158."),  # names, states, repeats
        row("Step 3 should be: 148 - 20 = 128."),  # neither
        row("Step 2: 42 * 4 = 158 is wrong.", accepted=False, reasons=["repeats_mistake"]),
    ])["critique"]
    assert figures["n"] == 4 and figures["acceptance"] == 0.75
    assert figures["reject_reasons"] == {"repeats_mistake": 1}
    assert figures["names_step"] == pytest.approx(2 / 3)
    assert figures["states_right_value"] == pytest.approx(2 / 3)
    assert figures["repeats_wrong_value"] == pytest.approx(1 / 3)
