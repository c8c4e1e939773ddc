"""Specification of the gRPC client SDK: what goes on the wire, which error each gRPC status
raises (the same classes as over HTTP), when a call is retried, and what streams hand out.

A fake `amr_sd.v1.Scoring` servicer runs in-process on a loopback port and answers with canned
messages, or fails with statuses built by the real server's `error_status`, so the details the
client decodes are exactly those the server sends. Retries sleep through the injectable
`client._sleep`, replaced here by a recorder, so no test really waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from amr_client import (
    AMRGrpcClient,
    APIConnectionError,
    AsyncAMRGrpcClient,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyMismatchError,
    PolicyStatus,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from amr_client._base import build_score_body
from amr_client.grpc_codec import fill, to_dict
from amr_client.v1 import scoring_pb2 as pb
from amr_client.v1 import scoring_pb2_grpc as pb_grpc
from amr_sd.api.grpc_server import error_status
from amr_sd.errors import Draining, InvalidRequest, Overloaded, PayloadTooLarge, PolicyMismatch
from bench.common.procs import free_port

REQUEST_ID = "req-fake-1"
REWARD_FIELD = "groups[0].rollouts[0].reward"

GROUP = {
    "prompt": {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
    "rollouts": [
        {"token_ids": [28, 29, 30], "reward": 1.0},
        {"token_ids": [31], "reward": 0.0},
    ],
}
GROUP_2 = {
    "prompt": {"text": "1 + 1 ="},
    "rollouts": [{"token_ids": [40, 41], "reward": 1.0}],
}

STATS = {
    "groups": 2, "rollouts": 3, "response_tokens": 6, "tokens_scored": 12, "reflected_tokens": 4,
    "gated_tokens": 1, "gate_rate": 0.25, "reflections_requested": 2, "reflections_generated": 2,
    "reflections_accepted": 2, "reflections_rejected": 0, "acceptance_rate": 1.0, "cig_mean": 0.1,
    "cig_std": 0.2, "nonfinite_cig": 0, "mean_abs_base_advantage": 0.7, "mean_abs_advantage": 0.8,
    "reject_reasons": {"leak": 1}, "top_gated_tokens": [("five", 2)],
}
# 0.1 and -0.3 are not float32 numbers: the answer carries float32, so they come back rounded.
CANNED = ScoreResponse.model_validate({
    "model": "qwen-test", "policy_version": "p1", "template_version": "t1", "step": 7,
    "anneal_weight": 0.86,
    "groups": [
        {"rollouts": [{"advantages": [0.1, -0.3, 1.0], "base_advantage": 0.7},
                      {"advantages": [-0.75], "base_advantage": -0.7}]},
        {"rollouts": [{"advantages": [0.0, 0.5], "base_advantage": 0.0}]},
    ],
    "stats": STATS,
})
CANNED_PB = fill(pb.ScoreResponse(), CANNED.model_dump())
END = "end"


def amr_error(exc):
    """A try that fails as the real server fails with `exc`."""
    return lambda context: context.abort_with_status(error_status(exc, REQUEST_ID))


def bare_error(code: grpc.StatusCode, message: str):
    """A try that fails with a status and no amr-sd details (a proxy, a dropped connection)."""
    return lambda context: context.abort(code, message)


class FakeScoring(pb_grpc.ScoringServicer):
    """Records every call; fails the next tries as `failures` says, then answers CANNED."""

    def reset(self) -> None:
        self.calls: list[tuple[str, object, dict[str, str]]] = []
        self.failures: list = []
        # One plan per ScoreStream try: group indices to send, END, or a failure; the default
        # sends every group in order, then the end.
        self.stream_plans: list[list] = []

    def _begin(self, method: str, request, context) -> None:
        self.calls.append((method, request, dict(context.invocation_metadata())))
        context.send_initial_metadata((("x-request-id", REQUEST_ID),))
        if self.failures:
            self.failures.pop(0)(context)

    def Score(self, request, context):
        self._begin("Score", request, context)
        return CANNED_PB

    def ScoreStream(self, request, context):
        self._begin("ScoreStream", request, context)
        plan = self.stream_plans.pop(0) if self.stream_plans else [*range(len(CANNED.groups)), END]
        for step in plan:
            if step == END:
                end = fill(pb.StreamedEnd(), CANNED.model_dump(exclude={"groups"}))
                yield pb.ScoreStreamMessage(end=end)
            elif callable(step):
                step(context)
            else:
                group = pb.StreamedGroup(index=step, group=CANNED_PB.groups[step])
                yield pb.ScoreStreamMessage(group=group)

    def GetInfo(self, request, context):
        self._begin("GetInfo", request, context)
        return fill(pb.Info(), {"model": "qwen-test", "engine": "vllm",
                                "engine_settings": {"dtype": "bfloat16", "max_num_seqs": 8}})

    def SetPolicy(self, request, context):
        self._begin("SetPolicy", request, context)
        return pb.PolicyStatus(version=request.version, path=request.path, previous_version="p1",
                               changed=True, reload_s=1.5)

    def GetPolicy(self, request, context):
        self._begin("GetPolicy", request, context)
        return pb.PolicyStatus(version="p1", path="/policies/p1")


@pytest.fixture(scope="module")
def server():
    fake = FakeScoring()
    fake.reset()
    health_servicer = health.HealthServicer()
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScoringServicer_to_server(fake, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield fake, health_servicer, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


@pytest.fixture
def fake(server) -> FakeScoring:
    server[0].reset()
    return server[0]


@pytest.fixture
def target(server) -> str:
    return server[2]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(target, sleeps):
    with AMRGrpcClient(target, api_key="sk-test") as client:
        client._sleep = sleeps.append
        yield client


def advantages_of(groups) -> list[list[list[float]]]:
    return [[list(r.advantages) for r in g.rollouts] for g in groups]


# What the client must hand back: CANNED's advantages in request order, rounded to float32.
EXPECTED_ADVANTAGES = [[np.float32(r.advantages).tolist() for r in g.rollouts] for g in CANNED.groups]


def keys_of(fake: FakeScoring) -> list[str | None]:
    return [metadata.get("idempotency-key") for _, _, metadata in fake.calls]


# --------------------------------------------------------------------------------------------
# Requests and answers
# --------------------------------------------------------------------------------------------


def test_score_sends_the_http_body_as_protobuf_and_returns_the_canned_result(client, fake, sleeps):
    body_args = dict(step=7, config={"lambda_pos": 0.3}, returns={"cig": True})

    result = client.score([GROUP, GROUP_2], **body_args)

    assert isinstance(result, ScoreResult)
    assert result.request_id == REQUEST_ID
    expected = [np.asarray(r.advantages, dtype=np.float32) for g in CANNED.groups for r in g.rollouts]
    for got, want in zip(result.advantages_numpy(), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert result.advantages()[0][0] == float(np.float32(0.1))
    assert result.base_advantages() == [0.7, -0.7, 0.0]
    assert result.stats.top_gated_tokens == [("five", 2)]
    assert result.stats.reject_reasons == {"leak": 1}

    [(method, request, metadata)] = fake.calls
    assert method == "Score"
    assert metadata["authorization"] == "Bearer sk-test"
    assert metadata["idempotency-key"]
    assert request.step == 7
    assert list(request.groups[0].rollouts[0].token_ids) == [28, 29, 30]
    assert request.config.lambda_pos == 0.3
    assert not request.config.HasField("kappa")  # unset overrides stay unset: server defaults
    assert request.returns.cig is True
    # The message read back is the request the HTTP client would have sent.
    assert ScoreRequest.model_validate(to_dict(request)) == \
        ScoreRequest.model_validate(build_score_body([GROUP, GROUP_2], **body_args))
    assert sleeps == []


def test_info_and_policy_calls(client, fake):
    info = client.info()
    assert info["model"] == "qwen-test"
    assert info["engine_settings"]["dtype"] == "bfloat16"
    assert info["engine_settings"]["max_model_len"] is None  # absent optional field

    status = client.set_policy("/policies/p2", "p2")
    assert isinstance(status, PolicyStatus)
    assert (status.version, status.path, status.previous_version, status.changed) == \
        ("p2", "/policies/p2", "p1", True)
    update = fake.calls[1][1]
    assert (update.path, update.version) == ("/policies/p2", "p2")

    status = client.get_policy()
    assert (status.version, status.changed, status.reload_s) == ("p1", None, None)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="not a URL"):
        AMRGrpcClient("http://127.0.0.1:50051")
    with pytest.raises(ValueError, match="seconds"):
        AMRGrpcClient(timeout=0)
    with pytest.raises(ValueError, match="seconds"):
        AMRGrpcClient(timeout=httpx.Timeout(5.0, read=-1.0))
    with pytest.raises(ValueError, match="max_retries"):
        AMRGrpcClient(max_retries=-1)
    with pytest.raises(TypeError, match="api_key"):
        AMRGrpcClient(api_key=b"sk")


def test_with_options_takes_seconds_and_shares_the_channel():
    with AMRGrpcClient(timeout=30) as client:
        copy = client.with_options(timeout=5, max_retries=0)
        assert (copy.target, copy.timeout, copy.max_retries) == (client.target, 5.0, 0)
        assert copy._channel is client._channel
        assert (client.timeout, client.max_retries) == (30.0, 2)
        with pytest.raises(ValueError, match="seconds"):
            client.with_options(timeout=-5)


@pytest.mark.parametrize(("given", "deadline_s"), [
    (30, 30.0),
    (None, None),                                    # no deadline
    (httpx.Timeout(600.0, connect=5.0), 600.0),      # one gRPC deadline: the read limit
    (httpx.Timeout(5.0, read=None), None),
])
def test_timeout_takes_seconds_none_or_an_httpx_timeout(given, deadline_s):
    with AMRGrpcClient(timeout=given) as client:
        assert client.timeout == deadline_s
        assert client.with_options(timeout=given).timeout == deadline_s
    assert AsyncAMRGrpcClient(timeout=given).timeout == deadline_s


def test_an_empty_api_key_sends_no_authorization(target, fake):
    with AMRGrpcClient(target, api_key="") as client:
        client.get_policy()
    assert "authorization" not in fake.calls[0][2]


def test_calls_name_the_sdk_in_their_user_agent(client, fake):
    import amr_client

    client.get_policy()
    assert fake.calls[0][2]["user-agent"].startswith(f"amr-client/{amr_client.__version__} ")


def test_a_connection_error_names_the_target_and_the_attempts(sleeps):
    target = f"127.0.0.1:{free_port()}"
    with AMRGrpcClient(target, max_retries=1, timeout=10) as client:
        client._sleep = sleeps.append
        with pytest.raises(APIConnectionError) as caught:
            client.get_policy()
    assert target in str(caught.value) and "after 2 attempts" in str(caught.value)
    assert caught.value.attempts == 2


# --------------------------------------------------------------------------------------------
# Errors and retries
# --------------------------------------------------------------------------------------------


def test_invalid_request_raises_unprocessable_entity_with_its_field_and_is_not_retried(
        client, fake, sleeps):
    fake.failures = [amr_error(InvalidRequest("must be finite", field=REWARD_FIELD))]

    with pytest.raises(UnprocessableEntityError) as caught:
        client.score([GROUP], step=1)

    error = caught.value
    assert (error.status_code, error.type, error.field) == (422, "invalid_request", REWARD_FIELD)
    assert error.message == "must be finite"
    assert error.request_id == REQUEST_ID
    assert isinstance(error.__cause__, grpc.RpcError)
    assert error.__cause__.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.calls) == 1 and sleeps == []


def test_draining_is_retried_after_retry_info_with_the_same_idempotency_key(client, fake, sleeps):
    fake.failures = [amr_error(Draining("shutting down")), amr_error(Draining("shutting down"))]

    result = client.score([GROUP, GROUP_2], step=7)

    assert advantages_of(result.groups) == EXPECTED_ADVANTAGES
    assert sleeps == [5.0, 5.0]
    keys = keys_of(fake)
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1

    client.score([GROUP], step=8)  # a new logical call gets a new key
    assert keys_of(fake)[3] != keys[0]


def test_draining_past_max_retries_raises_service_unavailable(client, fake, sleeps):
    fake.failures = [amr_error(Draining("shutting down"))] * 3

    with pytest.raises(ServiceUnavailableError) as caught:
        client.score([GROUP], step=1)

    assert caught.value.type == "draining"
    assert caught.value.headers["retry-after"] == "5"
    assert caught.value.response is None  # no HTTP response stands behind a gRPC status
    assert len(fake.calls) == 3 and sleeps == [5.0, 5.0]


def test_payload_too_large_is_not_retried_though_its_code_is_resource_exhausted(
        client, fake, sleeps):
    fake.failures = [amr_error(PayloadTooLarge("over max_tokens"))]

    with pytest.raises(PayloadTooLargeError) as caught:
        client.score([GROUP], step=1)

    assert caught.value.__cause__.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(fake.calls) == 1 and sleeps == []


def test_overloaded_with_the_same_code_is_retried(client, fake, sleeps):
    fake.failures = [amr_error(Overloaded("queue full", headers={"Retry-After": "3"}))]

    client.score([GROUP], step=1)

    assert len(fake.calls) == 2 and sleeps == [3.0]


def test_policy_mismatch_raises_policy_mismatch_error_and_is_not_retried(client, fake, sleeps):
    fake.failures = [amr_error(PolicyMismatch("serving p1, the request requires p2"))]

    with pytest.raises(PolicyMismatchError) as caught:
        client.score([GROUP], step=1, policy={"version": "p2"})

    assert (caught.value.status_code, caught.value.type) == (409, "policy_mismatch")
    assert len(fake.calls) == 1 and sleeps == []


def test_status_without_amr_details_maps_by_its_code(client, fake, sleeps):
    fake.failures = [bare_error(grpc.StatusCode.PERMISSION_DENIED, "no")]

    with pytest.raises(PermissionDeniedError) as caught:
        client.get_policy()

    assert (caught.value.status_code, caught.value.type) == (403, "grpc_permission_denied")
    assert sleeps == []


def test_no_server_listening_raises_connection_error_after_max_retries(sleeps):
    with AMRGrpcClient(f"127.0.0.1:{free_port()}", max_retries=1, timeout=10) as client:
        client._sleep = sleeps.append
        with pytest.raises(APIConnectionError) as caught:
            client.score([GROUP], step=1)

    assert len(sleeps) == 1
    assert caught.value.__cause__.code() is grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def test_score_stream_yields_in_completion_order_and_result_in_request_order(client, fake):
    fake.stream_plans = [[1, 0, END]]

    stream = client.score_stream([GROUP, GROUP_2], step=7)
    items = list(stream)

    assert [index for index, _ in items] == [1, 0]
    assert items[0][1] == stream.result.groups[1]
    assert advantages_of(stream.result.groups) == EXPECTED_ADVANTAGES
    assert stream.result.groups == client.score([GROUP, GROUP_2], step=7).groups
    assert stream.result.request_id == REQUEST_ID
    assert stream.result.stats.top_gated_tokens == [("five", 2)]


def test_score_stream_retried_after_a_cut_hands_each_group_out_once(client, fake, sleeps):
    cut = bare_error(grpc.StatusCode.UNAVAILABLE, "connection reset")
    fake.stream_plans = [[1, cut], [0, 1, END]]

    stream = client.score_stream([GROUP, GROUP_2], step=7)
    indices = [index for index, _ in stream]

    assert indices == [1, 0]
    assert len(sleeps) == 1
    keys = keys_of(fake)
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    assert advantages_of(stream.result.groups) == EXPECTED_ADVANTAGES


def test_score_with_progress_streams_and_reports_each_group(client, fake):
    seen = []

    result = client.score([GROUP, GROUP_2], step=7, progress=lambda done, total: seen.append((done, total)))

    assert seen == [(1, 2), (2, 2)]
    assert fake.calls[0][0] == "ScoreStream"
    assert advantages_of(result.groups) == EXPECTED_ADVANTAGES


# --------------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------------


def test_ready_follows_the_health_service(client, server):
    health_servicer = server[1]
    health_servicer.set("amr_sd.v1.Scoring", health_pb2.HealthCheckResponse.SERVING)
    assert client.ready() is True
    health_servicer.set("amr_sd.v1.Scoring", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert client.ready() is False


def test_ready_is_false_when_nothing_listens():
    with AMRGrpcClient(f"127.0.0.1:{free_port()}", timeout=10) as client:
        assert client.ready() is False


# --------------------------------------------------------------------------------------------
# The async client
# --------------------------------------------------------------------------------------------


def test_async_score_returns_the_canned_result(target, fake):
    async def main():
        async with AsyncAMRGrpcClient(target, api_key="sk-test") as client:
            return await client.score([GROUP, GROUP_2], step=7, returns={"cig": True})

    result = asyncio.run(main())

    assert result.request_id == REQUEST_ID
    assert advantages_of(result.groups) == EXPECTED_ADVANTAGES
    [(_, request, metadata)] = fake.calls
    assert request.returns.cig is True and metadata["authorization"] == "Bearer sk-test"


def test_async_errors_map_and_retry_like_the_blocking_client(target, fake):
    sleeps = []

    async def record(seconds):
        sleeps.append(seconds)

    async def main():
        async with AsyncAMRGrpcClient(target) as client:
            client._sleep = record
            fake.failures = [amr_error(Draining("shutting down"))]
            await client.score([GROUP], step=1)
            fake.failures = [amr_error(InvalidRequest("must be finite", field=REWARD_FIELD))]
            with pytest.raises(UnprocessableEntityError) as caught:
                await client.score([GROUP], step=1)
            return caught.value

    error = asyncio.run(main())

    assert error.field == REWARD_FIELD and isinstance(error.__cause__, grpc.RpcError)
    assert sleeps == [5.0]
    keys = keys_of(fake)
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]


def test_async_score_stream_retried_after_a_cut_hands_each_group_out_once(target, fake):
    cut = bare_error(grpc.StatusCode.UNAVAILABLE, "connection reset")
    fake.stream_plans = [[1, cut], [0, 1, END]]
    sleeps = []

    async def record(seconds):
        sleeps.append(seconds)

    async def main():
        async with AsyncAMRGrpcClient(target) as client:
            client._sleep = record
            stream = client.score_stream([GROUP, GROUP_2], step=7)
            return [index async for index, _ in stream], stream.result

    indices, result = asyncio.run(main())

    assert indices == [1, 0] and len(sleeps) == 1
    assert advantages_of(result.groups) == EXPECTED_ADVANTAGES


# --------------------------------------------------------------------------------------------
# Import cost
# --------------------------------------------------------------------------------------------


def test_importing_the_sdk_does_not_import_grpc_and_a_missing_grpc_names_the_extra():
    code = textwrap.dedent("""
        import sys

        import amr_client
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"grpc", "grpc_status"})
        assert not loaded, loaded

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0].startswith("grpc"):
                    raise ImportError(f"blocked by test: {name}")
                return None

        sys.meta_path.insert(0, Refuse())
        try:
            from amr_client import AMRGrpcClient
        except ImportError as exc:
            assert 'pip install "amr-sd[grpc]"' in str(exc), exc
        else:
            raise AssertionError("imported without grpc")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
