"""Put AMR-SD advantages into trainers that index by absolute position or take plain lists.

The service answers `advantages[i][t]` for response token t of rollout i: no leading sentinel and
no shift (see `amr_client.schemas`). Trainers store the same numbers in one of three layouts:

- NeMo-RL: `train_data["advantages"]` (B, S), index p = the token at position p:
  `to_full_sequence(adv, prompt_lengths, S)`.
- ROLL: `batch["advantages"]` (B, S - 1), index p = the token at position p + 1:
  `to_full_sequence(adv, prompt_lengths, S - 1, shift=1)`.
- AReaL: `data["advantages"]` (B, S), index p = the token at position p + 1:
  `to_full_sequence(adv, prompt_lengths, S, shift=1)`.
- rllm: `step.advantage: list[float]`, index t = response token t:
  `to_token_lists(adv, [len(step.response_ids), ...])`.
- prime-rl: `assign_advantages(trace, values)`, index k = the trace's k-th sampled token:
  `to_token_lists(adv, [mask-True tokens over trace.nodes, ...])`.

S is the width of the trainer's right-padded `input_ids` (prompt + response). Inside a trainer's
hook the loss mask is usually at hand in the trainer's own indexing; `scatter_to_mask(adv, mask)`
then needs no prompt lengths (NeMo-RL `token_mask`, ROLL `response_mask[:, 1:]`, AReaL's
`loss_mask` after its `torch.roll(-1)`).

These functions only move the numbers. Which weights produced them is chosen at the `score` call:
pass `policy=sync.policy_for(step)` with `amr_client.integrations.policy.PolicySync`, or the
teacher is the service's starting model, not the policy being trained (docs/integrations.md).

Sources read (commit), which state the layouts above:
- NeMo-RL (NVIDIA-NeMo/RL @7ea279a): `nemo_rl/algorithms/loss/loss_functions.py`
  (`ClippedPGLossFn.__call__` reads `data["advantages"][:, 1:]` beside `token_mask[:, 1:]`),
  `nemo_rl/models/policy/workers/dtensor_policy_worker.py` (logprobs get a leading 0 so that
  index p is token p), `nemo_rl/data/llm_message_utils.py` (`batched_message_log_to_flat_message`
  pads on the right), `nemo_rl/algorithms/grpo.py` (`repeated_batch["length"]`: prompt length).
- ROLL (alibaba/ROLL @8eb27cc): `roll/utils/functionals.py` (`postprocess_generate` moves the
  left-padded prompt to a right-padded sequence and writes logprobs at
  `[prompt_len - 1 : valid_length - 1]`; `compute_advantage` masks with `response_mask[:, 1:]`).
- AReaL (inclusionAI/AReaL @4aef98d): `areal/trainer/ppo/actor.py` (`_compute_advantages` rolls
  `loss_mask` and `logprobs` by -1 and keeps the full width), `areal/workflow/rlvr.py` (a sequence
  is prompt + output, `loss_mask` 0 on the prompt), `areal/utils/data.py` (right padding).
- rllm (rllm-org/rllm @9beb6e0): `rllm/types.py` (`Step.advantage: list[float] | float | None`),
  `rllm/trainer/algorithms/advantage.py` (`_collect_precomputed_advantages`).
- prime-rl (PrimeIntellect-ai/prime-rl @559b447): `src/prime_rl/orchestrator/algo/routing.py`
  (`assign_advantages`, one value per mask-True token over the trace's nodes, in node order).

Every function is pure and needs only numpy; arrays come back as numpy (`torch.from_numpy(x)`
turns them into tensors without a copy). A length that does not match raises `ValueError` naming
the row: the service's output is never truncated or padded to fit.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

__all__ = ["scatter_to_mask", "to_full_sequence", "to_token_lists"]

# What `ScoreResult.advantages()` / `.advantages_numpy()` return: one 1-D row per rollout.
Advantages = Sequence[Sequence[float] | np.ndarray]


def to_full_sequence(advantages: Advantages, prompt_lengths: Sequence[int], seq_len: int, *,
                     shift: int = 0, pad_value: float = 0.0,
                     dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Place each rollout's advantages at their positions in a right-padded full sequence.

    Response token t of row i goes to index `prompt_lengths[i] + t - shift`:
    - `shift=0`: index p holds the value of the token at position p (NeMo-RL; its loss slices
      `[:, 1:]` itself). Use `seq_len = input_ids.shape[1]`.
    - `shift=1`: index p holds the value of the token at position p + 1, the token predicted by
      the logits at p (ROLL with `seq_len = input_ids.shape[1] - 1`, AReaL with
      `seq_len = input_ids.shape[1]`).

    `prompt_lengths[i]` is the position of row i's first response token: its prompt length,
    plus any left padding in front of it.

    Returns `(values, mask)`, both (B, seq_len): `values` in `dtype` with `pad_value` off the
    response, `mask` True exactly where a response value was written.
    """
    rows = _rows(advantages)
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 (NeMo-RL) or 1 (ROLL, AReaL), got {shift}")
    if len(prompt_lengths) != len(rows):
        raise ValueError(f"got {len(prompt_lengths)} prompt lengths for {len(rows)} rollouts")
    seq_len = operator.index(seq_len)
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    mask = np.zeros((len(rows), seq_len), dtype=bool)  # (B, L)
    for i, (row, prompt_length) in enumerate(zip(rows, prompt_lengths)):
        prompt_length = operator.index(prompt_length)
        if prompt_length < 0:
            raise ValueError(f"row {i}: prompt length {prompt_length} is negative")
        if prompt_length < shift:
            # With shift=1 the value of the token at position 0 would sit at index -1: no logit
            # predicts a sequence's first token, so a response needs at least one prompt token.
            raise ValueError(f"row {i}: prompt length 0 with shift=1 leaves the first response "
                             "token no position; the prompt needs at least one token")
        start = prompt_length - shift
        end = start + len(row)
        if end > seq_len:
            raise ValueError(f"row {i}: {len(row)} response tokens after a prompt of "
                             f"{prompt_length} need {end} positions with shift={shift}, "
                             f"but seq_len is {seq_len}")
        mask[i, start:end] = True
    return _scatter(rows, mask, pad_value, dtype), mask


def scatter_to_mask(advantages: Advantages, mask: Any, *, pad_value: float = 0.0,
                    dtype: Any = np.float32) -> np.ndarray:
    """Write row i's advantages, in order, into the positions that row i of `mask` marks.

    `mask` is (B, L), bool or 0/1 (a CPU tensor works: `mask.cpu().numpy()` for a GPU one),
    already in the trainer's indexing: NeMo-RL `train_data["token_mask"]`, ROLL
    `batch["response_mask"][:, 1:]`, AReaL `data["loss_mask"]` after `_compute_advantages` has
    rolled it. The k-th marked position gets the k-th advantage, so a mask with several spans
    (turns) takes the concatenation of their tokens.

    Pass the mask before per-sample masking (NeMo-RL's `token_mask * sample_mask`, ROLL's
    `final_response_mask`): a row masked out entirely marks no positions and fails the count check.

    Returns `values` (B, L) in `dtype`, `pad_value` wherever `mask` is false.
    """
    rows = _rows(advantages)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (B, L), got shape {mask.shape}")
    if mask.shape[0] != len(rows):
        raise ValueError(f"mask has {mask.shape[0]} rows for {len(rows)} rollouts")
    mask = mask.astype(bool)  # (B, L)
    for i, row in enumerate(rows):
        marked = int(mask[i].sum())
        if marked != len(row):
            raise ValueError(f"row {i}: the mask marks {marked} positions but the service returned "
                             f"{len(row)} advantages; score exactly the tokens the mask marks")
    return _scatter(rows, mask, pad_value, dtype)


def to_token_lists(advantages: Advantages, response_lengths: Sequence[int]) -> list[list[float]]:
    """One plain `list[float]` per rollout, checked against the trainer's own token count.

    rllm: `step.advantage = lists[i]` with `response_lengths[i] = len(step.response_ids)`; rllm
    replaces a list of the wrong length by zeros with only a warning, and rejects a numpy array
    (it checks `isinstance(step.advantage, list)`), hence plain floats and the check here.
    prime-rl: `assign_advantages(trace, lists[i])` with `response_lengths[i]` the number of
    mask-True tokens over `trace.nodes`.
    """
    rows = _rows(advantages)
    if len(response_lengths) != len(rows):
        raise ValueError(f"got {len(response_lengths)} response lengths for {len(rows)} rollouts")
    lists = []
    for i, (row, expected) in enumerate(zip(rows, response_lengths)):
        expected = operator.index(expected)
        if len(row) != expected:
            raise ValueError(f"rollout {i}: expected {expected} advantages (the trainer's response "
                             f"length), got {len(row)}")
        lists.append(row.tolist())
    return lists


def _rows(advantages: Advantages) -> list[np.ndarray]:
    rows = []
    for i, row in enumerate(advantages):
        # float64 keeps the JSON values exact until the caller's dtype is applied.
        values = np.asarray(row, dtype=np.float64)  # (T_i,)
        if values.ndim != 1:
            raise ValueError(f"rollout {i}: advantages must be 1-D, one value per response token, "
                             f"got shape {values.shape}")
        rows.append(values)
    return rows


def _scatter(rows: list[np.ndarray], mask: np.ndarray, pad_value: float, dtype: Any) -> np.ndarray:
    values = np.full(mask.shape, pad_value, dtype=dtype)  # (B, L)
    for i, row in enumerate(rows):
        values[i, mask[i]] = row
    return values
