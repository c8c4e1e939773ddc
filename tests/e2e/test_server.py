"""The service as a user runs it: a real `amr-sd serve` process, called over real HTTP by both
client twins, with and without Redis behind the reflection cache."""

import asyncio
import os
import signal

import httpx
import numpy as np
import pytest

from amr_client import AMRClient, AsyncAMRClient, PayloadTooLargeError, UnprocessableEntityError
from amr_client.schemas import ScoreRequest
from amr_sd.scoring import Scorer

pytestmark = pytest.mark.e2e

# Greedy reflections and no retries: the output is a function of the request, so the server's
# answer can be compared with the in-process scorer's. Both run in float32, whatever the machine
# would serve: in bf16 two engines given the same request batch it differently, bf16 rounding flips
# greedy near-ties (seen on a Zen 4 with avx512_bf16: the same reflection for 108 characters, then
# another), and the batch make-up moves CIG by bf16 noise (tests/integration/test_parity.py).
GREEDY = {"max_retries": 0, "max_reflection_tokens": 48}
MAX_GROUPS = 3


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, tmp_path_factory, launch_server):
    args = ["--redis-url", request.getfixturevalue("redis_url")] if request.param == "redis" else []
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with launch_server(log_path, "--dtype", "float32", *args,
                       env={"AMR_MAX_GROUPS": str(MAX_GROUPS)}) as server:
        yield request.param, server.base_url


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_probes_and_info(server):
    cache, base_url = server
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert AMRClient(base_url).ready()
    info = AMRClient(base_url).info()
    assert info["model"] == "smollm2-135m-instruct" and info["cache"] == cache
    assert info["score_cache"] == cache
    assert os.path.isdir(info["model_path"]) and info["limits"]["max_groups"] == MAX_GROUPS


def test_both_twins_match_the_in_process_scorer_and_repeat_from_cache(server, vllm_engine, run,
                                                                         example_groups):
    _, base_url = server
    groups = example_groups[:2]
    req = ScoreRequest.model_validate({"groups": groups, "step": 0, "config": GREEDY})
    local = run(Scorer(vllm_engine).score(req))

    cached_before = metric(base_url, "amr_sd_reflections_cached_total")
    with AMRClient(base_url) as client:
        first = client.score(groups, step=0, config=GREEDY)

    async def again():
        async with AsyncAMRClient(base_url) as client:
            return await client.score(groups, step=0, config=GREEDY)

    second = asyncio.run(again())
    for result in (first, second):
        for g_local, g_remote in zip(local.groups, result.groups, strict=True):
            for a, b in zip(g_local.rollouts, g_remote.rollouts, strict=True):
                assert a.base_advantage == b.base_advantage
                assert (a.reflection.kind, a.reflection.text, a.reflection.accepted) == \
                    (b.reflection.kind, b.reflection.text, b.reflection.accepted)
                np.testing.assert_allclose(a.advantages, b.advantages, rtol=0, atol=1e-6)
    # The repeat wrote no reflection: every one came from the cache.
    assert second.stats.reflections_generated == 0
    assert second.stats.reflections_cached == second.stats.reflections_requested > 0
    assert all(r.reflection.cached for g in second.groups for r in g.rollouts)
    assert metric(base_url, "amr_sd_reflections_cached_total") - cached_before == \
        second.stats.reflections_cached


def test_a_resent_batch_is_read_from_the_score_cache_bit_for_bit(server, example_groups):
    _, base_url = server
    # Reflections brought by the caller: every rollout with a nonzero advantage is scored.
    groups = [{**g, "rollouts": [{**r, "reflection_override": f"Check step {i} again."}
                                 for i, r in enumerate(g["rollouts"])]} for g in example_groups[:2]]
    cached_before = metric(base_url, "amr_sd_scores_cached_total")
    with AMRClient(base_url) as client:
        first = client.score(groups, step=0, returns={"cig": True})
        second = client.score(groups, step=0, returns={"cig": True})
    passes = 2 * first.stats.reflections_accepted
    assert passes > 0 and first.stats.tokens_scored > 0
    assert second.stats.scores_cached == passes and second.stats.tokens_scored == 0
    assert metric(base_url, "amr_sd_scores_cached_total") - cached_before == passes
    assert second.groups == first.groups


def test_bad_input_is_422_naming_the_field(server, example_groups):
    _, base_url = server
    group = example_groups[0]
    bad = {**group, "rollouts": [group["rollouts"][0], {**group["rollouts"][1], "token_ids": [10**6]}]}
    with pytest.raises(UnprocessableEntityError) as err:
        AMRClient(base_url).score([group, bad], step=0)
    assert err.value.field == "groups[1].rollouts[1].token_ids[0]"
    assert "vocabulary" in err.value.message
    raw = httpx.post(f"{base_url}/v1/score", json={"groups": [group], "step": 0, "config": {"tau": 1}})
    assert raw.status_code == 422
    assert raw.json()["error"]["field"] == "config.tau"


def test_over_the_group_cap_is_413(server, example_groups):
    _, base_url = server
    with pytest.raises(PayloadTooLargeError) as err:
        AMRClient(base_url).score(example_groups[:MAX_GROUPS + 1], step=50)
    assert f"the cap is {MAX_GROUPS}" in err.value.message


def test_sigterm_stops_the_server_cleanly_with_exit_0(tmp_path, launch_server):
    with launch_server(tmp_path / "server.log") as server:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log_path.read_text()[-3000:]
