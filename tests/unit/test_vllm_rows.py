"""Reading vLLM's flat prompt logprobs: the actual token's value per row, or a loud failure."""

import numpy as np
import pytest
from vllm.logprobs import FlatLogprobs, Logprob

from amr_sd.engine.vllm import _actual_token_logprobs
from amr_sd.errors import EngineFailure


def rows(*entries):
    flat = FlatLogprobs()
    flat.append(None)  # position 0 has no logprob
    for token, value in entries:
        flat.append({token: Logprob(logprob=value, rank=1)})
    return flat


def test_reads_the_logprob_of_each_actual_token_from_start():
    flat = rows((5, -1.5), (7, -0.25), (9, -3.0))
    np.testing.assert_array_equal(_actual_token_logprobs(flat, [1, 5, 7, 9], 2), [-0.25, -3.0])


def test_a_row_for_another_token_fails_instead_of_returning_its_value():
    flat = rows((5, -1.5), (8, -0.25))
    with pytest.raises(EngineFailure, match="scored token 8 at position 2, expected 7"):
        _actual_token_logprobs(flat, [1, 5, 7], 1)


def test_a_missing_row_fails():
    with pytest.raises(EngineFailure, match="2 prompt logprob rows for 3 tokens"):
        _actual_token_logprobs(rows((5, -1.5)), [1, 5, 7], 1)


def test_start_zero_is_a_caller_bug():
    with pytest.raises(ValueError, match="position 0"):
        _actual_token_logprobs(rows((5, -1.5)), [1, 5], 0)
