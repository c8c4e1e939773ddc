"""The replicas bench's pure parts: the batch that loads every replica alike, and the figures."""

import math

import pytest
from amr_client.shards import group_tokens, split
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench.speed import replicas
from bench.speed.standin_server import scored_tokens


class WordTokenizer:
    """One id per character: enough for the corpus windows, no model files needed."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 1000 for c in text]


def test_fanout_batch_gives_every_replica_the_same_groups_and_tokens():
    groups = replicas.fanout_groups(WordTokenizer(), n_replicas=4, per_replica=3, size=2, length=5)
    weights = [group_tokens(g) for g in groups]
    shards = split(weights, 4)
    # 4 replicas x 3 groups, each group 2 rollouts x 5 tokens = 10: every shard 3 groups, 30 tokens.
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert replicas.balance(weights, 4) == {"shard_tokens": [30, 30, 30, 30], "max_over_mean": 1.0}


def test_fanout_batch_groups_are_distinct():
    groups = replicas.fanout_groups(WordTokenizer(), n_replicas=2, per_replica=2, size=2, length=8)
    ids = [tuple(r["token_ids"]) for g in groups for r in g["rollouts"]]
    assert len(set(ids)) == len(ids)


def test_balance_of_uneven_groups_is_the_heaviest_shard_over_the_mean():
    # Heaviest first onto the lightest shard: 5 -> A, 3 -> B, 2 -> B (3 < 5), 2 -> A (5 = 5, the
    # first): loads 7 and 5, mean 6.
    out = replicas.balance([5, 3, 2, 2], 2)
    assert out == {"shard_tokens": [7, 5], "max_over_mean": 7 / 6}


def test_efficiency_is_throughput_over_n_times_one_replicas():
    # 8 replicas at 7,200 tok/s against one at 1,000: 7200 / 8000.
    assert replicas.efficiency(7200.0, 8, 1000.0) == 0.9
    assert replicas.efficiency(7200.0, 8, 0.0) is None


def test_max_abs_diff_compares_per_token_and_flags_shape_changes():
    a = [[0.5, -0.25], [1.0]]
    # Binary fractions, so the differences are exact: 2^-20 and 2^-18; the larger wins.
    assert replicas.max_abs_diff(a, [[0.5, -0.25 + 2**-20], [1.0 - 2**-18]]) == 2**-18
    assert math.isinf(replicas.max_abs_diff(a, [[0.5, -0.25]]))
    assert math.isinf(replicas.max_abs_diff(a, [[0.5], [1.0]]))


def test_metric_reads_a_counter_and_sums_the_series_with_the_given_labels():
    registry = CollectorRegistry()  # the server's metrics, as its /metrics writes them
    Counter("amr_sd_tokens_scored", "", registry=registry).inc(16384)
    duration = Histogram("amr_sd_request_duration_seconds", "", ["route"], registry=registry)
    duration.labels(route="/v1/score").observe(6.5)
    duration.labels(route="/v1/policy").observe(0.25)
    text = generate_latest(registry).decode()
    assert replicas.metric(text, "amr_sd_tokens_scored_total") == 16384.0
    assert replicas.metric(text, "amr_sd_request_duration_seconds_sum", route="/v1/score") == 6.5
    assert replicas.metric(text, "amr_sd_request_duration_seconds_sum") == pytest.approx(6.75)


def test_stand_in_engine_charges_the_rows_each_sequence_scores():
    # Rows from each start index: (5 - 2) + (4 - 0) = 7.
    assert scored_tokens([[1, 2, 3, 4, 5], [6, 7, 8, 9]], [2, 0]) == 7
