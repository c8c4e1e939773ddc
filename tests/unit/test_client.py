"""Specification of the client SDK: what goes on the wire, which error each status raises, when a
call is retried, and the shapes `ScoreResult` hands a trainer.

Every test talks to an `httpx.MockTransport`; none needs a server. Retries sleep through the
injectable `client._sleep`, replaced here by a recorder, so no test really waits.
"""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pytest
import torch

from amr_client import (
    AMRClient,
    AMRError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncAMRClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    Group,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyMismatchError,
    RateLimitError,
    ReturnSwitches,
    ScoreResponse,
    ScoreResult,
    ScoringConfig,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from amr_client._base import build_score_body
from amr_client._exceptions import status_error
from amr_client._retries import next_retry_delay, retry_delay, should_retry

BASE_URL = "http://scorer.test"

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
}
# Group 0 holds rollouts of 3 and 1 tokens, group 1 one rollout of 2 tokens.
RESPONSE = {
    "model": "qwen-test", "policy_version": "p1", "template_version": "t1", "step": 7,
    "anneal_weight": 0.86,
    "groups": [
        {"rollouts": [{"advantages": [0.5, 0.25, 1.0], "base_advantage": 0.7},
                      {"advantages": [-0.75], "base_advantage": -0.7}]},
        {"rollouts": [{"advantages": [0.0, 0.0], "base_advantage": 0.0}]},
    ],
    "stats": STATS,
}


def error_json(status: int, type_: str, message: str, field: str | None = None,
               headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "message": message, "field": field}},
                          headers={"X-Request-ID": "req-1", **(headers or {})})


def ok() -> httpx.Response:
    return httpx.Response(200, json=RESPONSE, headers={"X-Request-ID": "req-ok"})


class Server:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: httpx.Response | Exception):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def client_for(server: Server, **kwargs) -> tuple[AMRClient, list[float]]:
    client = AMRClient(BASE_URL, transport=httpx.MockTransport(server), **kwargs)
    slept: list[float] = []
    client._sleep = slept.append
    return client, slept


def async_client_for(server: Server, **kwargs) -> tuple[AsyncAMRClient, list[float]]:
    client = AsyncAMRClient(BASE_URL, transport=httpx.MockTransport(server), **kwargs)
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    client._sleep = record
    return client, slept


# --- what goes on the wire --------------------------------------------------------------------


def test_score_posts_groups_step_and_return_under_its_wire_alias():
    server = Server(ok())
    client, _ = client_for(server)
    client.score([GROUP], step=7, returns={"cig": True})
    (request,) = server.requests
    assert request.method == "POST" and request.url == f"{BASE_URL}/v1/score"
    body = json.loads(request.content)
    assert set(body) == {"groups", "step", "return"}  # no "returns", no null config
    assert body["step"] == 7
    assert body["return"] == {"cig": True, "logprobs": False, "reflections": True}
    assert body["groups"][0]["rollouts"][1] == {"token_ids": [31], "reward": 0.0}  # nulls omitted


def test_dict_and_model_inputs_give_the_same_body():
    from_dicts = build_score_body([GROUP, GROUP_2], step=3, config={"lambda_pos": 0.3},
                                  returns={"logprobs": True})
    from_models = build_score_body([Group.model_validate(GROUP), Group.model_validate(GROUP_2)],
                                   step=3, config=ScoringConfig(lambda_pos=0.3),
                                   returns=ReturnSwitches(logprobs=True))
    assert from_dicts == from_models


def test_config_sends_only_the_fields_the_caller_set():
    # The server merges only the set fields over its own defaults; a full dump would override them.
    body = build_score_body([GROUP], step=0, config=ScoringConfig(decay_steps=80))
    assert body["config"] == {"decay_steps": 80}


def test_invalid_request_raises_the_sdk_error_before_sending():
    server = Server(ok())
    client, _ = client_for(server)
    bad = {**GROUP, "rollouts": [{"token_ids": [1], "reward": 1.0, "refelction_override": "x"}]}
    with pytest.raises(InvalidRequestError) as err:
        client.score([bad], step=0)
    assert isinstance(err.value, AMRError) and isinstance(err.value, ValueError)
    assert err.value.field == "groups[0].rollouts[0].refelction_override"
    assert server.requests == []


def test_api_key_is_sent_as_bearer_token():
    server = Server(ok())
    client, _ = client_for(server, api_key="sk-test")
    client.score([GROUP], step=0)
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test"


def test_no_api_key_sends_no_authorization_header():
    server = Server(ok())
    client, _ = client_for(server)
    client.score([GROUP], step=0)
    assert "Authorization" not in server.requests[0].headers


def test_score_returns_the_parsed_response_and_request_id():
    client, _ = client_for(Server(ok()))
    result = client.score([GROUP, GROUP_2], step=7)
    assert result.response == ScoreResponse.model_validate(RESPONSE)
    assert result.request_id == "req-ok"


def test_info_returns_the_json_object():
    info = {"model": "qwen-test", "model_path": "/m", "policy_version": "p1", "engine": "hf",
            "limits": {"max_groups": 4096}, "defaults": {"lambda_pos": 0.2}}
    server = Server(httpx.Response(200, json=info))
    client, _ = client_for(server)
    assert client.info() == info
    assert server.requests[0].method == "GET" and server.requests[0].url.path == "/v1/info"


# --- status -> exception ----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), [
    (400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError),
    (404, NotFoundError), (409, ConflictError), (413, PayloadTooLargeError),
    (422, UnprocessableEntityError), (429, RateLimitError), (500, InternalServerError),
    (503, ServiceUnavailableError), (504, GatewayTimeoutError), (418, APIStatusError),
])
def test_status_raises_its_exception_class_with_the_servers_details(status, cls):
    client, _ = client_for(Server(error_json(status, "invalid_request", "must be >= 0", "step")),
                           max_retries=0)
    with pytest.raises(APIStatusError) as exc:
        client.score([GROUP], step=0)
    err = exc.value
    assert type(err) is cls
    assert (err.status_code, err.request_id, err.type) == (status, "req-1", "invalid_request")
    assert (err.message, err.field) == ("must be >= 0", "step")
    assert err.body == {"error": {"type": "invalid_request", "message": "must be >= 0", "field": "step"}}


def test_error_str_names_status_type_field_and_message():
    client, _ = client_for(Server(error_json(422, "invalid_request", "Input should be a valid integer",
                                             "groups[0].rollouts[1].token_ids[0]")))
    with pytest.raises(UnprocessableEntityError) as exc:
        client.score([GROUP], step=0)
    text = str(exc.value)
    for part in ("422", "invalid_request", "groups[0].rollouts[1].token_ids[0]",
                 "Input should be a valid integer", "req-1"):
        assert part in text


def test_non_json_error_body_is_kept_as_text():
    client, _ = client_for(Server(httpx.Response(502, text="<html>Bad Gateway</html>")), max_retries=0)
    with pytest.raises(APIStatusError) as exc:
        client.score([GROUP], step=0)
    assert exc.value.status_code == 502
    assert exc.value.body == exc.value.message == "<html>Bad Gateway</html>"
    assert exc.value.field is None and exc.value.request_id is None


def test_an_http_error_keeps_its_response_and_its_headers():
    response = error_json(429, "overloaded", "queue full", headers={"Retry-After": "3"})
    client, _ = client_for(Server(response), max_retries=0)
    with pytest.raises(RateLimitError) as exc:
        client.score([GROUP], step=0)
    assert exc.value.response.status_code == 429
    assert exc.value.headers["retry-after"] == "3"


def test_a_status_error_needs_no_http_response():
    # What the gRPC client builds from a status's details: the fields an HTTP answer would give.
    error = status_error(503, {"error": {"type": "draining", "message": "shutting down"}},
                         headers={"retry-after": "5", "x-request-id": "req-9"})
    assert type(error) is ServiceUnavailableError and error.response is None
    assert (error.status_code, error.type, error.message) == (503, "draining", "shutting down")
    assert error.request_id == "req-9"
    assert next_retry_delay(error, 0, max_retries=2) == 5.0


# --- retries ----------------------------------------------------------------------------------


def test_503_is_retried_until_success_with_the_same_idempotency_key():
    server = Server(error_json(503, "not_ready", "warming up"), error_json(503, "not_ready", "warming up"),
                    ok())
    client, slept = client_for(server)
    result = client.score([GROUP], step=0)
    assert result.model == "qwen-test"
    assert len(server.requests) == 3 and len(slept) == 2
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(keys) == 1
    assert server.bodies()[0] == server.bodies()[2]


def test_retry_after_header_is_the_sleep_before_the_retry():
    server = Server(error_json(429, "overloaded", "queue full", headers={"Retry-After": "3"}), ok())
    client, slept = client_for(server)
    client.score([GROUP], step=0)
    assert slept == [3.0]


def test_each_score_call_gets_a_new_idempotency_key():
    server = Server(ok())
    client, _ = client_for(server)
    client.score([GROUP], step=0)
    client.score([GROUP], step=0)
    first, second = (r.headers["Idempotency-Key"] for r in server.requests)
    assert first != second


@pytest.mark.parametrize("status", [403, 422])
def test_client_errors_are_not_retried(status):
    server = Server(error_json(status, "invalid_request", "no"), ok())
    client, slept = client_for(server)
    with pytest.raises(APIStatusError):
        client.score([GROUP], step=0)
    assert len(server.requests) == 1 and slept == []


def test_exhausted_retries_raise_the_last_error():
    server = Server(error_json(503, "not_ready", "a"), error_json(503, "not_ready", "b"),
                    error_json(500, "internal_error", "c"), ok())
    client, slept = client_for(server, max_retries=2)
    with pytest.raises(InternalServerError) as exc:
        client.score([GROUP], step=0)
    assert exc.value.message == "c"
    assert len(server.requests) == 3 and len(slept) == 2


def test_connection_error_is_retried_then_raises_api_connection_error():
    server = Server(httpx.ConnectError("connection refused"))
    client, slept = client_for(server, max_retries=2)
    with pytest.raises(APIConnectionError) as exc:
        client.score([GROUP], step=0)
    assert not isinstance(exc.value, APITimeoutError)
    assert isinstance(exc.value.__cause__, httpx.ConnectError)
    assert len(server.requests) == 3 and len(slept) == 2


def test_connection_error_then_success_returns_the_result():
    server = Server(httpx.ConnectError("connection reset"), ok())
    client, _ = client_for(server)
    assert client.score([GROUP], step=0).request_id == "req-ok"


def test_timeout_raises_api_timeout_error():
    client, _ = client_for(Server(httpx.ReadTimeout("read timed out")), max_retries=0)
    with pytest.raises(APITimeoutError) as exc:
        client.score([GROUP], step=0)
    assert isinstance(exc.value, APIConnectionError)


def test_with_options_max_retries_0_does_not_retry():
    server = Server(error_json(503, "not_ready", "warming up"), ok())
    client, slept = client_for(server)
    with pytest.raises(ServiceUnavailableError):
        client.with_options(max_retries=0).score([GROUP], step=0)
    assert len(server.requests) == 1 and slept == []


def test_with_options_shares_the_connection_pool_and_keeps_other_settings():
    client, _ = client_for(Server(ok()), api_key="sk-test", max_retries=5)
    copy = client.with_options(timeout=httpx.Timeout(1.0))
    assert copy._http is client._http
    assert (copy.timeout, copy.max_retries, copy.api_key) == (httpx.Timeout(1.0), 5, "sk-test")
    copy.close()
    assert not client._http.is_closed


def test_retry_delay_backs_off_from_half_a_second_to_8s_with_jitter():
    rng = random.Random(0)
    for attempt, base in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delay = retry_delay(attempt, None, rng)
        assert 0.75 * base <= delay <= 1.25 * base


def test_retry_after_is_capped_at_60s():
    assert retry_delay(0, "3600") == 60.0


def test_unparsable_retry_after_falls_back_to_backoff():
    assert 0.375 <= retry_delay(0, "soon") <= 0.625


@pytest.mark.parametrize(("error", "expected"), [
    (408, True), (409, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (404, False), (413, False), (422, False),
    (httpx.ConnectError("refused"), True), (APITimeoutError(), True), (ValueError("x"), False),
])
def test_should_retry_only_transient_failures(error, expected):
    assert should_retry(error) is expected


# --- ready() ----------------------------------------------------------------------------------


def test_ready_is_true_on_200():
    server = Server(httpx.Response(200, json={"status": "ready"}))
    client, _ = client_for(server)
    assert client.ready() is True
    assert server.requests[0].url.path == "/readyz"


def test_ready_is_false_on_503_without_retrying():
    server = Server(httpx.Response(503, headers={"Retry-After": "5"}), httpx.Response(200))
    client, slept = client_for(server)
    assert client.ready() is False
    assert len(server.requests) == 1 and slept == []


def test_ready_is_false_when_the_server_is_unreachable():
    client, _ = client_for(Server(httpx.ConnectError("refused")))
    assert client.ready() is False


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (30, httpx.Timeout(30.0)),                       # seconds for every phase, as httpx does
    (2.5, httpx.Timeout(2.5)),
    (None, httpx.Timeout(None)),                     # no limit
    (httpx.Timeout(9.0, connect=1.0), httpx.Timeout(9.0, connect=1.0)),
])
def test_timeout_takes_seconds_none_or_an_httpx_timeout(given, expected):
    client, _ = client_for(Server(ok()), timeout=given)
    assert client.timeout == expected
    assert client.with_options(timeout=given).timeout == expected
    assert AsyncAMRClient(BASE_URL, timeout=given).timeout == expected


def test_with_options_timeout_none_lifts_the_limit_and_reaches_the_request():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return ok()

    client = AMRClient(BASE_URL, transport=httpx.MockTransport(handler), timeout=5.0)
    client.with_options(timeout=None).score([GROUP], step=0)
    client.score([GROUP], step=0)
    assert seen[0] == {"connect": None, "read": None, "write": None, "pool": None}
    assert seen[1] == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "30"])
def test_timeout_refuses_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="httpx.Timeout"):
        AMRClient(timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("base_url", [f"{BASE_URL}/v1", f"{BASE_URL}/v1/", f"{BASE_URL}/"])
def test_a_base_url_ending_in_v1_reaches_the_same_paths(base_url):
    # openai-python's base URLs end in /v1; here that must not become /v1/v1/score.
    server = Server(ok())
    client = AMRClient(base_url, transport=httpx.MockTransport(server))
    client.score([GROUP], step=0)
    assert client.base_url == BASE_URL
    assert server.requests[0].url == f"{BASE_URL}/v1/score"


def test_a_base_url_under_a_prefix_keeps_the_prefix():
    client = AMRClient("http://proxy.test/amr/v1", transport=httpx.MockTransport(Server(ok())))
    assert client.base_url == "http://proxy.test/amr"


def test_an_empty_api_key_sends_no_authorization_header():
    server = Server(ok())
    client, _ = client_for(server, api_key="")
    client.score([GROUP], step=0)
    assert "authorization" not in server.requests[0].headers


def test_every_request_names_the_sdk_in_its_user_agent():
    import amr_client

    server = Server(ok(), httpx.Response(200, json={"model": "m"}))
    client, _ = client_for(server)
    client.score([GROUP], step=0)
    client.info()
    assert amr_client.__version__ and amr_client.__version__[0].isdigit()
    assert {r.headers["user-agent"] for r in server.requests} == {f"amr-client/{amr_client.__version__}"}


def test_a_connection_error_names_the_url_and_the_attempts():
    client, _ = client_for(Server(httpx.ConnectError("connection refused")), max_retries=2)
    with pytest.raises(APIConnectionError) as err:
        client.score([GROUP], step=0)
    assert f"POST {BASE_URL}/v1/score" in str(err.value)
    assert "after 3 attempts" in str(err.value) and err.value.attempts == 3


def test_an_async_timeout_names_the_url_and_the_one_attempt():
    client, _ = async_client_for(Server(httpx.ReadTimeout("read timed out")), max_retries=0)
    with pytest.raises(APITimeoutError) as err:
        asyncio.run(client.score([GROUP], step=0))
    assert f"{BASE_URL}/v1/score" in str(err.value) and "after 1 attempt)" in str(err.value)


# --- client-side validation -------------------------------------------------------------------


def test_a_bad_token_id_is_named_with_the_servers_path_and_no_pydantic_url():
    bad = {**GROUP, "rollouts": [GROUP["rollouts"][0], {"token_ids": [1, "x"], "reward": 0.0}]}
    with pytest.raises(InvalidRequestError) as err:
        build_score_body([GROUP, bad], step=0)
    assert err.value.field == "groups[1].rollouts[1].token_ids[1]"
    assert err.value.errors[0]["field"] == "groups[1].rollouts[1].token_ids[1]"
    assert "'x'" in str(err.value)
    assert "pydantic" not in str(err.value) and "http" not in str(err.value)


def test_every_bad_field_is_listed_in_errors():
    bad = {"prompt": {"text": "q"}, "rollouts": [{"token_ids": [1]}, {"reward": 1.0}]}
    with pytest.raises(InvalidRequestError) as err:
        build_score_body([bad], step=0)
    fields = [e["field"] for e in err.value.errors]
    assert fields == ["groups[0].rollouts[0].reward", "groups[0].rollouts[1].token_ids"]
    assert all(e["type"] == "missing" for e in err.value.errors)


@pytest.mark.parametrize("make_client", [client_for, async_client_for])
def test_one_group_passed_without_a_list_says_so(make_client):
    server = Server(ok())
    client, _ = make_client(server)
    with pytest.raises(InvalidRequestError, match=r"list of groups.*\[group\]") as err:
        result = client.score(GROUP, step=0)  # type: ignore[arg-type]
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert err.value.field == "groups" and server.requests == []
    with pytest.raises(InvalidRequestError, match="single Group"):
        build_score_body(Group.model_validate(GROUP), step=0)  # type: ignore[arg-type]


def test_context_manager_closes_the_pool_it_created():
    with AMRClient(BASE_URL, transport=httpx.MockTransport(Server(ok()))) as client:
        pass
    assert client._http.is_closed


def test_a_passed_http_client_is_left_open():
    http = httpx.Client(transport=httpx.MockTransport(Server(ok())))
    with AMRClient(BASE_URL, http_client=http):
        pass
    assert not http.is_closed


# --- sync equals async ------------------------------------------------------------------------


def test_sync_and_async_clients_send_the_same_body_and_give_equal_results():
    sync_server = Server(error_json(503, "not_ready", "warming up", headers={"Retry-After": "2"}), ok())
    async_server = Server(error_json(503, "not_ready", "warming up", headers={"Retry-After": "2"}), ok())
    sync_client, sync_slept = client_for(sync_server, api_key="k")
    async_client, async_slept = async_client_for(async_server, api_key="k")

    sync_result = sync_client.score([GROUP, GROUP_2], step=7, config={"kappa": 3.0})

    async def run() -> ScoreResult:
        async with async_client:
            return await async_client.score([GROUP, GROUP_2], step=7, config={"kappa": 3.0})

    async_result = asyncio.run(run())
    assert sync_server.bodies() == async_server.bodies()
    assert sync_slept == async_slept == [2.0]
    assert sync_result.response == async_result.response
    assert async_server.requests[0].headers["Idempotency-Key"] == async_server.requests[1].headers["Idempotency-Key"]


# --- ScoreResult helpers ----------------------------------------------------------------------


def result() -> ScoreResult:
    return ScoreResult(ScoreResponse.model_validate(RESPONSE), request_id="req-ok")


def test_result_exposes_the_response_fields():
    r = result()
    assert (r.model, r.anneal_weight, r.stats.rollouts, len(r.groups)) == ("qwen-test", 0.86, 3, 2)


def test_advantages_are_flat_over_groups_then_rollouts():
    assert result().advantages() == [[0.5, 0.25, 1.0], [-0.75], [0.0, 0.0]]


def test_advantages_numpy_is_one_array_per_rollout():
    arrays = result().advantages_numpy()
    assert [a.shape for a in arrays] == [(3,), (1,), (2,)]
    np.testing.assert_array_equal(arrays[1], np.array([-0.75], dtype=np.float32))


def test_base_advantages_are_one_per_rollout_in_request_order():
    assert result().base_advantages() == [0.7, -0.7, 0.0]


def test_advantages_padded_right_pads_to_the_longest_rollout_with_a_mask():
    values, mask = result().advantages_padded(pad_value=-9.0)
    # Rollouts of 3, 1 and 2 tokens -> (B, T) = (3, 3).
    assert values.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.equal(values, torch.tensor([[0.5, 0.25, 1.0], [-0.75, -9.0, -9.0], [0.0, 0.0, -9.0]]))
    assert torch.equal(mask, torch.tensor([[True, True, True], [True, False, False], [True, True, False]]))


def test_advantages_padded_honours_dtype():
    values, _ = result().advantages_padded(dtype=torch.float64)
    assert values.dtype == torch.float64


# --- policy sync ------------------------------------------------------------------------------

POLICY_STATUS = {"version": "step-3", "path": "/ckpt/step-3", "previous_version": "base",
                 "changed": True, "reload_s": 0.5, "wait_s": 0.0, "lora_enabled": False}


def test_set_policy_posts_path_and_version_and_parses_the_status():
    server = Server(httpx.Response(200, json=POLICY_STATUS))
    client, _ = client_for(server, api_key="k")
    status = client.set_policy("step-3", "step-3")
    (request,) = server.requests
    assert request.method == "POST" and request.url == f"{BASE_URL}/v1/policy"
    assert json.loads(request.content) == {"path": "step-3", "version": "step-3"}
    assert request.headers["authorization"] == "Bearer k"
    assert status.version == "step-3" and status.changed and status.reload_s == 0.5


def test_a_bad_version_label_fails_before_sending():
    server = Server(httpx.Response(200, json=POLICY_STATUS))
    client, _ = client_for(server)
    with pytest.raises(InvalidRequestError, match="version"):
        client.set_policy("step-3", "step 3")  # no spaces in a label
    assert server.requests == []


def test_a_reload_in_progress_is_retried_and_a_policy_mismatch_is_not():
    server = Server(error_json(503, "reloading", "new weights are still loading", headers={"Retry-After": "2"}),
                    ok())
    client, slept = client_for(server)
    client.score([GROUP], step=0, policy={"version": "p1"})
    assert len(server.requests) == 2 and slept == [2.0]
    assert json.loads(server.requests[0].content)["policy"] == {"version": "p1"}

    server = Server(error_json(409, "policy_mismatch", "the service holds 'a'", field="policy.version"))
    client, slept = client_for(server)
    with pytest.raises(PolicyMismatchError) as err:
        client.score([GROUP], step=0, policy={"version": "b"})
    assert isinstance(err.value, ConflictError) and err.value.field == "policy.version"
    assert len(server.requests) == 1 and slept == []


def test_async_twin_sets_and_gets_the_policy():
    server = Server(httpx.Response(200, json=POLICY_STATUS))
    client, _ = async_client_for(server)

    async def both():
        return await client.set_policy("a", "v1"), await client.get_policy()

    posted, got = asyncio.run(both())
    assert [r.method for r in server.requests] == ["POST", "GET"]
    assert posted.version == got.version == "step-3"


@pytest.mark.parametrize("policy,message", [
    ({"lora_path": "a"}, "needs a version label"),
    ({"lora_path": "a", "lora_name": "b", "version": "v"}, "not both"),
    ({"lora_name": "b", "version": "v"}, "has no version"),
    ({"version": ""}, "at least 1 character"),
    ({"version": "v", "extra": 1}, "Extra inputs"),
])
def test_a_bad_policy_is_refused_before_sending(policy, message):
    server = Server(ok())
    client, _ = client_for(server)
    with pytest.raises(InvalidRequestError, match=message):
        client.score([GROUP], step=0, policy=policy)
    assert server.requests == []


# --- streamed answers (Accept: application/x-ndjson) ----------------------------------------------

def ndjson(*items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def group_line(index: int) -> dict:
    return {"type": "group", "index": index, "group": RESPONSE["groups"][index]}


END_LINE = {"type": "end", **{k: v for k, v in RESPONSE.items() if k != "groups"}}


class CutStream(httpx.SyncByteStream):
    """Sends `head`, then fails as a dropped connection does."""

    def __init__(self, head: bytes):
        self.head = head

    def __iter__(self):
        yield self.head
        raise httpx.ReadError("connection reset")


def test_a_stream_hands_out_groups_in_completion_order_and_assembles_the_result():
    sent = []

    def handler(request):
        sent.append(request)
        return httpx.Response(200, content=ndjson(group_line(1), group_line(0), END_LINE),
                              headers={"content-type": "application/x-ndjson"})

    client = AMRClient(BASE_URL, transport=httpx.MockTransport(handler))
    stream = client.score_stream([GROUP, GROUP_2], step=7)
    assert [index for index, _ in stream] == [1, 0]
    assert sent[0].headers["accept"] == "application/x-ndjson"
    assert stream.result.response == ScoreResponse.model_validate(RESPONSE)


def test_a_cut_stream_is_retried_with_the_same_key_and_no_group_is_handed_out_twice():
    keys = []

    def handler(request):
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            return httpx.Response(200, stream=CutStream(ndjson(group_line(0))))
        return httpx.Response(200, content=ndjson(group_line(0), group_line(1), END_LINE))

    client = AMRClient(BASE_URL, transport=httpx.MockTransport(handler))
    client._sleep = lambda s: None
    stream = client.score_stream([GROUP, GROUP_2], step=7)
    assert [index for index, _ in stream] == [0, 1]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(stream.result.groups) == 2


def test_an_error_line_raises_what_a_unary_call_would_and_is_retried_when_retryable():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(200, content=ndjson(group_line(0), {
                "type": "error", "status": 504, "retry_after_s": None,
                "error": {"type": "deadline_exceeded", "message": "no group finished"}}))
        return httpx.Response(200, content=ndjson(group_line(1), group_line(0), END_LINE))

    client = AMRClient(BASE_URL, transport=httpx.MockTransport(handler))
    slept = []
    client._sleep = slept.append
    assert len(client.score([GROUP, GROUP_2], step=7, progress=lambda d, t: None).groups) == 2
    assert len(calls) == 2 and len(slept) == 1

    final = AMRClient(BASE_URL, max_retries=0, transport=httpx.MockTransport(
        lambda r: httpx.Response(200, content=ndjson({
            "type": "error", "status": 422, "error": {"type": "invalid_request", "message": "bad",
                                                      "field": "groups[0]"}}))))
    with pytest.raises(UnprocessableEntityError) as err:
        list(final.score_stream([GROUP, GROUP_2], step=7))
    assert err.value.field == "groups[0]"


def test_a_stream_that_ends_without_its_end_line_is_a_connection_error():
    client = AMRClient(BASE_URL, max_retries=0, transport=httpx.MockTransport(
        lambda r: httpx.Response(200, content=ndjson(group_line(0), group_line(1)))))
    with pytest.raises(APIConnectionError, match="ended early"):
        list(client.score_stream([GROUP, GROUP_2], step=7))


def test_progress_ticks_once_per_group_on_both_twins():
    body = ndjson(group_line(0), group_line(1), END_LINE)
    ticks = []
    sync = AMRClient(BASE_URL, transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)))
    sync.score([GROUP, GROUP_2], step=7, progress=lambda d, t: ticks.append((d, t)))

    async def go():
        async with AsyncAMRClient(BASE_URL, transport=httpx.MockTransport(
                lambda r: httpx.Response(200, content=body))) as client:
            return await client.score([GROUP, GROUP_2], step=7,
                                      progress=lambda d, t: ticks.append((d, t)))

    result = asyncio.run(go())
    assert ticks == [(1, 2), (2, 2)] * 2
    assert result.response == ScoreResponse.model_validate(RESPONSE)


# --- the compact answer (Accept: application/msgpack) ------------------------------------------


def msgpack_ok() -> httpx.Response:
    from amr_client.binary import MSGPACK, encode_response

    return httpx.Response(200, content=encode_response(RESPONSE),
                          headers={"Content-Type": MSGPACK, "X-Request-ID": "req-mp"})


def long_group(tokens: int) -> dict:
    return {"prompt": {"text": "1 + 1 ="}, "rollouts": [{"token_ids": [5] * tokens, "reward": 1.0}]}


def test_auto_asks_for_msgpack_only_from_the_binary_threshold_up():
    from amr_client._base import BINARY_MIN_TOKENS

    server = Server(ok())
    client, _ = client_for(server)
    client.score([long_group(BINARY_MIN_TOKENS - 1)], step=0)
    client.score([long_group(BINARY_MIN_TOKENS)], step=0)
    client.score([long_group(8)], step=0, encoding="msgpack")
    client.score([long_group(BINARY_MIN_TOKENS)], step=0, encoding="json")
    assert [r.headers["accept"] for r in server.requests] == [
        "application/json", "application/msgpack", "application/msgpack", "application/json"]


def test_a_msgpack_answer_gives_the_result_a_json_answer_gives():
    as_json, _ = client_for(Server(ok()))
    as_msgpack, _ = client_for(Server(msgpack_ok()))
    a = as_json.score([GROUP, GROUP_2], step=7, encoding="json")
    b = as_msgpack.score([GROUP, GROUP_2], step=7, encoding="msgpack")
    assert b.request_id == "req-mp"
    # The test values are exact in float32, so the two answers are equal, not just close.
    assert b.response == a.response


def test_auto_falls_back_to_json_when_the_server_cannot_write_msgpack():
    from amr_client._base import BINARY_MIN_TOKENS

    server = Server(error_json(406, "not_acceptable", "cannot answer", "Accept"), ok())
    client, _ = client_for(server)
    result = client.score([long_group(BINARY_MIN_TOKENS)], step=0)
    assert result.request_id == "req-ok"
    assert [r.headers["accept"] for r in server.requests] == ["application/msgpack", "application/json"]
    key = {r.headers["idempotency-key"] for r in server.requests}
    assert len(key) == 1  # the same logical call


def test_explicit_msgpack_keeps_the_406_and_the_async_twin_falls_back_too():
    server = Server(error_json(406, "not_acceptable", "cannot answer", "Accept"))
    client, _ = client_for(server)
    with pytest.raises(APIStatusError) as caught:
        client.score([GROUP], step=0, encoding="msgpack")
    assert caught.value.status_code == 406 and caught.value.field == "Accept"
    assert len(server.requests) == 1

    from amr_client._base import BINARY_MIN_TOKENS

    server = Server(error_json(406, "not_acceptable", "cannot answer", "Accept"), msgpack_ok())
    aclient, _ = async_client_for(server)
    result = asyncio.run(aclient.score([long_group(BINARY_MIN_TOKENS)], step=0))
    assert len(server.requests) == 2 and result.request_id == "req-mp"


def test_an_unknown_encoding_is_refused_before_sending():
    server = Server(ok())
    client, _ = client_for(server)
    with pytest.raises(ValueError, match='encoding must be "auto", "json" or "msgpack"'):
        client.score([GROUP], step=0, encoding="npy")
    assert server.requests == []


def test_a_msgpack_body_that_is_not_an_answer_is_an_invalid_response():
    from amr_client.binary import MSGPACK

    bad = httpx.Response(200, content=b"\x93\x01\x02\x03", headers={"Content-Type": MSGPACK})
    client, _ = client_for(Server(bad))
    with pytest.raises(APIStatusError) as caught:
        client.score([GROUP], step=0, encoding="msgpack")
    assert caught.value.type == "invalid_response"
