"""Specification of `amr_client.integrations.shapes`: each trainer's layout on one hand-made batch.

The batch: two rollouts, right-padded to S = 6 with pad id 0.
    row 0: prompt [11, 12, 13], response [21, 22]      -> input_ids [11, 12, 13, 21, 22,  0]
    row 1: prompt [14],         response [23, 24, 25]  -> input_ids [14, 23, 24, 25,  0,  0]
The service returns one advantage per response token (values exact in float32):
    [[0.5, -1.0], [2.0, 0.25, -0.75]]
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from amr_client.integrations.shapes import scatter_to_mask, to_full_sequence, to_token_lists

INPUT_IDS = np.array([[11, 12, 13, 21, 22, 0],
                      [14, 23, 24, 25, 0, 0]])  # (B, S)
PROMPT_LENGTHS = [3, 1]
RESPONSES = [[21, 22], [23, 24, 25]]
ADVANTAGES = [[0.5, -1.0], [2.0, 0.25, -0.75]]
S = INPUT_IDS.shape[1]


# ------------------------------------------------------------------------------------------------
# Full-sequence layouts: NeMo-RL (absolute), ROLL and AReaL (shifted by one)
# ------------------------------------------------------------------------------------------------


def test_nemo_rl_layout_puts_token_t_at_prompt_length_plus_t():
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)
    # row 0: positions 3, 4 hold tokens 21, 22; row 1: positions 1, 2, 3 hold 23, 24, 25.
    np.testing.assert_array_equal(values, [[0, 0, 0, 0.5, -1.0, 0],
                                           [0, 2.0, 0.25, -0.75, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 0],
                                         [0, 1, 1, 1, 0, 0]])


def test_nemo_rl_values_sit_on_the_response_tokens_of_input_ids():
    # NeMo-RL: index p is the token input_ids[:, p]; its loss slices [:, 1:] itself.
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)
    assert INPUT_IDS[mask].tolist() == [21, 22, 23, 24, 25]
    assert values[mask].tolist() == [0.5, -1.0, 2.0, 0.25, -0.75]


def test_roll_layout_is_one_shorter_and_holds_the_next_token():
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S - 1, shift=1)
    # Width S - 1 = 5; token at position p lands at p - 1: row 0 at 2, 3; row 1 at 0, 1, 2.
    np.testing.assert_array_equal(values, [[0, 0, 0.5, -1.0, 0],
                                           [2.0, 0.25, -0.75, 0, 0]])
    # ROLL indexes logprobs, advantages and response_mask[:, 1:] by the token they predict.
    assert INPUT_IDS[:, 1:][mask].tolist() == [21, 22, 23, 24, 25]


def test_roll_mask_equals_the_absolute_response_mask_sliced_by_one():
    _, absolute = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)
    _, shifted = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S - 1, shift=1)
    np.testing.assert_array_equal(shifted, absolute[:, 1:])  # ROLL: response_mask[:, 1:]


def test_areal_layout_keeps_the_width_and_holds_the_next_token():
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S, shift=1)
    # Width S = 6; as ROLL plus a last column that no response reaches.
    np.testing.assert_array_equal(values, [[0, 0, 0.5, -1.0, 0, 0],
                                           [2.0, 0.25, -0.75, 0, 0, 0]])
    assert np.roll(INPUT_IDS, -1, axis=1)[mask].tolist() == [21, 22, 23, 24, 25]


def test_areal_layout_equals_torch_roll_by_minus_one_of_the_absolute_layout():
    # AReaL's _compute_advantages applies torch.roll(x, shifts=-1, dims=-1) to loss_mask/logprobs.
    absolute, absolute_mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)
    shifted, shifted_mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S, shift=1)
    np.testing.assert_array_equal(shifted, np.roll(absolute, -1, axis=1))
    np.testing.assert_array_equal(shifted_mask, np.roll(absolute_mask, -1, axis=1))


def test_left_padding_is_added_to_the_prompt_length():
    # Row 1 left-padded by 2: [0, 0, 14, 23, 24, 25] puts its response at positions 3, 4, 5.
    values, _ = to_full_sequence([[2.0, 0.25, -0.75]], [1 + 2], S)
    np.testing.assert_array_equal(values, [[0, 0, 0, 2.0, 0.25, -0.75]])


def test_pad_value_fills_every_position_off_the_response():
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S, pad_value=-9.0)
    assert (values[~mask] == -9.0).all()
    assert values[mask].tolist() == [0.5, -1.0, 2.0, 0.25, -0.75]


def test_values_are_float32_unless_a_dtype_is_given():
    values, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)
    assert values.dtype == np.float32 and mask.dtype == np.bool_
    values64, _ = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S, dtype=np.float64)
    assert values64.dtype == np.float64


def test_accepts_the_numpy_rows_of_advantages_numpy():
    rows = [np.asarray(r, dtype=np.float32) for r in ADVANTAGES]  # ScoreResult.advantages_numpy()
    values, _ = to_full_sequence(rows, np.array(PROMPT_LENGTHS), S)
    np.testing.assert_array_equal(values, to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)[0])


def test_accepts_a_torch_length_tensor_as_prompt_lengths():
    torch = pytest.importorskip("torch")
    # NeMo-RL's prompt lengths are repeated_batch["length"], an int tensor.
    values, _ = to_full_sequence(ADVANTAGES, torch.tensor(PROMPT_LENGTHS), S)
    np.testing.assert_array_equal(values, to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S)[0])


def test_response_past_seq_len_is_an_error_naming_the_row():
    # Row 1: prompt 1 + 3 tokens needs 4 positions; seq_len 3 is too short.
    with pytest.raises(ValueError, match=r"row 1: 3 response tokens after a prompt of 1 need 4 "
                                         r"positions with shift=0, but seq_len is 3"):
        to_full_sequence([[0.5], [2.0, 0.25, -0.75]], [1, 1], 3)


def test_roll_width_s_minus_one_fits_a_response_that_ends_the_sequence():
    # A response that ends the row (positions 4, 5 of S = 6) fits S - 1 columns: values at 3, 4.
    values, _ = to_full_sequence([[1.0, 2.0]], [4], S - 1, shift=1)
    np.testing.assert_array_equal(values, [[0, 0, 0, 1.0, 2.0]])


def test_negative_prompt_length_is_an_error_naming_the_row():
    with pytest.raises(ValueError, match=r"row 1: prompt length -1 is negative"):
        to_full_sequence(ADVANTAGES, [3, -1], S)


def test_shift_one_rejects_an_empty_prompt():
    # The token at position 0 is predicted by no logit, so it has no index in a shifted layout.
    with pytest.raises(ValueError, match=r"row 0: prompt length 0 with shift=1"):
        to_full_sequence([[1.0]], [0], S, shift=1)


def test_shift_other_than_zero_or_one_is_an_error():
    with pytest.raises(ValueError, match=r"shift must be 0 \(NeMo-RL\) or 1 \(ROLL, AReaL\), "
                                         r"got 2"):
        to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S, shift=2)


def test_prompt_lengths_must_match_the_number_of_rollouts():
    with pytest.raises(ValueError, match=r"got 1 prompt lengths for 2 rollouts"):
        to_full_sequence(ADVANTAGES, [3], S)


def test_a_row_that_is_not_one_dimensional_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"rollout 1: advantages must be 1-D"):
        to_full_sequence([[0.5], [[2.0, 0.25]]], [1, 1], S)


# ------------------------------------------------------------------------------------------------
# scatter_to_mask: the trainer's own mask, in its own indexing
# ------------------------------------------------------------------------------------------------


def test_scatter_to_mask_fills_marked_positions_in_order_across_spans():
    # A two-turn row: assistant tokens at 1, 2 and 4 (a tool message at 3 is unmarked).
    mask = [[0, 1, 1, 0, 1, 0]]
    values = scatter_to_mask([[7.0, 8.0, 9.0]], mask)
    np.testing.assert_array_equal(values, [[0, 7.0, 8.0, 0, 9.0, 0]])


def test_scatter_to_mask_equals_to_full_sequence_on_its_mask():
    expected, mask = to_full_sequence(ADVANTAGES, PROMPT_LENGTHS, S - 1, shift=1)
    np.testing.assert_array_equal(scatter_to_mask(ADVANTAGES, mask.astype(np.int64)), expected)


def test_scatter_to_mask_accepts_a_float_mask():
    # AReaL's loss_mask is float after `data["loss_mask"].float()` and the roll.
    values = scatter_to_mask([[3.0]], np.array([[0.0, 1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(values, [[0, 3.0, 0]])


def test_scatter_to_mask_count_mismatch_is_an_error_naming_the_row():
    # Row 1 marks 2 positions for 3 values, as when the ids scored were not the ids the mask marks.
    mask = [[0, 0, 0, 1, 1, 0],
            [0, 1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"row 1: the mask marks 2 positions but the service "
                                         r"returned 3 advantages"):
        scatter_to_mask(ADVANTAGES, mask)


def test_scatter_to_mask_rejects_a_mask_with_another_row_count():
    with pytest.raises(ValueError, match=r"mask has 1 rows for 2 rollouts"):
        scatter_to_mask(ADVANTAGES, [[0, 0, 0, 1, 1, 0]])


def test_scatter_to_mask_rejects_a_one_dimensional_mask():
    with pytest.raises(ValueError, match=r"mask must be 2-D \(B, L\), got shape \(6,\)"):
        scatter_to_mask([[0.5, -1.0]], [0, 0, 0, 1, 1, 0])


# ------------------------------------------------------------------------------------------------
# Lists per step: rllm, prime-rl
# ------------------------------------------------------------------------------------------------


def test_rllm_step_advantage_is_a_plain_float_list_as_long_as_response_ids():
    # rllm checks isinstance(step.advantage, list) and compares with len(step.response_ids).
    rows = [np.asarray(r, dtype=np.float32) for r in ADVANTAGES]
    lists = to_token_lists(rows, [len(r) for r in RESPONSES])
    assert lists == [[0.5, -1.0], [2.0, 0.25, -0.75]]
    assert all(type(lst) is list and all(type(v) is float for v in lst) for lst in lists)


def test_prime_rl_length_counts_sampled_tokens_over_the_trace_nodes():
    # A trace's nodes: prompt [F, F], assistant [T, T], tool [F], assistant [T] -> 3 sampled tokens;
    # assign_advantages(trace, values) then gives nodes 1 and 3 the values [1.0, 2.0] and [3.0].
    node_masks = [[False, False], [True, True], [False], [True]]
    sampled = sum(sum(m) for m in node_masks)
    assert to_token_lists([[1.0, 2.0, 3.0]], [sampled]) == [[1.0, 2.0, 3.0]]


def test_token_list_length_mismatch_is_an_error_naming_rollout_expected_and_got():
    with pytest.raises(ValueError, match=r"rollout 1: expected 4 advantages \(the trainer's "
                                         r"response length\), got 3"):
        to_token_lists(ADVANTAGES, [2, 4])


def test_token_lists_need_one_response_length_per_rollout():
    with pytest.raises(ValueError, match=r"got 3 response lengths for 2 rollouts"):
        to_token_lists(ADVANTAGES, [2, 3, 1])


# ------------------------------------------------------------------------------------------------
# Dependencies
# ------------------------------------------------------------------------------------------------


def test_module_imports_and_runs_without_torch():
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "from amr_client.integrations.shapes import to_full_sequence\n"
        "values, _ = to_full_sequence([[1.0]], [1], 2)\n"
        "assert values.tolist() == [[0.0, 1.0]]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
