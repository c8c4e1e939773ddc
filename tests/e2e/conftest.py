"""A real `amr-sd serve` process, the way a user starts it.

`launch_server(log_path, *args, env=...)` is a context manager: it runs one on a free loopback
port and yields the `Server` once /readyz answers 200; on exit it sends SIGTERM and waits. `amr_server` is one shared server for the session (memory
cache) for the tests that only need a service to talk to, such as the trainer integrations.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen
    log_path: Path


@contextlib.contextmanager
def start_server(log_path: Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port),
            "--gpu-memory-utilization", "0.1", *extra_args]
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield Server(base_url, proc, log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def launch_server():
    return start_server


@pytest.fixture(scope="session")
def amr_server(tmp_path_factory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("amr_server") / "server.log") as server:
        yield server.base_url
