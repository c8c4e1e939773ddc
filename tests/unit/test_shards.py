"""The pure half of the replica client: shards of whole groups, answers merged back, and the
arguments a user can get wrong."""

from __future__ import annotations

import numpy as np
import pytest

from amr_client import ReplicaClient, ReplicaMismatchError
from amr_client.replicas import _pick, Replica, parse_dns
from amr_client.schemas import BatchStats, BranchStats, ScoredGroup, ScoreResponse
from amr_client.shards import merge, merge_stats, must_stay_whole, split


def test_split_keeps_groups_whole_balanced_and_in_order():
    weights = [50, 10, 10, 10, 10, 10, 40, 30]
    shards = split(weights, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(8))  # each group once
    assert all(shard == sorted(shard) for shard in shards)
    loads = [sum(weights[i] for i in shard) for shard in shards]
    assert max(loads) - min(loads) <= 10, loads
    assert split([5, 5], 4) == [[0], [1]]  # never an empty shard
    with pytest.raises(ValueError, match="at least 1"):
        split([1], 0)


def test_a_batch_with_gate_rate_target_stays_whole():
    assert must_stay_whole({"config": {"gate_rate_target": 0.1}})
    assert not must_stay_whole({"config": {"tau_pos": 0.5}}) and not must_stay_whole({})


def _stats(cig: np.ndarray, gated: int, tokens: int, accepted: int, requested: int, top) -> BatchStats:
    return BatchStats(groups=1, rollouts=2, response_tokens=tokens, tokens_scored=2 * tokens,
                      reflected_tokens=len(cig), gated_tokens=gated, gate_rate=gated / len(cig),
                      reflections_requested=requested, reflections_generated=requested,
                      reflections_accepted=accepted, reflections_rejected=requested - accepted,
                      acceptance_rate=accepted / requested, reject_reasons={"leak": requested - accepted},
                      cig_mean=float(cig.mean()), cig_std=float(cig.std()), nonfinite_cig=0,
                      mean_abs_base_advantage=0.5, mean_abs_advantage=0.25 * tokens / 10,
                      top_gated_tokens=top,
                      positive=BranchStats(rollouts=1, reflected_tokens=len(cig), gated_tokens=gated,
                                           gate_rate=gated / len(cig), tau=0.5, cig_p50=float(np.median(cig))))


def test_merged_stats_are_the_whole_batch_s():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.2, 1.0, 40), rng.normal(-0.5, 2.0, 10)
    merged = merge_stats([_stats(a, 4, 10, 1, 2, [(" 7", 3), (" +", 1)]),
                          _stats(b, 6, 30, 2, 2, [(" +", 5)])])
    both = np.concatenate([a, b])
    assert merged.cig_mean == pytest.approx(both.mean(), abs=1e-12)
    assert merged.cig_std == pytest.approx(both.std(), abs=1e-12)
    assert (merged.reflected_tokens, merged.gated_tokens, merged.response_tokens) == (50, 10, 40)
    assert merged.gate_rate == pytest.approx(10 / 50) and merged.acceptance_rate == pytest.approx(3 / 4)
    assert merged.reject_reasons == {"leak": 1}
    assert merged.mean_abs_advantage == pytest.approx((0.25 * 10 + 0.75 * 30) / 40)
    assert merged.top_gated_tokens[0] == (" +", 6)
    assert merged.positive.gate_rate == pytest.approx(10 / 50) and merged.positive.tau == 0.5


def _response(n_groups: int, **fields) -> ScoreResponse:
    group = ScoredGroup.model_construct(rollouts=[])
    base = dict(model="m", policy_version="base", template_version="t1", step=0, anneal_weight=1.0,
                groups=[group] * n_groups, stats=_stats(np.ones(4), 1, 4, 1, 1, []))
    return ScoreResponse.model_construct(**{**base, **fields})


def test_merge_puts_groups_back_in_request_order_and_refuses_mixed_replicas():
    first, second = _response(2), _response(1)
    merged = merge([([0, 2], first), ([1], second)], 3)
    assert merged.groups == [first.groups[0], second.groups[0], first.groups[1]]
    with pytest.raises(ReplicaMismatchError, match="policy_version.*b: 'step-3'") as caught:
        merge([([0], _response(1)), ([1], _response(1, policy_version="step-3"))], 2, names=["a", "b"])
    assert caught.value.field == "policy_version"
    with pytest.raises(ValueError, match=r"groups \[1\] were not answered"):
        merge([([0], _response(1))], 2)


@pytest.mark.parametrize("dns, transport, want", [
    ("scorers.ns.svc:9000", "http", ("scorers.ns.svc", 9000)),
    ("scorers.ns.svc", "http", ("scorers.ns.svc", 8000)),
    ("scorers.ns.svc", "grpc", ("scorers.ns.svc", 50051)),
])
def test_dns_names_a_host_and_port(dns, transport, want):
    assert parse_dns(dns, transport) == want


@pytest.mark.parametrize("dns", ["http://scorers:8000", "scorers:http", "scorers:70000", ":8000", ""])
def test_a_bad_dns_argument_says_what_it_takes(dns):
    with pytest.raises(ValueError, match="dns must be a name and port"):
        parse_dns(dns, "http")


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "one of them"),
    ((["http://a:8000"],), {"dns": "a:8000"}, "one of them"),
    (("http://a:8000",), {}, "one string"),
    (([],), {}, "at least one"),
    ((["http://a:8000", "http://a:8000"],), {}, "twice"),
    ((["http://a:8000"],), {"transport": "tcp"}, "'http' or 'grpc'"),
])
def test_replica_client_arguments_are_checked(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReplicaClient(*args, **kwargs)


def test_a_shard_goes_round_the_ring_skipping_tried_and_failed_replicas():
    ring = [Replica(name, client=None) for name in "abc"]
    assert _pick(ring, 1, {}).name == "b"
    assert _pick(ring, 1, {"b": "k"}).name == "c"
    ring[2].down_until = float("inf")
    assert _pick(ring, 1, {"b": "k"}).name == "a"
