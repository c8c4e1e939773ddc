"""Streamed answers (`Accept: application/x-ndjson`) from a real `amr-sd serve` over real HTTP."""

import asyncio
import json
import uuid

import httpx
import pytest

from amr_client import AMRClient, AsyncAMRClient

pytestmark = pytest.mark.e2e

NDJSON = "application/x-ndjson"


def overridden(groups, text="Check each addition once more."):
    """Scoring only: every rollout brings its reflection, so answers are a function of the body."""
    return [{**g, "rollouts": [{**r, "reflection_override": text}
                               for r in g["rollouts"]]} for g in groups]


def body(groups, **extra):
    return {"groups": groups, "step": 0, "return": {"cig": True}, **extra}


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def stream_lines(base_url, payload, headers=None):
    with httpx.stream("POST", f"{base_url}/v1/score", json=payload, timeout=300,
                      headers={"Accept": NDJSON, **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith(NDJSON)
        return [json.loads(line) for line in response.iter_lines() if line], response.headers


def test_a_stream_has_one_line_per_group_then_an_end_line(amr_server, example_groups):
    groups = overridden(example_groups[:3])
    lines, _ = stream_lines(amr_server, body(groups))
    assert [line["type"] for line in lines] == ["group"] * 3 + ["end"]
    assert sorted(line["index"] for line in lines[:-1]) == [0, 1, 2]
    for line in lines[:-1]:
        rollouts = line["group"]["rollouts"]
        assert [len(r["advantages"]) for r in rollouts] == \
            [len(r["token_ids"]) for r in groups[line["index"]]["rollouts"]]
    end = lines[-1]
    assert end["stats"]["groups"] == 3 and "groups" not in end
    assert end["model"] == "smollm2-135m-instruct"


def test_a_streamed_batch_equals_the_unary_answer(amr_server, example_groups):
    # A reflection no other test sends, so the stream's teacher passes are scored, not read back.
    groups = overridden(example_groups[3:6], "Is every sum carried correctly?")
    lines, _ = stream_lines(amr_server, body(groups))
    unary = httpx.post(f"{amr_server}/v1/score", json=body(groups), timeout=300).json()
    by_index = {line["index"]: line["group"] for line in lines if line["type"] == "group"}
    assert [by_index[g] for g in range(3)] == unary["groups"]
    end = lines[-1]
    for key in ("model", "policy_version", "template_version", "step", "anneal_weight"):
        assert end[key] == unary[key]
    # The stream scored the teacher passes (student passes of these rollouts may be cached by
    # earlier tests); the unary repeat read every pass back from the score cache.
    passes = 2 * sum(len(g["rollouts"]) for g in groups)
    tokens = sum(len(r["token_ids"]) for g in groups for r in g["rollouts"])
    assert end["stats"]["tokens_scored"] >= tokens and end["stats"]["scores_cached"] <= passes // 2
    assert (unary["stats"]["tokens_scored"], unary["stats"]["scores_cached"]) == (0, passes)
    same = lambda stats: {k: v for k, v in stats.items()  # noqa: E731
                          if k not in ("timings", "tokens_scored", "scores_cached")}
    assert same(end["stats"]) == same(unary["stats"])


def test_the_client_streams_each_group_once_and_assembles_the_unary_result(amr_server,
                                                                           example_groups):
    groups = overridden(example_groups[6:9])
    with AMRClient(amr_server) as client:
        unary = client.score(groups, step=0, returns={"cig": True})
        stream = client.score_stream(groups, step=0, returns={"cig": True})
        seen = [index for index, _ in stream]
        ticks = []
        with_progress = client.score(groups, step=0, returns={"cig": True},
                                     progress=lambda done, total: ticks.append((done, total)))
    assert sorted(seen) == [0, 1, 2]
    assert stream.result.groups == unary.groups
    assert with_progress.groups == unary.groups
    assert ticks == [(1, 3), (2, 3), (3, 3)]

    async def async_stream():
        async with AsyncAMRClient(amr_server) as client:
            stream = client.score_stream(groups, step=0, returns={"cig": True})
            return [i async for i, _ in stream], stream.result

    indices, result = asyncio.run(async_stream())
    assert sorted(indices) == [0, 1, 2] and result.groups == unary.groups


def test_an_accept_the_service_cannot_produce_gets_406_naming_what_it_can(amr_server,
                                                                          example_groups):
    response = httpx.post(f"{amr_server}/v1/score", json=body(overridden(example_groups[:1])),
                          headers={"Accept": "text/html"}, timeout=60)
    assert response.status_code == 406
    error = response.json()["error"]
    assert error["type"] == "not_acceptable" and error["field"] == "Accept"
    assert "application/json" in error["message"] and NDJSON in error["message"]
    # q-values choose between what it can produce; */* is JSON.
    either = httpx.post(f"{amr_server}/v1/score", json=body(overridden(example_groups[:1])),
                        headers={"Accept": f"application/json;q=0.5, {NDJSON}"}, timeout=60)
    assert either.headers["content-type"].startswith(NDJSON)


def test_an_idempotency_key_on_a_stream_replays_the_finished_answer_without_scoring(
        amr_server, example_groups):
    groups = overridden(example_groups[9:11])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first, _ = stream_lines(amr_server, body(groups), key)
    scored = metric(amr_server, "amr_sd_tokens_scored_total")
    again, headers = stream_lines(amr_server, body(groups), key)
    assert headers["idempotent-replayed"] == "true"
    assert metric(amr_server, "amr_sd_tokens_scored_total") == scored  # no engine work
    group_lines = lambda lines: sorted((l["index"], json.dumps(l["group"])) for l in lines  # noqa: E731
                                       if l["type"] == "group")
    assert group_lines(again) == group_lines(first)
    assert again[-1]["stats"] == first[-1]["stats"]
    # The same key asked for as unary JSON gets the same stored answer.
    unary = httpx.post(f"{amr_server}/v1/score", json=body(groups), headers=key, timeout=60)
    assert unary.headers["idempotent-replayed"] == "true"
    assert [json.dumps(g) for g in unary.json()["groups"]] == [g for _, g in group_lines(first)]


def test_a_calibrated_gate_gates_the_target_share_of_each_branch_streamed_or_not(
        amr_server, example_groups):
    from transformers import AutoTokenizer

    from amr_sd.algo.advantage import calibrated_tau
    from amr_sd.engine.models import materialize_embedded

    special = set(AutoTokenizer.from_pretrained(str(materialize_embedded())).all_special_ids)
    groups = overridden(example_groups[6:9])
    payload = body(groups, config={"gate_rate_target": 0.1})
    unary = httpx.post(f"{amr_server}/v1/score", json=payload, timeout=300).json()
    lines, _ = stream_lines(amr_server, payload)
    streamed = {line["index"]: line["group"] for line in lines if line["type"] == "group"}
    assert [streamed[i] for i in range(3)] == unary["groups"]
    stats = unary["stats"]
    assert lines[-1]["stats"]["negative"] == stats["negative"]
    for name, positive in (("positive", True), ("negative", False)):
        cig, gated = [], []
        for group, scored in zip(groups, unary["groups"]):
            for wire, out in zip(group["rollouts"], scored["rollouts"]):
                if "cig" not in out or (out["base_advantage"] > 0) != positive:
                    continue
                keep = [t not in special for t in wire["token_ids"]]
                cig += [c for c, k in zip(out["cig"], keep) if k]
                gated += [g for g, k in zip(out["gated"], keep) if k]
        branch = stats[name]
        assert branch["reflected_tokens"] == len(cig) > 0
        # The service's tau is the quantile of exactly the CIG it returned ...
        assert branch["tau"] == pytest.approx(calibrated_tau(cig, 0.1, positive=positive),
                                              abs=1e-12)
        # ... and it gates about a tenth of the branch, where a fixed 1 nat gates a few %.
        assert branch["gated_tokens"] == sum(gated)
        assert 0.08 <= branch["gate_rate"] <= 0.11, branch
