"""Specification of bad input: every rejected request names the field path and the reason.

Requests are validated with `ScoreRequest.model_validate` (what the HTTP layer does with the body)
and the pydantic error is turned into the server's `InvalidRequest` by `from_validation_error`,
so `.field` is exactly what a user sees in `{"error": {"field": ...}}`.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from amr_client.schemas import ScoreRequest, ScoringConfig
from amr_sd.errors import InvalidRequest, from_validation_error
from amr_sd.scoring import Scorer

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]

MINIMAL = {
    "groups": [{
        "prompt": {"messages": MESSAGES},
        "rollouts": [
            {"token_ids": [28, 29, 30], "reward": 1.0},
            {"token_ids": [28, 29, 30], "reward": 0.0},
        ],
    }],
    "step": 0,
}


def payload() -> dict:
    """A fresh copy of the smallest valid request, to break one field at a time."""
    return copy.deepcopy(MINIMAL)


def error_of(body: dict) -> InvalidRequest:
    with pytest.raises(ValidationError) as exc:
        ScoreRequest.model_validate(body)
    return from_validation_error(exc.value)


def error_of_json(text: str) -> InvalidRequest:
    with pytest.raises(ValidationError) as exc:
        ScoreRequest.model_validate_json(text)
    return from_validation_error(exc.value)


# --- shape of the request ---------------------------------------------------------------------


def test_empty_groups_is_rejected_at_groups():
    body = payload()
    body["groups"] = []
    err = error_of(body)
    assert err.field == "groups"
    assert "at least 1" in err.message


def test_group_without_rollouts_is_rejected_at_its_rollouts():
    body = payload()
    body["groups"][0]["rollouts"] = []
    err = error_of(body)
    assert err.field == "groups[0].rollouts"
    assert "at least 1" in err.message


def test_rollout_without_tokens_is_rejected_at_its_token_ids():
    body = payload()
    body["groups"][0]["rollouts"][1]["token_ids"] = []
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].token_ids"
    assert "at least 1" in err.message


def test_negative_token_id_is_rejected_at_its_position():
    body = payload()
    body["groups"][0]["rollouts"][1]["token_ids"] = [28, -1, 30]
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].token_ids[1]"
    assert "greater than or equal to 0" in err.message


def test_negative_prompt_token_id_is_rejected_at_its_position():
    body = payload()
    body["groups"][0]["prompt"]["prompt_token_ids"] = [1, -5]
    err = error_of(body)
    assert err.field == "groups[0].prompt.prompt_token_ids[1]"
    assert "greater than or equal to 0" in err.message


def test_negative_step_is_rejected_at_step():
    body = payload()
    body["step"] = -1
    err = error_of(body)
    assert err.field == "step"
    assert "greater than or equal to 0" in err.message


# --- rewards must be finite -------------------------------------------------------------------


def test_nan_reward_is_rejected_as_not_finite():
    body = payload()
    body["groups"][0]["rollouts"][1]["reward"] = float("nan")
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].reward"
    assert "finite" in err.message


def test_positive_infinite_reward_is_rejected_as_not_finite():
    body = payload()
    body["groups"][0]["rollouts"][1]["reward"] = float("inf")
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].reward"
    assert "finite" in err.message


def test_json_nan_literal_reward_is_parsed_then_rejected_as_not_finite():
    # Strict JSON has no NaN, but pydantic's JSON parser accepts the literal (Python's json.dumps
    # writes it), so the reward validator is what stops it, not the parser.
    text = json.dumps(payload()).replace('"reward": 0.0', '"reward": NaN')
    assert '"reward": NaN' in text
    err = error_of_json(text)
    assert err.field == "groups[0].rollouts[1].reward"
    assert "finite" in err.message


def test_json_infinity_literal_reward_is_parsed_then_rejected_as_not_finite():
    text = json.dumps(payload()).replace('"reward": 0.0', '"reward": Infinity')
    err = error_of_json(text)
    assert err.field == "groups[0].rollouts[1].reward"
    assert "finite" in err.message


# --- unknown fields are errors, never ignored -------------------------------------------------


def test_unknown_config_field_is_rejected_at_its_name():
    body = payload()
    body["config"] = {"tau_pos2": 0.5}
    err = error_of(body)
    assert err.field == "config.tau_pos2"
    assert "Extra inputs are not permitted" in err.message


def test_unknown_top_level_field_is_rejected_at_its_name():
    body = payload()
    body["temperature"] = 1.0
    err = error_of(body)
    assert err.field == "temperature"
    assert "Extra inputs are not permitted" in err.message


def test_misspelt_reflection_override_is_rejected_not_ignored():
    body = payload()
    body["groups"][0]["rollouts"][1]["reflection_overide"] = "Check the carry."
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].reflection_overide"
    assert "Extra inputs are not permitted" in err.message


# --- student_logprobs -------------------------------------------------------------------------
# The check spans two fields (a model validator), so the path stops at the rollout and the
# message names `student_logprobs`.


def test_student_logprobs_of_wrong_length_is_rejected_at_the_field():
    body = payload()
    body["groups"][0]["rollouts"][1]["student_logprobs"] = [-0.1, -0.2]
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].student_logprobs"
    assert "has 2 values for 3 token_ids" in err.message


def test_positive_student_logprob_is_rejected_as_not_a_log_probability():
    body = payload()
    body["groups"][0]["rollouts"][1]["student_logprobs"] = [-0.1, 0.5, -0.2]
    err = error_of(body)
    assert err.field == "groups[0].rollouts[1].student_logprobs"
    assert "value 0.5 at index 1 is not a log-probability" in err.message


# --- prompt -----------------------------------------------------------------------------------


def test_prompt_with_both_messages_and_text_is_rejected():
    body = payload()
    body["groups"][0]["prompt"]["text"] = "What is 2 + 3?"
    err = error_of(body)
    assert err.field == "groups[0].prompt"
    assert "exactly one of `messages` or `text`" in err.message


def test_prompt_with_neither_messages_nor_text_is_rejected():
    body = payload()
    body["groups"][0]["prompt"] = {"prompt_token_ids": [28, 29]}
    err = error_of(body)
    assert err.field == "groups[0].prompt"
    assert "exactly one of `messages` or `text`" in err.message


def test_messages_without_a_user_message_are_rejected():
    # The teacher's reflection block goes into the last user message: there must be one.
    body = payload()
    body["groups"][0]["prompt"]["messages"] = [{"role": "system", "content": "Be brief."}]
    err = error_of(body)
    assert err.field == "groups[0].prompt"
    assert "needs a user message" in err.message


# --- config ranges ----------------------------------------------------------------------------


def test_config_decay_steps_zero_is_rejected():
    body = payload()
    body["config"] = {"decay_steps": 0}
    err = error_of(body)
    assert err.field == "config.decay_steps"
    assert "greater than or equal to 1" in err.message


def test_config_kappa_zero_is_rejected():
    body = payload()
    body["config"] = {"kappa": 0}
    err = error_of(body)
    assert err.field == "config.kappa"
    assert "greater than 0" in err.message


def test_config_negative_lambda_pos_is_rejected():
    body = payload()
    body["config"] = {"lambda_pos": -0.1}
    err = error_of(body)
    assert err.field == "config.lambda_pos"
    assert "greater than or equal to 0" in err.message


def test_config_unknown_schedule_is_rejected_listing_the_known_ones():
    body = payload()
    body["config"] = {"schedule": "step"}
    err = error_of(body)
    assert err.field == "config.schedule"
    assert "'linear', 'cosine', 'exponential' or 'constant'" in err.message


# --- valid requests ---------------------------------------------------------------------------


def test_return_alias_sets_the_returns_switches():
    # `return` is a Python keyword, so the wire name is an alias of `returns`.
    body = payload()
    body["return"] = {"cig": True}
    request = ScoreRequest.model_validate(body)
    assert request.returns.cig is True
    assert request.returns.logprobs is False


def test_minimal_request_parses_with_default_switches_and_no_config():
    request = ScoreRequest.model_validate(payload())
    assert request.step == 0
    assert request.config is None
    assert [r.token_ids for r in request.groups[0].rollouts] == [[28, 29, 30], [28, 29, 30]]
    assert request.groups[0].prompt.messages[0].content == "What is 2 + 3?"
    assert (request.returns.cig, request.returns.logprobs, request.returns.reflections) == \
        (False, False, True)


# --- Scorer.resolve_config: a request's config overrides only the fields it sets ---------------


def scorer_with_defaults(defaults: ScoringConfig) -> Scorer:
    # resolve_config needs no engine work; the Scorer only reads the tokenizer's special ids.
    engine = SimpleNamespace(tokenizer=SimpleNamespace(all_special_ids=[0, 1, 2]))
    return Scorer(engine, defaults=defaults)


def test_resolve_config_without_overrides_returns_the_server_defaults():
    defaults = ScoringConfig(lambda_pos=0.3, kappa=4.0)
    assert scorer_with_defaults(defaults).resolve_config(None) is defaults


def test_resolve_config_keeps_server_defaults_for_fields_the_request_leaves_unset():
    scorer = scorer_with_defaults(ScoringConfig(lambda_pos=0.3, kappa=4.0))
    request = ScoreRequest.model_validate({**payload(), "config": {"kappa": 2.0}})
    merged = scorer.resolve_config(request.config)
    assert merged.kappa == 2.0  # set by the request
    assert merged.lambda_pos == 0.3  # the server's default, not the class default 0.2
    assert merged.gamma_neg == 0.1  # the class default, untouched by either


def test_resolve_config_applies_a_field_the_request_sets_to_the_class_default():
    # Explicitly sending the class default (0.2) must still override the server's 0.3.
    scorer = scorer_with_defaults(ScoringConfig(lambda_pos=0.3))
    request = ScoreRequest.model_validate({**payload(), "config": {"lambda_pos": 0.2}})
    assert scorer.resolve_config(request.config).lambda_pos == 0.2


@pytest.mark.parametrize(("path", "value"), [
    (("step",), "3"),
    (("groups", 0, "rollouts", 0, "token_ids", 0), 7.0),
    (("groups", 0, "rollouts", 0, "reward"), "1"),
    (("groups", 0, "rollouts", 0, "reward"), True),
], ids=["string_step", "float_token_id", "string_reward", "bool_reward"])
def test_the_wire_schema_coerces_no_types(path, value):
    # "3" is not a step and 7.0 is not a token id: a trainer sending them has a bug to report.
    body = payload()
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert error_of(body).field == ".".join(str(p) for p in path).replace(".0", "[0]")


def test_the_client_turns_numpy_numbers_into_plain_json():
    import numpy as np

    from amr_client._base import build_score_body

    body = payload()
    body["groups"][0]["rollouts"][0] = {"token_ids": list(np.array([28, 29])), "reward": np.float64(1.0)}
    sent = build_score_body(body["groups"], step=np.int64(2))
    assert sent["step"] == 2 and sent["groups"][0]["rollouts"][0]["token_ids"] == [28, 29]
    assert type(sent["groups"][0]["rollouts"][0]["token_ids"][0]) is int


# --- numbers stay numbers, in the SDK's lax validation too ---------------------------------------
# The SDK validates laxly so that numpy and torch numbers pass; lax parsing must still not turn a
# verdict (True) or a text ("1") into a reward, step or token id.

NOT_NUMBERS = [
    (("groups", 0, "rollouts", 0, "reward"), True, "number, not a bool"),
    (("groups", 0, "rollouts", 0, "reward"), "1", "number, not a string"),
    (("groups", 0, "rollouts", 1, "reward"), False, "number, not a bool"),
    (("step",), True, "integer, not a bool"),
    (("step",), "3", "integer, not a string"),
    (("groups", 0, "rollouts", 0, "token_ids", 2), True, "integer, not a bool"),
    (("groups", 0, "rollouts", 0, "token_ids", 1), "29", "integer, not a string"),
    (("groups", 0, "prompt", "prompt_token_ids", 1), True, "integer, not a bool"),
    (("groups", 0, "rollouts", 0, "student_logprobs", 1), "-0.5", "number, not a string"),
    (("groups", 0, "rollouts", 0, "student_logprobs", 0), False, "number, not a bool"),
    (("config", "lambda_pos"), True, "number, not a bool"),
    (("config", "decay_steps"), "50", "integer, not a string"),
]


def with_value(path, value) -> dict:
    body = payload()
    body["groups"][0]["prompt"]["prompt_token_ids"] = [1, 2, 3]
    body["groups"][0]["rollouts"][0]["student_logprobs"] = [-0.1, -0.2, -0.3]
    body["config"] = {}
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


def server_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


@pytest.mark.parametrize(("path", "value", "reason"), NOT_NUMBERS,
                         ids=[f"{server_path(p)}={v!r}" for p, v, _ in NOT_NUMBERS])
def test_the_client_refuses_bools_and_strings_as_numbers(path, value, reason):
    from amr_client import InvalidRequestError
    from amr_client._base import build_score_body

    body = with_value(path, value)
    with pytest.raises(InvalidRequestError) as exc:
        build_score_body(body["groups"], step=body["step"], config=body["config"])
    assert exc.value.field == server_path(path)
    assert reason in exc.value.message


@pytest.mark.parametrize(("path", "value", "reason"), NOT_NUMBERS,
                         ids=[f"{server_path(p)}={v!r}" for p, v, _ in NOT_NUMBERS])
def test_the_server_names_the_field_and_the_reason_for_bools_and_strings(path, value, reason):
    err = error_of_json(json.dumps(with_value(path, value)))
    assert err.field == server_path(path)
    if "_ids" in err.field or "logprobs" in err.field:
        # Items of per-token lists: the server's strict validation refuses them itself, without
        # a Python call per item (a 512 x 1024 batch holds a million), in pydantic's words.
        kind = reason.split(",")[0]
        assert f"Input should be a valid {kind}" in err.message
    else:
        assert reason in err.message


def test_the_client_refuses_numpy_and_torch_booleans_as_rewards():
    import numpy as np
    import torch

    from amr_client import InvalidRequestError
    from amr_client._base import build_score_body

    for flag in (np.bool_(True), torch.tensor(True)):
        body = with_value(("groups", 0, "rollouts", 0, "reward"), flag)
        with pytest.raises(InvalidRequestError) as exc:
            build_score_body(body["groups"], step=0)
        assert exc.value.field == "groups[0].rollouts[0].reward"
        assert "number, not a bool" in exc.value.message


def test_the_client_still_takes_numpy_and_torch_numbers():
    import numpy as np
    import torch

    from amr_client._base import build_score_body

    body = payload()
    body["groups"][0]["rollouts"] = [
        {"token_ids": list(np.array([28, 29], dtype=np.int32)), "reward": np.float32(0.5),
         "student_logprobs": list(np.array([-0.5, -1.0]))},
        {"token_ids": [torch.tensor(28), 29], "reward": torch.tensor(0.0)},
    ]
    sent = build_score_body(body["groups"], step=np.int64(2), config={"decay_steps": np.int64(10)})
    rollouts = sent["groups"][0]["rollouts"]
    assert [r["reward"] for r in rollouts] == [0.5, 0.0]
    assert rollouts[0]["token_ids"] == rollouts[1]["token_ids"] == [28, 29]
    assert rollouts[0]["student_logprobs"] == [-0.5, -1.0]
    assert sent["step"] == 2 and sent["config"] == {"decay_steps": 10}
