"""The contract over both transports of one real `amr-sd serve --grpc-port` process on the
embedded model: the same advantages, the same errors and field paths, idempotent replay without
engine work, deadlines that abort vLLM's work, health and reflection."""

from __future__ import annotations

import copy
import time
import uuid

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from amr_client.grpc_codec import fill, to_dict
from amr_client.schemas import ScoreResponse
from amr_client.v1 import scoring_pb2 as pb
from amr_client.v1 import scoring_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

FAST = {"max_reflection_tokens": 48, "max_retries": 0}
SLOW = {"max_reflection_tokens": 1024, "max_retries": 5, "reflection_temperature": 1.0}


@pytest.fixture(scope="module")
def channel(shared_server):
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.ScoringStub(channel)


def request(groups, **extra) -> dict:
    return {"groups": groups, "step": 0, "config": FAST, **extra}


def as_proto(body: dict) -> pb.ScoreRequest:
    body = dict(body)
    if "return" in body:
        body["returns"] = body.pop("return")
    return fill(pb.ScoreRequest(), body)


def details(err: grpc.RpcError) -> dict:
    out = {}
    for detail in rpc_status.from_call(err).details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                out[kind.DESCRIPTOR.name] = item = kind()
                detail.Unpack(item)
    return out


def unfinished(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith("amr_sd_engine_unfinished_requests "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no amr_sd_engine_unfinished_requests metric")


def engine_work(base_url: str) -> float:
    """Reflections generated plus tokens teacher-forced, so far."""
    names = ("amr_sd_tokens_scored_total ", "amr_sd_reflections_generated_total ")
    values = [float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{base_url}/metrics").text.splitlines()
              if line.startswith(names)]
    assert len(values) == 2, "metrics missing"
    return sum(values)


def test_the_same_request_gets_the_same_advantages_over_http_and_grpc(shared_server, stub, example_groups):
    body = request(example_groups[:2], **{"return": {"cig": True}})
    over_http = httpx.post(f"{shared_server.base_url}/v1/score", json=body, timeout=600)
    assert over_http.status_code == 200, over_http.text
    over_grpc = stub.Score(as_proto(body), timeout=600)
    h = ScoreResponse.model_validate(over_http.json())
    g = ScoreResponse.model_validate(to_dict(over_grpc))
    assert g.model == h.model and g.anneal_weight == h.anneal_weight == 1.0
    for gh, gg in zip(h.groups, g.groups, strict=True):
        for rh, rg in zip(gh.rollouts, gg.rollouts, strict=True):
            assert len(rg.advantages) == len(rh.advantages)
            assert rg.base_advantage == rh.base_advantage
            # The gRPC answer carries float32; the second request finds the first one's
            # reflections cached, and CPU batches of another make-up differ in the last bits.
            assert np.allclose(rg.advantages, rh.advantages, atol=1e-4, rtol=1e-4)
            assert rg.reflection.text == rh.reflection.text and rg.reflection.cached


def test_an_invalid_field_is_invalid_argument_with_the_http_field_path(shared_server, stub, example_groups):
    body = request(copy.deepcopy(example_groups[:1]))  # the fixture is the session's: never edit it
    body["groups"][0]["rollouts"][1]["token_ids"] = [5, -3]
    over_http = httpx.post(f"{shared_server.base_url}/v1/score", json=body)
    assert over_http.status_code == 422
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(as_proto(body), timeout=60)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    got = details(err.value)
    field = over_http.json()["error"]["field"]
    assert field == "groups[0].rollouts[1].token_ids[1]"
    assert got["BadRequest"].field_violations[0].field == field
    assert got["ErrorInfo"].reason == "invalid_request" and got["ErrorInfo"].metadata["status"] == "422"


def test_a_repeated_idempotency_key_is_replayed_without_engine_work(shared_server, stub, example_groups):
    metadata = (("idempotency-key", uuid.uuid4().hex),)
    # A group with mixed rewards: a uniform one is answered without engine work anyway.
    mixed = [next(g for g in example_groups[2:] if len({r["reward"] for r in g["rollouts"]}) > 1)]
    first = stub.Score(as_proto(request(mixed)), metadata=metadata, timeout=600)
    work = engine_work(shared_server.base_url)
    assert work > 0
    again = stub.Score(as_proto(request(mixed)), metadata=metadata, timeout=600)
    assert engine_work(shared_server.base_url) == work
    assert again == first


def test_a_grpc_deadline_is_deadline_exceeded_and_vllm_aborts_the_work(shared_server, stub, example_groups):
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(as_proto({"groups": example_groups[4:6], "step": 0, "config": SLOW}), timeout=2.0)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 30
    while unfinished(shared_server.base_url) > 0:
        assert time.monotonic() < deadline, "vLLM still holds the request's work"
        time.sleep(0.1)


def test_a_cancelled_stream_aborts_its_engine_work(shared_server, stub, example_groups):
    call = stub.ScoreStream(as_proto({"groups": example_groups[6:8], "step": 0, "config": SLOW}),
                            timeout=600)
    deadline = time.monotonic() + 30
    while unfinished(shared_server.base_url) == 0:
        assert time.monotonic() < deadline, "the stream never reached the engine"
        time.sleep(0.05)
    call.cancel()
    deadline = time.monotonic() + 30
    while unfinished(shared_server.base_url) > 0:
        assert time.monotonic() < deadline, "vLLM still holds the cancelled stream's work"
        time.sleep(0.1)


def test_health_is_serving_and_reflection_lists_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "amr_sd.v1.Scoring"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"amr_sd.v1.Scoring", "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    scoring = pool.FindServiceByName("amr_sd.v1.Scoring")
    methods = {m.name for m in scoring.methods}
    assert methods == {"Score", "ScoreStream", "GetInfo", "SetPolicy", "GetPolicy"}


def test_get_info_matches_http_info(shared_server, stub):
    info = to_dict(stub.GetInfo(pb.GetInfoRequest(), timeout=10), absent_as_none=True)
    over_http = httpx.get(f"{shared_server.base_url}/v1/info").json()
    for key in ("model", "policy_version", "engine", "max_model_len", "vocab_size", "template_version"):
        assert info[key] == over_http[key], key
    assert info["limits"]["max_body_bytes"] == over_http["limits"]["max_body_bytes"]
    assert info["defaults"]["lambda_pos"] == pytest.approx(over_http["defaults"]["lambda_pos"])


def test_the_sdk_scores_the_same_over_grpc_and_http(shared_server, example_groups):
    from amr_client import AMRClient, AMRGrpcClient, PolicyMismatchError

    groups = example_groups[8:10]
    with AMRClient(shared_server.base_url) as over_http, AMRGrpcClient(shared_server.grpc_target) as over_grpc:
        assert over_grpc.ready()
        h = over_http.score(groups, step=0, config=FAST)
        streamed = over_grpc.score_stream(groups, step=0, config=FAST)
        seen = sorted(index for index, _ in streamed)
        g = streamed.result
        assert seen == [0, 1]
        ah, mh = h.advantages_padded()
        ag, mg = g.advantages_padded()
        assert np.array_equal(mh, mg) and np.allclose(ah, ag, atol=1e-4)
        assert over_grpc.info()["model"] == over_http.info()["model"]
        with pytest.raises(PolicyMismatchError) as err:  # the same exception as over HTTP
            over_grpc.score(groups, step=0, policy={"version": "step-999"})
        assert err.value.status_code == 409 and err.value.field == "policy.version"
