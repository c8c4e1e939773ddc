"""Specification of amr_sd.algo.context (docs/method.md step 6): student and teacher contexts in
token ids.

Rendering uses the embedded model's real tokenizer (SmolLM2 chat template), not a stand-in: the
point is that our rendering agrees with the tokenizer's own.
"""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from amr_sd.algo.context import render_prompt, splice, with_block
from amr_sd.algo.reflection import CRITIQUE, HINT, opening_tag, teacher_block
from amr_sd.engine.models import materialize_embedded

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
MULTI_TURN = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 1 + 1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "What is 2 + 3?"},
]
BLOCK = teacher_block(HINT, "What do you get if you count on from 2?")


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


# --- with_block --------------------------------------------------------------------------------


def test_with_block_appends_to_the_last_user_message_only():
    out = with_block(MULTI_TURN, BLOCK)
    assert out[3] == {"role": "user", "content": "What is 2 + 3?" + BLOCK}
    # The earlier user turn, the system and the assistant turns are unchanged (G5: nothing else).
    assert out[:3] == MULTI_TURN[:3]


def test_with_block_appends_to_the_last_user_message_even_when_an_assistant_turn_follows():
    messages = MULTI_TURN[:2] + [{"role": "assistant", "content": "Let me think."}]
    out = with_block(messages, BLOCK)
    assert out[1]["content"] == "What is 1 + 1?" + BLOCK
    assert out[2] == {"role": "assistant", "content": "Let me think."}


def test_with_block_leaves_the_input_messages_unmodified():
    before = copy.deepcopy(MULTI_TURN)
    out = with_block(MULTI_TURN, BLOCK)
    assert MULTI_TURN == before
    assert out[3] is not MULTI_TURN[3]


# --- splice ------------------------------------------------------------------------------------


def test_splice_returns_prompt_then_response_and_the_start_of_the_response():
    sequence, start = splice([1, 2, 3, 4], [28, 29, 30])
    assert (sequence, start) == ([1, 2, 3, 4, 28, 29, 30], 4)


def test_splice_tail_is_exactly_the_response_ids():
    # Ids as sampled, not as re-tokenising their text would give: they must survive untouched.
    response = (28, 29, 30, 2)
    sequence, start = splice([1, 5, 9], response)
    assert sequence[start:] == list(response)
    assert len(sequence) - start == len(response)


# --- render_prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [MESSAGES, MULTI_TURN], ids=["single_turn", "multi_turn"])
def test_render_prompt_equals_the_tokenizers_own_chat_template_ids(tokenizer, messages):
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert render_prompt(tokenizer, messages=messages) == expected


@pytest.mark.parametrize("kind", [HINT, CRITIQUE])
def test_prefill_adds_exactly_its_own_tokens_at_the_end(tokenizer, kind):
    plain = render_prompt(tokenizer, messages=MESSAGES)
    prefilled = render_prompt(tokenizer, messages=MESSAGES, prefill=opening_tag(kind))
    assert prefilled[:len(plain)] == plain
    assert prefilled[len(plain):] == tokenizer.encode(opening_tag(kind), add_special_tokens=False)


def test_render_prompt_of_raw_text_is_the_plain_encoding(tokenizer):
    assert render_prompt(tokenizer, text="What is 2 + 3?") == tokenizer.encode("What is 2 + 3?")


@pytest.mark.parametrize("messages", [MESSAGES, MULTI_TURN], ids=["single_turn", "multi_turn"])
def test_teacher_prompt_differs_from_student_only_by_the_block_in_the_last_user_message(
        tokenizer, messages):
    student = tokenizer.decode(render_prompt(tokenizer, messages=messages))
    teacher = tokenizer.decode(render_prompt(tokenizer, messages=with_block(messages, BLOCK)))
    # The last user content ends at its last occurrence; the block sits right after it.
    end = student.rindex("What is 2 + 3?") + len("What is 2 + 3?")
    assert teacher == student[:end] + BLOCK + student[end:]
