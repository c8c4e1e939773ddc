"""The compact score answer (amr_client.binary): what goes in comes out, to float32 precision,
with every per-token field of the wire schema packed and nothing else touched."""

from __future__ import annotations

import typing

import msgpack
import numpy as np
import orjson
import pytest

from amr_client.binary import BOOL_ARRAYS, FLOAT_ARRAYS, decode_response, encode_response
from amr_client.schemas import ScoredRollout, ScoreResponse

STATS = {
    "groups": 1, "rollouts": 2, "response_tokens": 5, "tokens_scored": 10, "reflected_tokens": 3,
    "gated_tokens": 1, "gate_rate": 1 / 3, "reflections_requested": 2, "reflections_generated": 2,
    "reflections_accepted": 1, "reflections_rejected": 1, "acceptance_rate": 0.5, "cig_mean": 0.1,
    "cig_std": 0.2, "nonfinite_cig": 0, "mean_abs_base_advantage": 0.7, "mean_abs_advantage": 0.8,
}


def answer() -> dict:
    full = {"advantages": [0.8660254037844386, -1.0e-9, 3.25], "base_advantage": 0.8660254037844386,
            "cig": [0.1, -2.5, 0.0], "gated": [False, True, False],
            "student_logprobs": [-0.01, -7.25, -1e-30], "teacher_logprobs": [-0.02, -5.0, 0.0],
            "reflection": {"kind": "hint", "text": "Check the carry.", "accepted": True,
                           "attempts": 1, "source": "generated"}}
    bare = {"advantages": [-0.5, -0.5], "base_advantage": -0.5}
    return ScoreResponse.model_validate({
        "model": "m", "policy_version": "base", "template_version": "2", "step": 3,
        "anneal_weight": 0.9, "groups": [{"rollouts": [full, bare]}], "stats": STATS,
    }).model_dump(mode="json")


def test_the_array_fields_are_every_per_token_list_of_the_wire_schema():
    # `list[float]` or `list[float] | None`: a new per-token field must be packed too.
    lists = {name for name, f in ScoredRollout.model_fields.items()
             if any(typing.get_origin(t) is list for t in (f.annotation, *typing.get_args(f.annotation)))}
    assert lists == set(FLOAT_ARRAYS) | set(BOOL_ARRAYS)


def test_a_round_trip_keeps_every_field_and_the_arrays_to_float32_precision():
    wire = answer()
    back = decode_response(encode_response(wire))
    for name in ("model", "policy_version", "template_version", "step", "anneal_weight", "stats"):
        assert back[name] == wire[name]
    for r0, r1 in zip(wire["groups"][0]["rollouts"], back["groups"][0]["rollouts"]):
        assert set(r0) == set(r1)
        assert r1["base_advantage"] == r0["base_advantage"]  # scalars stay float64
        assert r1.get("reflection") == r0.get("reflection")
        for name in FLOAT_ARRAYS:
            if r0.get(name) is None:
                assert r1.get(name) is None
                continue
            np.testing.assert_array_equal(r1[name], np.float32(r0[name]))
            assert all(isinstance(v, float) for v in r1[name])
        assert r1.get("gated") == r0.get("gated")
    assert ScoreResponse.model_validate(back).groups[0].rollouts[0].gated == [False, True, False]


def test_arrays_are_little_endian_float32_and_uint8_bytes():
    raw = msgpack.unpackb(encode_response(answer()))
    rollout = raw["groups"][0]["rollouts"][0]
    assert rollout["advantages"] == np.asarray([0.8660254037844386, -1.0e-9, 3.25], "<f4").tobytes()
    assert rollout["gated"] == b"\x00\x01\x00"


def test_numpy_arrays_on_request():
    back = decode_response(encode_response(answer()), as_lists=False)
    rollout = back["groups"][0]["rollouts"][0]
    assert rollout["cig"].dtype == np.float32 and rollout["gated"].dtype == bool


def test_it_is_several_times_smaller_than_json_for_a_long_rollout():
    wire = answer()
    rollout = wire["groups"][0]["rollouts"][0]
    rng = np.random.default_rng(0)
    for name in FLOAT_ARRAYS:
        rollout[name] = rng.normal(size=4096).tolist()
    rollout["gated"] = (rng.random(4096) < 0.05).tolist()
    assert len(encode_response(wire)) * 4 < len(orjson.dumps(wire))


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", "not a msgpack document"),
    (msgpack.packb({"model": "m"}), "no `groups` list"),
    (msgpack.packb({"groups": [{"rollouts": [{"advantages": b"\x00\x00\x80"}]}]}),
     r"groups\[0\].rollouts\[0\].advantages: expected msgpack bin of 4-byte values"),
    (msgpack.packb({"groups": [{"rollouts": [{"advantages": [0.5]}]}]}),
     r"groups\[0\].rollouts\[0\].advantages: expected msgpack bin of 4-byte values, got list"),
])
def test_a_body_that_is_not_such_an_answer_is_a_value_error_naming_the_place(payload, message):
    with pytest.raises(ValueError, match=message):
        decode_response(payload)
