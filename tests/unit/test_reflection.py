"""Specifications for amr_sd.algo.reflection: templates, parsing, leak filter (docs/method.md 3-5)."""

import hashlib

import pytest

from amr_sd import mathcheck
from amr_sd.algo import reflection as rf
from amr_sd.algo.reflection import (
    CRITIQUE,
    CRITIQUE_TEMPLATE,
    HINT,
    HINT_TEMPLATE,
    KINDS,
    TEMPLATE_VERSIONS,
    RejectReason,
    closing_tag,
    extract_answer,
    first_difference,
    leak_reason,
    mistaken_numbers,
    opening_tag,
    parse_reflection,
    quality_reason,
    shares_ngram,
    words,
    strip_think,
    teacher_block,
    writer_prompt,
)

CLEAN_HINT = "What happens to the sum if you pair the first term with the last one?"


def accept(reflection, **kwargs):
    kwargs.setdefault("reflection_token_ids", [1, 2, 3])
    kwargs.setdefault("max_reflection_tokens", 128)
    kwargs.setdefault("equal", mathcheck.equal)
    return leak_reason(reflection, **kwargs)


def contains_answer(text, answer):
    """The check as the service runs it: with math-verify's equivalence (amr_sd.mathcheck)."""
    return rf.contains_answer(text, answer, mathcheck.equal)


# --- templates and writer prompts ---------------------------------------------------------------


def test_kinds_are_hint_and_critique():
    assert KINDS == ("hint", "critique") == (HINT, CRITIQUE)


def test_templates_forbid_stating_the_final_answer():
    assert "Do NOT state the final answer" in HINT_TEMPLATE
    assert "Do NOT state the final answer" in CRITIQUE_TEMPLATE


def test_templates_ask_for_the_tagged_output_only():
    assert HINT_TEMPLATE.endswith("Output only: <hint>...</hint>")
    assert CRITIQUE_TEMPLATE.endswith("Output only: <critique>...</critique>")


@pytest.mark.parametrize("version", TEMPLATE_VERSIONS)
def test_template_text_is_pinned_to_its_version(version):
    # Reflections are cached under their template version: any text change must add a version
    # (then pin its digest here). Rendering covers the optional sections and the teacher block.
    rendered = "\x00".join(
        [
            writer_prompt(HINT, problem="P", rollout_text="R", reference_solution="S",
                          template=version),
            writer_prompt(
                CRITIQUE,
                problem="P",
                rollout_text="R" if version == "v1" else "R\nStep 2",
                feedback="F",
                peer_text="Q" if version == "v1" else "R\nStep 3",  # v2 shows where they differ
                reference_solution="S",
                template=version,
            ),
            teacher_block(HINT, "H"),
        ]
    )
    digest = hashlib.sha256(rendered.encode()).hexdigest()[:16]
    assert digest == PINNED_DIGESTS[version]


PINNED_DIGESTS = {"v1": "f939593b1060db9b", "v2": "e556d3d1096630f8"}


def test_hint_prompt_holds_problem_and_solution_in_template_order():
    prompt = writer_prompt(HINT, problem="Add 2 and 3.", rollout_text="2 + 3 = 5")
    assert prompt.startswith(
        "You solved the following problem correctly.\nProblem:\nAdd 2 and 3.\n"
        "Your solution:\n2 + 3 = 5\nWrite one short Socratic hint"
    )


def test_critique_prompt_without_feedback_or_peer_has_neither_section():
    prompt = writer_prompt(CRITIQUE, problem="Add 2 and 3.", rollout_text="2 + 3 = 6")
    assert "Verifier feedback" not in prompt
    assert "An attempt that the verifier accepted" not in prompt
    assert "Incorrect attempt:\n2 + 3 = 6\nIdentify the first step" in prompt


def test_critique_prompt_includes_feedback_when_given():
    prompt = writer_prompt(CRITIQUE, problem="p", rollout_text="r", feedback="expected an integer")
    assert "Verifier feedback:\nexpected an integer\n" in prompt
    assert "An attempt that the verifier accepted" not in prompt


def test_critique_prompt_includes_peer_when_given():
    prompt = writer_prompt(CRITIQUE, problem="p", rollout_text="r", peer_text="2 + 3 = 5")
    assert "An attempt that the verifier accepted:\n2 + 3 = 5\n" in prompt
    assert "Verifier feedback" not in prompt


def test_critique_prompt_never_includes_the_peers_thinking():
    prompt = writer_prompt(
        CRITIQUE, problem="p", rollout_text="r", peer_text="<think>secret scratch</think>2 + 3 = 5"
    )
    assert "secret scratch" not in prompt
    assert "<think>" not in prompt
    assert "An attempt that the verifier accepted:\n2 + 3 = 5\n" in prompt


def test_critique_prompt_leaves_out_a_peer_that_was_only_thinking():
    prompt = writer_prompt(CRITIQUE, problem="p", rollout_text="r", peer_text="<think>only")
    assert "An attempt that the verifier accepted" not in prompt


def test_hint_prompt_ignores_feedback_and_peer():
    prompt = writer_prompt(HINT, problem="p", rollout_text="r", feedback="F!", peer_text="Q!")
    assert "F!" not in prompt and "Q!" not in prompt


@pytest.mark.parametrize("kind", KINDS)
def test_reference_solution_comes_just_before_the_instructions(kind):
    prompt = writer_prompt(kind, problem="p", rollout_text="r", reference_solution="ref sol")
    instructions = "Write one short" if kind == HINT else "Identify the first step"
    assert f"Reference solution:\nref sol\n{instructions}" in prompt


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_without_reference_has_no_reference_section(kind):
    assert "Reference solution" not in writer_prompt(kind, problem="p", rollout_text="r")


def test_braces_in_inputs_are_kept_verbatim():
    prompt = writer_prompt(HINT, problem="Find {x}", rollout_text="\\boxed{\\frac{1}{2}}")
    assert "Find {x}" in prompt and "\\boxed{\\frac{1}{2}}" in prompt


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown reflection kind"):
        writer_prompt("summary", problem="p", rollout_text="r")


# --- tags, parsing, teacher block ----------------------------------------------------------------


def test_tags_are_named_for_the_kind():
    assert (opening_tag(HINT), closing_tag(HINT)) == ("<hint>", "</hint>")
    assert (opening_tag(CRITIQUE), closing_tag(CRITIQUE)) == ("<critique>", "</critique>")


def test_parse_returns_the_stripped_inner_text():
    assert parse_reflection(HINT, f"<hint>{CLEAN_HINT}</hint>") == (CLEAN_HINT, None)


def test_parse_strips_surrounding_whitespace_and_keeps_inner_whitespace():
    text = "<critique>\n  Check the sign\n  in step 2.  \n</critique>"
    assert parse_reflection(CRITIQUE, text) == ("Check the sign\n  in step 2.", None)


def test_parse_takes_the_first_of_two_blocks():
    assert parse_reflection(HINT, "<hint>first</hint> <hint>second</hint>") == ("first", None)


def test_parse_without_opening_tag_is_missing_tag():
    assert parse_reflection(HINT, "Think about parity.</hint>") == (None, RejectReason.MISSING_TAG)


def test_parse_with_the_other_kinds_tag_is_missing_tag():
    assert parse_reflection(HINT, "<critique>x</critique>") == (None, RejectReason.MISSING_TAG)


def test_parse_without_closing_tag_is_unterminated():
    assert parse_reflection(HINT, "<hint>Think about parity.") == (None, RejectReason.UNTERMINATED)


def test_parse_of_blank_block_is_empty():
    assert parse_reflection(CRITIQUE, "<critique> \n </critique>") == (None, RejectReason.EMPTY)


def test_teacher_block_is_the_tagged_reflection_and_the_reminder():
    assert teacher_block(HINT, "Pair the terms.") == (
        "\n\n<hint>Pair the terms.</hint>\nKeep this guidance in mind while solving."
    )
    assert teacher_block(CRITIQUE, "Recheck step 2.") == (
        "\n\n<critique>Recheck step 2.</critique>\nKeep this guidance in mind while solving."
    )


def test_teacher_block_holds_only_the_reflection_not_the_writers_context():
    # G5: the reference, peer and feedback reach the writer, never the teacher.
    prompt = writer_prompt(
        CRITIQUE,
        problem="Add 2 and 3.",
        rollout_text="2 + 3 = 6",
        feedback="FEEDBACK-TEXT",
        peer_text="PEER-TEXT",
        reference_solution="REFERENCE-TEXT",
    )
    assert all(s in prompt for s in ("FEEDBACK-TEXT", "PEER-TEXT", "REFERENCE-TEXT"))
    reflection, reason = parse_reflection(CRITIQUE, "<critique>Recheck the carry.</critique>")
    assert reason is None
    block = teacher_block(CRITIQUE, reflection)
    assert block.replace(reflection, "") == (
        "\n\n<critique></critique>\nKeep this guidance in mind while solving."
    )
    assert not any(s in block for s in ("FEEDBACK-TEXT", "PEER-TEXT", "REFERENCE-TEXT"))


# --- strip_think ---------------------------------------------------------------------------------


def test_strip_think_removes_a_block_and_surrounding_whitespace():
    assert strip_think("<think>try 4</think>\n\nThe sum is 5.") == "The sum is 5."


def test_strip_think_removes_every_block():
    assert strip_think("<think>a</think>x <think>b</think>y") == "x y"


def test_strip_think_drops_an_unterminated_block_to_the_end():
    assert strip_think("<think>still reasoning about 4") == ""


def test_strip_think_drops_reasoning_before_an_orphan_closing_tag():
    # Chat templates that pre-fill "<think>" leave only its closing tag in the output.
    assert strip_think("reasoning about 4</think>The sum is 5.") == "The sum is 5."


def test_strip_think_leaves_text_without_think_unchanged_but_stripped():
    assert strip_think("  The sum is 5.\n") == "The sum is 5."


# --- extract_answer ------------------------------------------------------------------------------


def test_extract_answer_takes_the_last_boxed_with_nested_braces():
    assert extract_answer("\\boxed{1} so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"


def test_extract_answer_prefers_boxed_over_a_later_number():
    assert extract_answer("\\boxed{7} checked in 3 steps") == "7"


def test_extract_answer_skips_an_unbalanced_last_boxed():
    assert extract_answer("\\boxed{4} then \\boxed{\\frac{1}{2}") == "4"


def test_extract_answer_falls_back_to_the_last_number():
    assert extract_answer("First 3 apples, then 12 pears.") == "12"


def test_extract_answer_removes_thousands_commas():
    assert extract_answer("The total is 1,234,567.") == "1234567"


def test_extract_answer_removes_latex_thousands_separator():
    assert extract_answer("The total is 1{,}000.") == "1000"


def test_extract_answer_keeps_a_negative_sign_and_decimals():
    assert extract_answer("So x = -3.25.") == "-3.25"


def test_extract_answer_reads_a_minus_between_terms_as_subtraction():
    assert extract_answer("x-3") == "3"


def test_extract_answer_without_any_answer_is_none():
    assert extract_answer("No numbers here.") is None


# --- contains_answer -----------------------------------------------------------------------------


def test_numeric_answer_matches_an_equal_decimal():
    assert contains_answer("It comes out to 12.0 exactly.", "12")
    assert contains_answer("It comes out to 12 exactly.", "12.0")


def test_numeric_answer_matches_across_thousands_commas():
    assert contains_answer("about 1,000 of them", "1000")
    assert contains_answer("about 1000 of them", "1,000")


def test_negative_answer_matches_only_the_negative_number():
    assert contains_answer("so x = -3", "-3")
    assert not contains_answer("so x = 3", "-3")


def test_numeric_answer_does_not_match_inside_a_longer_number():
    assert not contains_answer("There are 12 cases and 0.25 of them fail.", "2")


def test_numeric_answer_does_not_match_a_subscript_or_variable_index():
    assert not contains_answer("Compare x_2 with y2.", "2")


def test_numeric_answer_matches_an_equivalent_latex_fraction():
    # math_verify: parse("$\\frac{1}{2}$") == [1/2], verify(...0.5...) is True.
    assert contains_answer("The ratio is $\\frac{1}{2}$ here.", "0.5")


def test_numeric_answer_matches_an_unevaluated_latex_sum():
    # math_verify evaluates "$1+1$" to 2: a hint writing the answer as a sum still leaks it.
    assert contains_answer("Note that $1+1$ is relevant.", "2")


def test_numeric_answer_does_not_match_an_exponent():
    assert not contains_answer("Expand $x^2$ and $y^{2}$ first.", "2")


def test_text_answer_matches_a_normalised_substring():
    assert contains_answer("So the set is  X  Union Y.", "x union y")


def test_text_answer_does_not_match_inside_a_longer_word():
    assert not contains_answer("I know the trick.", "no")


def test_one_letter_answer_is_matched_with_its_case():
    # Folded, "A" would match the article "a" in almost every hint.
    assert not contains_answer("Try a substitution.", "A")
    assert contains_answer("Choice A is tempting.", "A")


def test_latex_answer_matches_an_equivalent_decimal_in_the_text():
    assert contains_answer("Half of it, 0.5, is what you want.", "\\frac{1}{2}")


def test_latex_answer_matches_an_equivalent_latex_expression():
    assert contains_answer("Think of it as $\\frac{2}{4}$.", "\\frac{1}{2}")
    assert contains_answer("Rewrite it as \\(2^{1/2}\\).", "\\sqrt{2}")


def test_latex_answer_does_not_match_a_different_value():
    assert not contains_answer("Think of it as $\\frac{1}{3}$ or 0.25.", "\\frac{1}{2}")


def test_blank_answer_never_matches():
    assert not contains_answer("anything 12", "  ")


def test_without_an_equivalence_check_only_numbers_and_text_match():
    # The filter is pure: math-verify comes from its caller (the service passes mathcheck.equal).
    assert not rf.contains_answer("It is $\\frac{1}{2}$.", "0.5")
    assert rf.contains_answer("It is 0.50.", "0.5")
    assert rf.contains_answer("It is $\\frac{1}{2}$.", "0.5", mathcheck.equal)


# --- shares_ngram --------------------------------------------------------------------------------


def test_shares_ngram_finds_a_common_run_of_n_tokens():
    assert shares_ngram([9, 1, 2, 3, 9], [1, 2, 3], n=3)


def test_shares_ngram_ignores_a_run_shorter_than_n():
    assert not shares_ngram([9, 1, 2, 9, 3], [1, 2, 3], n=3)


def test_shares_ngram_with_sequences_shorter_than_n_is_false():
    assert not shares_ngram([1, 2], [1, 2], n=3)


def test_shares_ngram_defaults_to_eight_tokens():
    assert shares_ngram(list(range(8)), list(range(8)))
    assert not shares_ngram(list(range(7)), list(range(7)))


def test_shares_ngram_rejects_a_non_positive_n():
    with pytest.raises(ValueError):
        shares_ngram([1], [1], n=0)


# --- leak_reason ---------------------------------------------------------------------------------


def test_clean_socratic_hint_is_accepted():
    assert (
        accept(
            CLEAN_HINT,
            reflection_token_ids=[10, 11, 12, 13, 14, 15, 16, 17, 18],
            answers=["5050", "\\frac{1}{2}"],
            sources=["Pair the first and last terms: 1 + 100, 2 + 99 and so on, 50 pairs."],
        )
        is None
    )


def test_reflection_longer_than_the_limit_is_too_long():
    assert accept(CLEAN_HINT, reflection_token_ids=[1, 2, 3], max_reflection_tokens=2) is (
        RejectReason.TOO_LONG
    )


def test_reflection_at_the_limit_is_not_too_long():
    assert accept(CLEAN_HINT, reflection_token_ids=[1, 2], max_reflection_tokens=2) is None


@pytest.mark.parametrize(
    "reflection",
    [
        "Put it in \\boxed{} at the end.",
        "The Answer  is what pairing gives.",
        "Check your FINAL ANSWER's units.",
        "Answer: think about pairs.",
        "Instead, the correct answer is what pairing gives.",
    ],
)
def test_answer_announcing_phrase_is_answer_phrase(reflection):
    assert accept(reflection) is RejectReason.ANSWER_PHRASE


def test_reflection_stating_a_given_answer_is_contains_answer():
    assert accept("Pairing gives 50 pairs of 101, i.e. 5,050.", answers=["5050"]) is (
        RejectReason.CONTAINS_ANSWER
    )


def test_blank_answers_are_ignored():
    assert accept(CLEAN_HINT, answers=["", " "]) is None


def test_reflection_copying_eight_source_words_is_ngram_overlap():
    # "what happens to the sum if you pair": 8 words of CLEAN_HINT, in the second source.
    copied = ["Add them up.", "So what happens to the sum if you pair them, twice?"]
    assert accept(CLEAN_HINT, sources=copied) is RejectReason.NGRAM_OVERLAP
    assert accept(CLEAN_HINT, sources=["happens to the sum if you pair"]) is None  # 7 words


def test_ngram_counts_words_not_punctuation_or_tokens():
    # One copied equation is 3 words ("42", "4", "168"), however a tokenizer splits its digits;
    # two copied steps are 8 and count as a copy.
    peer = "Step 1: 12 + 30 = 42.\nStep 2: 42 * 4 = 168.\nStep 3: 168 - 20 = 148."
    assert words("Step 2: 42 * 4 = 168.") == ["step", "2", "42", "4", "168"]
    assert accept("Step 2 is wrong: Step 2: 42 * 4 = 168.", sources=[peer]) is None
    assert accept("Step 2: 42 * 4 = 168. Step 3: 168 - 20 = 148.", sources=[peer]) is \
        RejectReason.NGRAM_OVERLAP


def test_ngram_length_is_configurable():
    kwargs = dict(sources=["the first term of the sum"])
    assert accept(CLEAN_HINT, ngram=3, **kwargs) is RejectReason.NGRAM_OVERLAP  # "the first term"
    assert accept(CLEAN_HINT, ngram=4, **kwargs) is None


def test_checks_run_in_order_length_phrase_answer_overlap():
    everything = dict(
        reflection_token_ids=[1, 2, 3],
        answers=["5"],
        sources=["we pair them all"],
        ngram=2,
    )
    assert accept("the answer is 5", max_reflection_tokens=2, **everything) is RejectReason.TOO_LONG
    assert accept("the answer is 5", **everything) is RejectReason.ANSWER_PHRASE
    assert accept("it is 5", **everything) is RejectReason.CONTAINS_ANSWER
    assert accept("pair them", **everything) is RejectReason.NGRAM_OVERLAP
    # The quality checks sit between the answer phrase and the answer itself.
    assert accept("the answer is 5 </", **everything) is RejectReason.ANSWER_PHRASE
    assert accept("it is 5 </", **everything) is RejectReason.STRAY_TAG


@pytest.mark.parametrize(
    "reflection",
    [
        # A broken closing tag followed by text about the hint: seen from the embedded model.
        "A student should not hesitate to seek clarification. </\n\nThis hint is designed to help.",
        "Check the second product. <hint>Pair the terms.",
        "Look at the carry. </critique",
        "<think>recount</think> Recount the terms.",
        "Try the next case.<solution>",
    ],
)
def test_markup_inside_a_reflection_is_stray_tag(reflection):
    assert accept(reflection) is RejectReason.STRAY_TAG


@pytest.mark.parametrize(
    "reflection",
    [
        "This hint is designed to encourage a student to think.",
        "The above critique explains the error.",
        "Use my hint: pair the terms.",
        "These reflections help a student.",
    ],
)
def test_text_about_the_reflection_itself_is_meta_text(reflection):
    assert accept(reflection) is RejectReason.META_TEXT


@pytest.mark.parametrize(
    "reflection",
    [
        "Check the sum of the terms. Check the sum of the terms. Check the sum of the terms.",
        "Recount the terms again and again and again and again and again and again.",
        "Look at step two carefully carefully carefully carefully.",
    ],
)
def test_degenerate_repetition_is_repetition(reflection):
    assert accept(reflection) is RejectReason.REPETITION


@pytest.mark.parametrize(
    "reflection",
    [
        CLEAN_HINT,
        "Is x < y here, and what does that say about 3<4?",
        "Check step 2: is 12 * 3 really what was written? Check step 3 after it.",
        "What is the hint of symmetry in the sum of the first and the last term?",
        "Compare the first and the last term, then the second and the second to last term.",
        "Very very careful counting is needed.",
    ],
)
def test_ordinary_reflections_pass_the_quality_checks(reflection):
    assert quality_reason(reflection) is None
    assert accept(reflection) is None


def test_reject_reasons_are_their_metric_strings():
    assert [r.value for r in RejectReason] == [
        "missing_tag",
        "unterminated",
        "empty",
        "too_long",
        "answer_phrase",
        "contains_answer",
        "ngram_overlap",
        "stray_tag",
        "meta_text",
        "repetition",
        "repeats_mistake",
    ]
    assert RejectReason.EMPTY == "empty"


def test_module_has_no_engine_network_clock_or_logging_imports():
    source = open(rf.__file__).read()
    for banned in ("import logging", "import time", "import socket", "httpx", "vllm", "torch",
                   "import threading", "import amr_sd", "from amr_sd.mathcheck", "math_verify import"):
        assert banned not in source


# --- v2: the first wrong step written out right ----------------------------------------------------

ATTEMPT = "Step 1: 12 + 30 = 42.\nStep 2: 42 * 4 = 178.\nStep 3: 178 - 20 = 158.\nThe answer is 158."
PEER = "Step 1: 12 + 30 = 42.\n\nStep 2:  42 * 4 = 168.\nStep 3: 168 - 20 = 148.\nThe answer is 148."


def test_first_difference_is_the_first_line_that_differs_beyond_layout():
    # Blank lines and doubled spaces are layout: step 1 matches, step 2 is where they part.
    assert first_difference(ATTEMPT, PEER) == ("Step 2: 42 * 4 = 178.", "Step 2: 42 * 4 = 168.")


def test_first_difference_skips_wording_layout_and_restated_operands():
    # The peer words its steps differently and restates the operation first: the first number it
    # writes in place of another is step 2's result.
    peer = ("Start with 12.\nStep 1: Compute (12 + 30) = 42\nStep 2: Multiply: 42 * 4 = 168\n"
            "Step 3: 168 - 20 = 148")
    assert first_difference(ATTEMPT, peer) == ("Step 2: 42 * 4 = 178.",
                                                "Step 2: Multiply: 42 * 4 = 168")


def test_first_difference_of_a_prefix_or_an_equal_text_is_none():
    assert first_difference(ATTEMPT, ATTEMPT) is None
    assert first_difference("Step 1: 12 + 30 = 42.", ATTEMPT) is None


def test_v2_critique_prompt_shows_where_attempt_and_peer_first_differ():
    prompt = writer_prompt(CRITIQUE, problem="P", rollout_text=ATTEMPT, feedback="F",
                           peer_text=PEER, template="v2")
    assert ("Where the two attempts first differ:\n"
            "The incorrect attempt writes: Step 2: 42 * 4 = 178.\n"
            "The accepted attempt writes: Step 2: 42 * 4 = 168.\n") in prompt
    assert prompt.index("An attempt that the verifier accepted") < prompt.index("first differ")
    assert prompt.endswith("Output only: <critique>...</critique>")
    assert "write that one step out" in prompt and "do NOT state the final answer" in prompt


def test_v2_critique_without_a_peer_has_no_difference_section():
    prompt = writer_prompt(CRITIQUE, problem="P", rollout_text=ATTEMPT, template="v2")
    assert "first differ" not in prompt and "accepted attempt writes" not in prompt


def test_v1_is_untouched_by_the_difference():
    prompt = writer_prompt(CRITIQUE, problem="P", rollout_text=ATTEMPT, peer_text=PEER)
    assert "first differ" not in prompt and prompt.endswith(CRITIQUE_TEMPLATE[-40:])


def test_an_unknown_template_version_is_refused():
    with pytest.raises(ValueError, match="template version 'v9'"):
        writer_prompt(HINT, problem="P", rollout_text="R", template="v9")


def test_an_intermediate_correction_passes_and_a_last_step_correction_is_the_answer():
    # A v2 critique states the faulty step's right value: allowed while it is intermediate, refused
    # when the faulty step is the last one, whose right value is the final answer (148).
    middle = "Step 2 is wrong: Step 2: 42 * 4 = 168."
    assert accept(middle, answers=["148"]) is None
    last = "Step 3 is wrong: Step 3: 168 - 20 = 148."
    assert accept(last, answers=["148"]) is RejectReason.CONTAINS_ANSWER


def test_mistaken_numbers_are_the_departing_lines_numbers_the_peer_never_writes():
    assert mistaken_numbers(ATTEMPT, PEER) == ["178"]
    # A wrong operand copied from nowhere: the operand and the result it led to; "4" is the
    # peer's too, so restating it is no mistake.
    operand = "Step 1: 12 + 30 = 42.\nStep 2: 43 * 4 = 172.\nStep 3: 172 - 20 = 152."
    assert mistaken_numbers(operand, PEER) == ["43", "172"]
    # Negative and comma-grouped numbers compare by value.
    assert mistaken_numbers("Step 1: 5 - 1,050 = -1,055", "Step 1: 5 - 1050 = -1045") == ["-1055"]


def test_mistaken_numbers_of_an_attempt_that_never_departs_is_empty():
    assert mistaken_numbers(ATTEMPT, ATTEMPT) == []
    assert mistaken_numbers("Step 1: 12 + 30 = 42.", ATTEMPT) == []


def test_a_critique_that_restates_the_wrong_value_is_refused():
    mistakes = mistaken_numbers(ATTEMPT, PEER)
    assert accept("Step 2 should be: 42 * 4 = 168.", mistakes=mistakes) is None
    assert accept("Step 2 should be: 42 * 4 = 168, not 178.", mistakes=mistakes) is \
        RejectReason.REPEATS_MISTAKE
    # By value, as a whole number: "178.0" is the mistake, "1780" and "x178" are not.
    assert accept("Step 2 gives 178.0, recheck it.", mistakes=mistakes) is \
        RejectReason.REPEATS_MISTAKE
    assert accept("Step 2: 42 * 4 = 168, and 1780 / 10 is another number.",
                  mistakes=mistakes) is None
    # Without mistakes (a hint, v1, no peer) the same text passes.
    assert accept("Step 2 should be: 42 * 4 = 168, not 178.") is None
