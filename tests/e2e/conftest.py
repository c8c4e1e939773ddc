"""A real `amr-sd serve` process, the way a user starts it.

`spawn_server(log_path, *args, env=...)` starts one on a free loopback port and yields its
`Server` at once (for tests that watch it start); `launch_server` (the same arguments) yields it
only once /readyz answers 200. On exit both send SIGTERM, wait, and then stop by pid any process
the server started that outlived it (a killed EngineCore leaves its worker behind for a moment).
`amr_server` is one shared server for the session (memory cache) for the tests that only need a
service to talk to, such as the trainer integrations; `shared_server` is the same process with
its gRPC address too. `policy_server` is one with LoRA, a policy
root full of test checkpoints (policy_assets.py) and an API key, for the policy-sync tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from bench.common.procs import free_port

START_TIMEOUT_S = 240


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen
    log_path: Path
    # Every process the server started, by pid, so that none outlives the test.
    descendants: dict[int, psutil.Process] = field(default_factory=dict)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.descendants.update(
                {p.pid: p for p in psutil.Process(self.proc.pid).children(recursive=True)})


@contextlib.contextmanager
def spawn_server(log_path: Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port),
            *extra_args]
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        yield server
    finally:
        server.remember_children()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in server.descendants.values():  # by pid, never by name
            # A server killed outright leaves its engine core running: waited for, then killed.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                child.wait(timeout=10)
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running():
                    child.kill()
        log.close()


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                server.remember_children()
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{server.log_tail()}")
        time.sleep(1)


@contextlib.contextmanager
def start_server(log_path: Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    with spawn_server(log_path, *extra_args, env=env) as server:
        wait_ready(server)
        yield server


@pytest.fixture(scope="session")
def spawn():
    return spawn_server


@pytest.fixture(scope="session")
def launch_server():
    return start_server


@dataclass
class SharedServer:
    base_url: str
    grpc_target: str  # the same process's gRPC port: one runtime, one engine


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory) -> Iterator[SharedServer]:
    grpc_port = free_port()
    with start_server(tmp_path_factory.mktemp("amr_server") / "server.log",
                      "--grpc-port", str(grpc_port)) as server:
        yield SharedServer(server.base_url, f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="session")
def amr_server(shared_server) -> str:
    return shared_server.base_url


POLICY_KEY = "policy-test-key"


@dataclass
class PolicyServer:
    base_url: str
    root: Path
    folders: dict[str, Path]
    api_key: str = POLICY_KEY


@pytest.fixture(scope="session")
def policy_server(tmp_path_factory) -> Iterator[PolicyServer]:
    """fp32, so that references computed with transformers match to ~1e-5, not bf16 noise. No
    score cache: these tests watch what the engine computes under each version while weights
    change under requests in flight, and a resent batch read back from the cache is never in
    flight (the cache's own tests are in test_server.py)."""
    from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model
    from policy_assets import make_policy_root

    root = tmp_path_factory.mktemp("policy_root")
    folders = make_policy_root(root, resolve_model(EMBEDDED_MODEL))
    log = tmp_path_factory.mktemp("policy_server") / "server.log"
    with start_server(log, "--enable-lora", "--max-lora-rank", "8", "--policy-root", str(root),
                      "--dtype", "float32", "--lora-modules", f"fixed={folders['lora']}",
                      env={"AMR_API_KEYS": POLICY_KEY, "AMR_SCORE_CACHE_TTL_S": "0"}) as server:
        yield PolicyServer(server.base_url, root, folders)
