"""Two real `amr-sd serve` replicas (one core each, float32, a small KV cache) sharing one real
Redis, and one `ReplicaClient` call spread over both: the answer equals one server's, streams
and gRPC too, a replica killed mid-batch loses no group, and `set_policy` names the replica it
could not reach."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from amr_client import AMRClient, FanOutError, ReplicaClient
from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model
from bench.common import corpus
from bench.common.procs import free_port

from conftest import Server, spawn_server, wait_ready

N_GROUPS = 16


@dataclass
class Replicas:
    servers: list[Server]
    grpc_targets: list[str]

    @property
    def urls(self) -> list[str]:
        return [s.base_url for s in self.servers]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_url):
    """Two replicas on one Redis, each pinned to its own core, with a policy root holding
    "step-2" (the served model's own files, so a reload is quick and changes no number)."""
    root = tmp_path_factory.mktemp("replica_policies")
    served = Path(resolve_model(EMBEDDED_MODEL))
    (root / "step-2").mkdir()
    for name in ("config.json", "model.safetensors"):
        (root / "step-2" / name).symlink_to(served / name)
    logs = tmp_path_factory.mktemp("replicas")
    grpc_ports = [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(spawn_server(
            logs / f"replica-{i}.log", "--dtype", "float32", "--cpu-threads-bind", str(i),
            "--kv-cache-gib", "0.5", "--redis-url", redis_url, "--grpc-port", str(grpc_ports[i]),
            "--policy-root", str(root),
            # Off, so each call below is scored, not read back from the other's cache.
            env={"AMR_SCORE_CACHE_TTL_S": "0"})) for i in range(2)]
        for server in servers:  # both start side by side, then both must be ready
            wait_ready(server)
        yield Replicas(servers, [f"127.0.0.1:{p}" for p in grpc_ports])


@pytest.fixture(scope="module")
def groups(replicas):
    """16 groups of two rollouts with reflection overrides (scoring only), of unequal lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(EMBEDDED_MODEL)))
    return [corpus.group(tokenizer, 2, 24 + 8 * (g % 5), offset=g * 7919) for g in range(N_GROUPS)]


def _scored_tokens(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("amr_sd_tokens_scored_total"))


def _rows(result) -> list[np.ndarray]:
    return [np.asarray([r.base_advantage, *r.advantages]) for g in result.groups for r in g.rollouts]


def _same(a, b) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == len(rows_b)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(rows_a, rows_b))
    assert worst <= 1e-5, f"float32 answers differ by {worst}"


@pytest.fixture(scope="module")
def alone(replicas, groups):
    with AMRClient(replicas.urls[0]) as client:
        return client.score(groups, step=5)


def test_one_call_is_spread_over_both_replicas_and_equals_one_server(replicas, groups, alone):
    before = [_scored_tokens(s) for s in replicas.servers]
    with ReplicaClient(replicas.urls) as client:
        result = client.score(groups, step=5)
    after = [_scored_tokens(s) for s in replicas.servers]
    assert all(b > a for a, b in zip(before, after)), (before, after)  # both did work
    _same(result, alone)
    for name in ("groups", "rollouts", "response_tokens", "tokens_scored", "reflected_tokens", "gated_tokens"):
        assert getattr(result.stats, name) == getattr(alone.stats, name), name
    assert result.stats.cig_mean == pytest.approx(alone.stats.cig_mean, abs=1e-6)
    assert len(result.request_id.split(",")) == 2


def test_a_stream_over_both_replicas_equals_the_unary_answer(replicas, groups, alone):
    with ReplicaClient(replicas.urls) as client:
        stream = client.score_stream(groups, step=5)
        indices = [index for index, _ in stream]
    assert sorted(indices) == list(range(N_GROUPS))
    _same(stream.result, alone)


def test_grpc_over_both_replicas_equals_one_server(replicas, groups, alone):
    before = [_scored_tokens(s) for s in replicas.servers]
    with ReplicaClient(replicas.grpc_targets, transport="grpc") as client:
        result = client.score(groups, step=5)
    after = [_scored_tokens(s) for s in replicas.servers]
    assert all(b > a for a, b in zip(before, after)), (before, after)
    _same(result, alone)


def test_the_dns_form_finds_the_server_behind_a_name(replicas, groups, alone):
    """The name is resolved by the system ("localhost": 127.0.0.1, and ::1 where the hosts file
    says so, where no server listens: that shard then goes to the other address). Over gRPC the
    shards share one round_robin channel to dns:///localhost:PORT."""
    http_port = replicas.urls[0].rsplit(":", 1)[1]
    grpc_port = replicas.grpc_targets[0].rsplit(":", 1)[1]
    with ReplicaClient(dns=f"localhost:{http_port}") as client:
        assert f"http://127.0.0.1:{http_port}" in client.replicas()
        _same(client.score(groups, step=5), alone)
    with ReplicaClient(dns=f"localhost:{grpc_port}", transport="grpc") as client:
        _same(client.score(groups, step=5), alone)


def test_a_replica_killed_mid_batch_loses_no_group_and_set_policy_names_it(replicas, groups, alone):
    victim = replicas.servers[1]
    bigger = groups * 2  # long enough to be mid-shard when the replica dies

    def kill_when_busy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = httpx.get(f"{victim.base_url}/metrics", timeout=5).text
            if any(line.startswith("amr_sd_requests_in_flight") and float(line.split()[-1]) > 0
                   for line in text.splitlines()):
                break
            time.sleep(0.05)
        victim.remember_children()
        victim.proc.send_signal(signal.SIGKILL)
        for child in victim.descendants.values():  # its engine core too, by pid: free its memory
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    killer = threading.Thread(target=kill_when_busy)
    with ReplicaClient(replicas.urls) as client:
        killer.start()
        result = client.score(bigger, step=5)
        killer.join()
        assert victim.proc.wait(timeout=30) == -signal.SIGKILL
        indices = [index for index, _ in client.score_stream(groups, step=5)]  # one replica left
        with pytest.raises(FanOutError) as caught:
            client.set_policy("step-2", "step-2")
        after_reload = client.score(groups, step=5)
    assert len(result) == 2 * N_GROUPS
    rows, want = _rows(result), _rows(alone)
    for copy in range(2):  # every group answered once, in request order, with one server's numbers
        for a, b in zip(rows[copy * len(want):(copy + 1) * len(want)], want):
            assert float(np.max(np.abs(a - b))) <= 1e-5
    assert sorted(indices) == list(range(N_GROUPS))
    assert list(caught.value.errors) == [victim.base_url]
    assert victim.base_url in str(caught.value)
    assert [s.version for s in caught.value.results.values()] == ["step-2"]
    assert after_reload.policy_version == "step-2"
    _same(after_reload, alone)
