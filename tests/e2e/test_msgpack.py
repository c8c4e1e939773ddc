"""The compact answer (`Accept: application/msgpack`) from a real `amr-sd serve` over real HTTP:
the same answer as JSON to float32 precision, replays by Idempotency-Key, errors stay JSON."""

import uuid

import httpx
import numpy as np
import pytest

from amr_client import AMRClient
from amr_client.binary import FLOAT_ARRAYS, MSGPACK, decode_response

pytestmark = pytest.mark.e2e

RETURNS = {"cig": True, "logprobs": True, "reflections": True}


def overridden(groups):
    """Scoring only: every rollout brings its reflection, so answers are a function of the body."""
    return [{**g, "rollouts": [{**r, "reflection_override": "Check each addition once more."}
                               for r in g["rollouts"]]} for g in groups]


def body(groups):
    return {"groups": groups, "step": 0, "return": RETURNS}


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def assert_same_answer(packed: dict, plain: dict) -> None:
    for key in ("model", "policy_version", "template_version", "step", "anneal_weight"):
        assert packed[key] == plain[key]
    assert len(packed["groups"]) == len(plain["groups"])
    for g0, g1 in zip(plain["groups"], packed["groups"]):
        for r0, r1 in zip(g0["rollouts"], g1["rollouts"]):
            assert r1["base_advantage"] == r0["base_advantage"]
            assert r1["gated"] == r0["gated"] and r1["reflection"] == r0["reflection"]
            for name in FLOAT_ARRAYS:
                assert r0[name] is not None  # every array was asked for
                np.testing.assert_array_equal(np.float32(r1[name]), np.float32(r0[name]))


def test_a_msgpack_answer_is_the_json_answer_in_float32(amr_server, example_groups):
    request = body(overridden(example_groups[12:14]))
    plain = httpx.post(f"{amr_server}/v1/score", json=request, timeout=300)
    packed = httpx.post(f"{amr_server}/v1/score", json=request, headers={"Accept": MSGPACK}, timeout=300)
    assert packed.status_code == 200 and packed.headers["content-type"] == MSGPACK
    assert len(packed.content) * 2 < len(plain.content)
    assert_same_answer(decode_response(packed.content), plain.json())


def test_a_key_answered_as_json_replays_as_msgpack_without_engine_work(amr_server, example_groups):
    request = body(overridden(example_groups[14:16]))
    key = {"Idempotency-Key": str(uuid.uuid4())}
    plain = httpx.post(f"{amr_server}/v1/score", json=request, headers=key, timeout=300)
    scored = metric(amr_server, "amr_sd_tokens_scored_total")
    packed = httpx.post(f"{amr_server}/v1/score", json=request, timeout=60,
                        headers={**key, "Accept": MSGPACK})
    assert packed.headers["idempotent-replayed"] == "true"
    assert metric(amr_server, "amr_sd_tokens_scored_total") == scored
    assert_same_answer(decode_response(packed.content), plain.json())


def test_the_client_gives_the_same_result_over_either_encoding(amr_server, example_groups):
    groups = overridden(example_groups[16:18])
    with AMRClient(amr_server) as client:
        plain = client.score(groups, step=0, returns=RETURNS, encoding="json")
        packed = client.score(groups, step=0, returns=RETURNS, encoding="msgpack")
    assert_same_answer(packed.response.model_dump(), plain.response.model_dump())


def test_errors_stay_json_and_406_names_msgpack(amr_server, example_groups):
    request = body(overridden(example_groups[:1]))
    request["step"] = -1
    bad = httpx.post(f"{amr_server}/v1/score", json=request, headers={"Accept": MSGPACK}, timeout=60)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    assert bad.json()["error"]["field"] == "step"
    refused = httpx.post(f"{amr_server}/v1/score", json=body(overridden(example_groups[:1])),
                         headers={"Accept": "application/x-npy"}, timeout=60)
    assert refused.status_code == 406 and MSGPACK in refused.json()["error"]["message"]
