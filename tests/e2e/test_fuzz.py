"""The HTTP contract under fuzzing: schemathesis generates requests from `openapi.yaml`, valid and
invalid alike, and sends them to a real `amr-sd serve` process.

Every answer must be one `openapi.yaml` documents (status code, content type, body schema: the
`{"error": {"type", "message", "field"}}` envelope for errors), no answer may be a 5xx other than
the documented 503 (not ready, draining, engine dead) and 504 (deadline), and every response
carries X-Request-ID. Errors the framework raises outside the documented operations (unknown
route, wrong method, unreadable body) must use the same envelope.

The server runs with small caps and a 1 s deadline, so a fuzzed request that happens to be valid
scoring work costs about a second at most: the run stays bounded (a fixed number of examples per
operation, derandomized and seeded, so a failure repeats).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.e2e

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"

# Small caps keep any valid request the fuzzer builds to a little engine work, and the deadline
# (which a fuzzed X-Request-Timeout may not raise past 1 s) turns anything longer into a 504:
# about 20 of the requests below are step-0 engine work, so the deadline is most of the run time.
SERVER_ENV = {"AMR_MAX_GROUPS": "2", "AMR_MAX_ROLLOUTS": "4", "AMR_MAX_TOKENS": "64",
              "AMR_REQUEST_TIMEOUT_S": "1", "AMR_MAX_REQUEST_TIMEOUT_S": "1"}
MAX_EXAMPLES = 40
# Documented server-side statuses: 503 not ready / draining / engine dead, 504 deadline exceeded.
ALLOWED_STATUSES = ["2xx", "3xx", "4xx", "503", "504"]
# An invalid request may also be refused for its size before it is parsed: a fuzzed string past
# its maxLength can be tens of MB, and the body cap answers 413 without reading it.
REJECTION_STATUSES = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]

schema = schemathesis.openapi.from_path(OPENAPI, config=schemathesis.Config.from_dict({
    "seed": 5,
    # The coverage phase's valid variants of the openapi example are all step-0 engine work
    # (about 100 of them); its invalid ones are cheap. Valid requests come from fuzzing instead,
    # bounded by MAX_EXAMPLES.
    "phases": {"coverage": {"generation": {"mode": "negative"}}},
    "checks": {"not_a_server_error": {"expected-statuses": ALLOWED_STATUSES},
               "negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}},
}))


@schemathesis.check
def request_id_on_every_response(ctx, response, case):
    assert response.headers.get("x-request-id"), "no X-Request-ID header"
    return True


CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection,
          request_id_on_every_response]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, launch_server):
    log_path = tmp_path_factory.mktemp("fuzz") / "server.log"
    with launch_server(log_path, env=SERVER_ENV) as server:
        yield server.base_url


@schema.parametrize()
# No shrinking: each step of it is another request; the failure report already holds a curl line.
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_no_5xx_but_503_504(case, fuzz_server):
    case.call_and_validate(base_url=fuzz_server, checks=CHECKS, timeout=60)


# Errors raised by the framework rather than by amr-sd (no route, wrong method, a body that is not
# even text) are outside any operation's documented answers, so the fuzz run cannot hold them to
# the envelope; these requests do.
FRAMEWORK_ERRORS = {
    "unknown route": ("GET", "/v1/nope", None),
    "unsupported method": ("DELETE", "/v1/score", None),
    "body not UTF-8": ("POST", "/v1/score", b"\x59\x12\x35\xff\xfe\x4f"),
}


@pytest.mark.parametrize("method, path, content", FRAMEWORK_ERRORS.values(), ids=FRAMEWORK_ERRORS)
def test_errors_raised_by_the_framework_use_the_error_envelope(fuzz_server, method, path, content):
    answer = httpx.request(method, fuzz_server + path, content=content,
                           headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500 and answer.headers.get("x-request-id")
    body = answer.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
