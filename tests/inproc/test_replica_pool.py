"""`AsyncReplicaClient` over several in-process services (the real runtime and FastAPI app on a
stand-in engine): one call spreads over every replica and answers as one service does, a failed
replica's shard goes elsewhere, and a replica on other weights is never used for a shard."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import numpy as np
import pytest
from harness import body

from amr_client import AsyncAMRClient, FanOutError, PolicyMismatchError, ReplicaMismatchError
from amr_client.replicas import AsyncReplicaClient


def _groups(tokenizer, n: int) -> list[dict]:
    """n groups of different lengths, so the shards must be balanced by tokens."""
    groups = body(tokenizer, groups=n)["groups"]
    for g, group in enumerate(groups):
        for r, rollout in enumerate(group["rollouts"]):
            rollout["token_ids"] = rollout["token_ids"] * (1 + (g * 3 + r) % 5)
            rollout["reward"] = float((g + r) % 2)
    return groups


class InProcessReplicas(AsyncReplicaClient):
    """The replica client with each replica's HTTP client on its service's ASGI app."""

    apps: dict = {}

    def _make_client(self, name, channel_options=()):
        return AsyncAMRClient(name, max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=self.apps[name])))


@contextlib.asynccontextmanager
async def replicas(service, n: int, each: list[dict] | None = None, **settings):
    async with contextlib.AsyncExitStack() as stack:
        services = [await stack.enter_async_context(service(**settings, **(each[i] if each else {})))
                    for i in range(n)]
        names = [f"http://replica-{i}" for i in range(n)]
        pool_class = type("Pool", (InProcessReplicas,), {
            "apps": {name: svc.http._transport.app for name, svc in zip(names, services)}})
        pool = pool_class(names, max_retries=1)
        try:
            yield pool, services
        finally:
            await pool.close()


def _numbers(result) -> list:
    return [(r.base_advantage, *r.advantages) for g in result.groups for r in g.rollouts]


def _close(got: list, want: list) -> bool:
    return len(got) == len(want) and all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(got, want))


EXACT_STATS = ("groups", "rollouts", "response_tokens", "tokens_scored", "reflected_tokens", "gated_tokens",
               "reflections_requested", "reflections_accepted", "reflections_rejected", "reject_reasons",
               "nonfinite_cig")


def test_one_call_spreads_over_every_replica_and_equals_one_service(service, tokenizer):
    groups = _groups(tokenizer, 7)

    async def main():
        async with service() as single:
            alone = (await single.http.post("/v1/score", json={"groups": groups, "step": 3})).json()
        async with replicas(service, 3) as (pool, services):
            result = await pool.score(groups, step=3)
            streamed = pool.score_stream(groups, step=3)
            seen = [index async for index, _ in streamed]
            return alone, result, streamed.result, seen, [s.engine.passes for s in services]

    alone, result, streamed, seen, passes = asyncio.run(main())
    assert all(p > 0 for p in passes), passes  # every replica scored a shard
    want = [(r["base_advantage"], *r["advantages"]) for g in alone["groups"] for r in g["rollouts"]]
    assert _close(_numbers(result), want) and _numbers(streamed) == _numbers(result)
    assert sorted(seen) == list(range(7))  # each group passed on once
    for name in EXACT_STATS:
        assert getattr(result.stats, name) == alone["stats"][name], name
    assert result.stats.cig_mean == pytest.approx(alone["stats"]["cig_mean"], abs=1e-9)
    assert result.stats.cig_std == pytest.approx(alone["stats"]["cig_std"], abs=1e-9)
    assert result.stats.mean_abs_advantage == pytest.approx(alone["stats"]["mean_abs_advantage"])
    assert result.stats.gate_rate == pytest.approx(alone["stats"]["gate_rate"])
    assert len(result.request_id.split(",")) == 3


def test_a_failed_replica_s_shard_is_scored_elsewhere(service, tokenizer):
    groups = _groups(tokenizer, 6)

    async def main():
        async with replicas(service, 2) as (pool, services):
            await services[1].runtime.close()  # gone: its shard must go to replica 0
            result = await pool.score(groups, step=0)
            return result, [s.engine.passes for s in services]

    result, passes = asyncio.run(main())
    assert len(result) == 6 and passes[1] == 0 and passes[0] > 0


@pytest.fixture
def policy_root(tmp_path) -> tuple[str, str]:
    """A policy root holding "step-1", a checkpoint of the served model's own files, and the
    served model's folder."""
    from amr_sd.engine.models import materialize_embedded

    served = materialize_embedded()
    (tmp_path / "step-1").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "step-1" / name).symlink_to(served / name)
    return str(tmp_path), str(served)


def test_a_replica_on_other_weights_is_not_used(service, tokenizer):
    groups = _groups(tokenizer, 4)

    async def main():
        async with replicas(service, 2, each=[{}, {"policy_version": "step-1"}]) as (pool, services):
            pool.policy_version = "base"  # as set_policy would have set it
            result = await pool.score(groups, step=0)
            pool.policy_version = "step-2"  # no replica holds it
            with pytest.raises(PolicyMismatchError):
                await pool.score(groups, step=0)
            return result, [s.engine.passes for s in services]

    result, passes = asyncio.run(main())
    assert result.policy_version == "base" and passes[1] == 0


def test_set_policy_reaches_every_replica_and_names_the_one_it_missed(service, policy_root):
    root, served = policy_root

    async def main():
        async with replicas(service, 2, policy_root=root, model_path=served) as (pool, services):
            statuses = await pool.set_policy("step-1", "step-1")
            await services[0].runtime.close()
            with pytest.raises(FanOutError) as caught:
                await pool.set_policy("step-1", "step-1")
            return statuses, caught.value

    statuses, error = asyncio.run(main())
    assert {s.version for s in statuses.values()} == {"step-1"}
    assert list(error.errors) == ["http://replica-0"] and list(error.results) == ["http://replica-1"]
    assert "http://replica-0" in str(error)


def test_replicas_on_different_versions_are_refused_before_scoring(service, tokenizer):
    async def main():
        async with replicas(service, 2, each=[{"policy_version": "step-1"}, {}]) as (pool, services):
            with pytest.raises(ReplicaMismatchError, match="different policy versions"):
                await pool.score(_groups(tokenizer, 2), step=0)
            return [s.engine.passes for s in services]

    assert asyncio.run(main()) == [0, 0]


def test_gate_rate_target_keeps_the_batch_whole(service, tokenizer):
    async def main():
        async with replicas(service, 2) as (pool, services):
            await pool.score(_groups(tokenizer, 4), step=0, config={"gate_rate_target": 0.1})
            return [s.engine.passes for s in services]

    passes = asyncio.run(main())
    assert sorted(p > 0 for p in passes) == [False, True]


def test_the_dns_form_uses_every_address_and_follows_changes(service, tokenizer, monkeypatch):
    answers = [["127.0.0.1", "127.0.0.2"]]

    async def resolve(host, port):
        assert (host, port) == ("scorers.test", 8000)
        return answers[-1]

    monkeypatch.setattr("amr_client.replicas.resolve", resolve)
    groups = _groups(tokenizer, 4)

    async def main():
        async with contextlib.AsyncExitStack() as stack:
            services = [await stack.enter_async_context(service()) for _ in range(2)]
            apps = {f"http://127.0.0.{i + 1}:8000": svc.http._transport.app for i, svc in enumerate(services)}
            pool = type("Pool", (InProcessReplicas,), {"apps": apps})(dns="scorers.test")
            first = await pool.score(groups, step=0)
            passes = [s.engine.passes for s in services]
            answers.append(["127.0.0.2"])  # a pod went away; after the refresh only one is used
            pool.dns_refresh_s = 0.0
            names = [r.name for r in await pool.replicas()]
            second = await pool.score(groups, step=0)
            await pool.close()
            return first, second, passes, [s.engine.passes for s in services], names

    first, second, passes, later, names = asyncio.run(main())
    assert all(p > 0 for p in passes) and names == ["http://127.0.0.2:8000"]
    assert later[0] == passes[0] and later[1] > passes[1]
    assert _numbers(first) == _numbers(second)


def test_a_stream_resent_after_a_cut_hands_out_each_group_once(service, tokenizer, caplog):
    groups = _groups(tokenizer, 6)

    async def main():
        # No score cache: the second call must reach the engine.
        async with replicas(service, 2, score_cache_ttl_s=0) as (pool, services):
            engine = services[1].engine
            real_score, real_generate, calls, writes = engine.score, engine.generate, [], []

            async def staggered(*args, **kwargs):  # each group's reflection a bit later
                writes.append(1)
                await asyncio.sleep(0.1 * len(writes))
                return await real_generate(*args, **kwargs)

            async def score_then_fail(*args, **kwargs):
                calls.append(1)
                if len(calls) > 1:  # its first group answered, then the engine fails
                    raise RuntimeError("engine lost")
                return await real_score(*args, **kwargs)

            engine.generate, engine.score = staggered, score_then_fail
            stream = pool.score_stream(groups, step=0)
            seen = [index async for index, _ in stream]
            engine.generate, engine.score = real_generate, real_score
            whole = await pool.score(groups, step=0)  # no failure: the reference
            return whole, seen, stream.result, len(calls)

    whole, seen, result, calls = asyncio.run(main())
    assert calls == 2 and "trying another replica" in caplog.text  # one group came, then a cut
    assert sorted(seen) == list(range(6))  # yet each group was handed out once
    assert _numbers(result) == _numbers(whole)
