"""A real `amr-sd serve` process through its life: starting, draining on SIGTERM, losing its engine.

- Starting: until warm-up ends, /readyz is 503 with Retry-After and /v1/score is 503, so a load
  balancer and a retrying client both wait.
- SIGTERM: /readyz turns 503 "draining" at once, new /v1 requests get 503 "draining" with
  Retry-After, the requests in flight still get their 200, then the process exits 0.
- The vLLM EngineCore process killed: the request in flight and new ones get 503 "engine_dead",
  /readyz is 503 "engine_dead" until the process exits with code 3 so that it gets restarted.

Each test owns its server, from `spawn` rather than `launch_server`, which only hands a server
over once it is ready. Requests go out through plain httpx with no retries, so every status seen
is the server's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from long_work import long_scoring
from bench.common.procs import free_port


pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 240
EXIT_ENGINE_DEAD = 3
# Real engine work of several seconds on 2 CPU cores: reflections for two mixed groups, greedy.
SLOW = {"max_retries": 0, "max_reflection_tokens": 64}
CHEAP = {"groups": [{"prompt": {"text": "x"},
                     "rollouts": [{"token_ids": [504, 2], "reward": 0.0},
                                  {"token_ids": [504, 2], "reward": 1.0}]}], "step": 50}


# ---------------------------------------------------------------------------------------------
# A server process watched from its first second
# ---------------------------------------------------------------------------------------------


@dataclass
class Startup:
    """What a server answered from its first second until /readyz was 200."""

    # (seconds since spawn, /readyz status or None when refused, its Retry-After, its body)
    readyz_seen: list[tuple] = field(default_factory=list)
    # /v1/score answers after a /readyz that was not 200: (status, error type, Retry-After).
    # Warm-up may end between the two probes, so the last one may be a 200 (error type None).
    score_seen: list[tuple] = field(default_factory=list)
    # gRPC after a /readyz that was not 200: (health status, Score's code, its ErrorInfo reason);
    # likewise the last one may already be SERVING and OK.
    grpc_seen: list[tuple] = field(default_factory=list)


def watch_until_ready(server, grpc_target: str | None = None) -> Startup:
    """Probe /readyz (and /v1/score while not ready, and gRPC health and Score with a target)
    every 0.2 s from spawn until /readyz is 200."""
    seen = Startup()
    start = time.monotonic()
    with httpx.Client(timeout=5) as http:
        while True:
            if server.proc.poll() is not None:
                pytest.fail(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() - start > START_TIMEOUT_S:
                pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{server.log_tail()}")
            try:
                ready = http.get(f"{server.base_url}/readyz")
            except httpx.TransportError:
                seen.readyz_seen.append((time.monotonic() - start, None, None, None))
                time.sleep(0.2)
                continue
            seen.readyz_seen.append((time.monotonic() - start, ready.status_code,
                                       ready.headers.get("retry-after"), ready.json()))
            if ready.status_code == 200:
                server.remember_children()
                return seen
            score = http.post(f"{server.base_url}/v1/score", json=CHEAP)
            error = score.json().get("error") or {}
            seen.score_seen.append((score.status_code, error.get("type"),
                                      score.headers.get("retry-after")))
            if grpc_target is not None:
                with contextlib.suppress(grpc.RpcError):  # not listening yet
                    seen.grpc_seen.append((grpc_health(grpc_target), *grpc_score_code(grpc_target)))
            time.sleep(0.2)


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def in_background(fn):
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except Exception as exc:  # the test reads it, a thread cannot raise into it
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def slow_score(base_url: str, groups: list[dict]):
    return httpx.post(f"{base_url}/v1/score", json={"groups": groups, "step": 0, "config": SLOW},
                      timeout=300)


def engine_core(pid: int) -> psutil.Process:
    """The vLLM EngineCore child of the server (its process title is "VLLM::EngineCore")."""
    cores = [p for p in psutil.Process(pid).children(recursive=True)
             if "EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM::EngineCor")]
    assert len(cores) == 1, [(p.pid, p.name(), p.cmdline()) for p in cores]
    return cores[0]


# ---------------------------------------------------------------------------------------------
# Starting, then a killed engine (one server: the kill needs it ready anyway)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched_start(tmp_path_factory, spawn):
    grpc_port = free_port()
    with spawn(tmp_path_factory.mktemp("lifecycle") / "server.log", "--grpc-port", str(grpc_port)) as server:
        yield server, watch_until_ready(server, f"127.0.0.1:{grpc_port}")


def test_before_warm_up_ends_readyz_and_score_are_503_with_retry_after(watched_start):
    _, startup = watched_start
    answered = [s for s in startup.readyz_seen if s[1] is not None]
    not_ready = [s for s in answered if s[1] != 200]
    print(f"\nstart-up: {len(startup.readyz_seen)} /readyz probes over "
          f"{startup.readyz_seen[-1][0]:.1f} s, {len(answered)} answered, "
          f"{len(not_ready)} not ready; /v1/score while not ready: {startup.score_seen[:3]}")
    assert not_ready, ("no /readyz answer before ready: the port was refused until warm-up ended "
                       f"({len(startup.readyz_seen) - 1} probes refused)")
    for _, status, retry_after, body in not_ready:
        assert status == 503 and body == {"status": "starting"} and retry_after is not None
    # Readiness only moves forward, so an answer that already reads ready can only be the last
    # probe of the watch: the one sent between warm-up ending and /readyz next reading 200.
    scores = without_a_last_ready(startup.score_seen, lambda s: s[0] == 200 and s[1] is None)
    assert scores, "/v1/score never answered before the engine was ready"
    for status, kind, retry_after in scores:
        assert status == 503 and kind == "not_ready" and retry_after is not None
    grpcs = without_a_last_ready(startup.grpc_seen, lambda s: s[1:] == (grpc.StatusCode.OK, None))
    assert grpcs, "gRPC never answered before the engine was ready"
    for health, code, reason in grpcs:
        assert health == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "not_ready")


def without_a_last_ready(seen: list[tuple], reads_ready) -> list[tuple]:
    return seen[:-1] if seen and reads_ready(seen[-1]) else seen


def test_a_killed_engine_makes_score_and_readyz_503_and_the_process_exit_3(watched_start,
                                                                         example_groups):
    server, _ = watched_start
    core = engine_core(server.proc.pid)
    thread, in_flight = in_background(lambda: slow_score(server.base_url, example_groups[:2]))
    wait_until(lambda: metric(server.base_url, "amr_sd_pending_sequences") > 0)

    readyz_after: list = []  # (sent at, status or None when refused, body)
    stop = threading.Event()

    def probe_readyz():
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                sent_at = time.monotonic()
                try:
                    answer = http.get(f"{server.base_url}/readyz")
                    readyz_after.append((sent_at, answer.status_code, answer.json()))
                except httpx.TransportError:
                    readyz_after.append((sent_at, None, None))
                    if server.proc.poll() is not None:
                        return
                time.sleep(0.01)

    prober = threading.Thread(target=probe_readyz, daemon=True)
    prober.start()
    killed_at = time.monotonic()
    os.kill(core.pid, signal.SIGKILL)  # this pid only: the server's own EngineCore
    thread.join(timeout=60)
    answered_at = time.monotonic()
    answer = in_flight.get("value")
    assert answer is not None, f"the in-flight request got no answer: {in_flight.get('error')!r}"
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "engine_dead", answer.text
    try:
        new = httpx.post(f"{server.base_url}/v1/score", json=CHEAP, timeout=5)
        new_seen = (new.status_code, new.json()["error"]["type"])
    except httpx.TransportError:
        new_seen = None  # already gone: no answer is not a wrong answer
    returncode = server.proc.wait(timeout=30)
    exit_s = time.monotonic() - killed_at
    stop.set()
    prober.join()
    seen = [status for _, status, _ in readyz_after]
    print(f"\nengine killed: exit {returncode} after {exit_s:.1f} s; new /v1/score: {new_seen}; "
          f"/readyz after the kill: {[(s, seen.count(s)) for s in dict.fromkeys(seen)]}")

    assert new_seen in (None, (503, "engine_dead"))
    # The server exits within about 0.1 s of noticing, so /readyz may be refused before any probe
    # sees its 503: what must hold is that no probe sent after the death was known reads ready,
    # and that once unready it never reads ready again.
    known_dead = [(s, b) for t, s, b in readyz_after if t > answered_at]
    assert all(s is None or (s, b) == (503, {"status": "engine_dead"}) for s, b in known_dead)
    first_unready = next(i for i, (_, s, _) in enumerate(readyz_after) if s != 200)
    assert all(s is None or (s, b) == (503, {"status": "engine_dead"})
               for _, s, b in readyz_after[first_unready:])
    assert returncode == EXIT_ENGINE_DEAD, server.log_tail()


# ---------------------------------------------------------------------------------------------
# SIGTERM
# ---------------------------------------------------------------------------------------------


def grpc_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service="amr_sd.v1.Scoring"), timeout=5).status


def grpc_score_code(target: str) -> tuple[grpc.StatusCode, str | None]:
    """Score CHEAP over gRPC: the status code and the ErrorInfo reason (None on success)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from amr_client.grpc_codec import fill
    from amr_client.v1 import scoring_pb2 as pb, scoring_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.ScoringStub(channel).Score(fill(pb.ScoreRequest(), CHEAP), timeout=30)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(err) is None:
                raise  # no server behind the port yet
            info = error_details_pb2.ErrorInfo()
            rpc_status.from_call(err).details[0].Unpack(info)
            return err.code(), info.reason
    return grpc.StatusCode.OK, None


def test_sigterm_refuses_new_work_finishes_in_flight_requests_and_exits_0(tmp_path, spawn,
                                                                         example_groups):
    grpc_port = free_port()
    target = f"127.0.0.1:{grpc_port}"
    with spawn(tmp_path / "server.log", "--grpc-port", str(grpc_port),
               env={"AMR_DRAIN_TIMEOUT_S": "60"}) as server:
        watch_until_ready(server)
        assert grpc_health(target) == health_pb2.HealthCheckResponse.SERVING
        in_flight = [in_background(lambda k=k: slow_score(server.base_url, example_groups[k:k + 2]))
                     for k in (10, 12)]
        wait_until(lambda: metric(server.base_url, "amr_sd_pending_sequences") == 16)

        server.proc.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        # The signal reaches the event loop between two of its steps: give it a moment, not more.
        wait_until(lambda: httpx.get(f"{server.base_url}/readyz").status_code == 503, 2)
        ready = httpx.get(f"{server.base_url}/readyz")
        assert ready.json() == {"status": "draining"}, ready.text
        new = httpx.post(f"{server.base_url}/v1/score", json=CHEAP)
        assert new.status_code == 503 and new.json()["error"]["type"] == "draining"
        assert int(new.headers["Retry-After"]) >= 1
        assert grpc_score_code(target) == (grpc.StatusCode.UNAVAILABLE, "draining")
        wait_until(lambda: grpc_health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, 5)

        for thread, result in in_flight:
            thread.join(timeout=120)
            assert "value" in result, f"an in-flight request got no answer: {result.get('error')!r}"
            assert result["value"].status_code == 200, result["value"].text
        returncode = server.proc.wait(timeout=60)
        print(f"\nSIGTERM: in-flight requests answered and exit {returncode} "
              f"{time.monotonic() - signalled_at:.1f} s after the signal")
        assert returncode == 0, server.log_tail()


def test_a_request_still_running_at_the_drain_timeout_gets_503_draining_and_exit_0(
        tmp_path, spawn, example_groups):
    with spawn(tmp_path / "server.log", env={"AMR_DRAIN_TIMEOUT_S": "2"}) as server:
        watch_until_ready(server)
        thread, result = in_background(lambda: httpx.post(
            f"{server.base_url}/v1/score", json={"groups": long_scoring(example_groups[14:16]), "step": 0},
            timeout=300))
        wait_until(lambda: metric(server.base_url, "amr_sd_pending_sequences") == 8)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        answer = result["value"]
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"] == "draining" and int(answer.headers["Retry-After"]) >= 1
        assert server.proc.wait(timeout=60) == 0, server.log_tail()
