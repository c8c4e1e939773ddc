"""Request builders and outcome readers shared by the in-process tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from amr_client.grpc_codec import fill
from amr_client.v1 import scoring_pb2 as pb

GRPC_CODE = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 409: "ABORTED", 413: "RESOURCE_EXHAUSTED",
             422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
             504: "DEADLINE_EXCEEDED"}


@dataclass
class Outcome:
    status: int  # the HTTP status; over gRPC the one its ErrorInfo carries (200: success)
    type: str | None = None
    field: str | None = None
    retry_after: float | None = None
    answer: dict | None = None
    replayed: bool = False


def body(tokenizer, *, groups: int = 1, **extra) -> dict:
    """A valid request: groups of one wrong and one right rollout."""
    wrong = tokenizer.encode("2 + 3 = 6. The answer is 6.", add_special_tokens=False)
    right = tokenizer.encode("2 + 3 = 5. The answer is 5.", add_special_tokens=False)
    group = {"prompt": {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
             "rollouts": [{"token_ids": wrong, "reward": 0.0, "feedback": "6 is wrong."},
                          {"token_ids": right, "reward": 1.0}],
             "reference": {"answer": "5"}}
    return {"groups": [json.loads(json.dumps(group)) for _ in range(groups)], "step": 0, **extra}


def to_proto(request: dict) -> pb.ScoreRequest:
    data = dict(request)
    if "return" in data:
        data["returns"] = data.pop("return")
    return fill(pb.ScoreRequest(), data)


def grpc_outcome(err: grpc.aio.AioRpcError) -> Outcome:
    status = rpc_status.from_call(err)
    assert status is not None, f"{err.code()} without google.rpc details: {err.details()}"
    info = bad = retry = None
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                item = kind()
                detail.Unpack(item)
                if kind is error_details_pb2.ErrorInfo:
                    info = item
                elif kind is error_details_pb2.BadRequest:
                    bad = item
                else:
                    retry = item
    http_status = int(info.metadata["status"])
    assert err.code().name == (GRPC_CODE[http_status] if info.reason != "policy_mismatch"
                               else "FAILED_PRECONDITION"), (err.code(), info)
    field = info.metadata.get("field")
    if err.code() is grpc.StatusCode.INVALID_ARGUMENT and field:
        assert bad is not None and bad.field_violations[0].field == field
    return Outcome(http_status, info.reason, field,
                   retry.retry_delay.seconds if retry is not None else None)
