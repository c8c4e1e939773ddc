"""Request builders shared by the in-process tests."""

from __future__ import annotations

import json

from amr_client.grpc_codec import fill
from amr_client.v1 import scoring_pb2 as pb


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
