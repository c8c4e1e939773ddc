"""Server processes under test: start, wait until ready, sample memory, stop.

Every server is started by the bench itself on a free port, so a run never measures (or stops)
something it did not start; it is stopped by its own pid, SIGTERM first so it drains and closes
its engine, SIGKILL of its process group only if it will not go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.common import corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_group(proc: subprocess.Popen, grace_s: float = 15.0) -> int | None:
    """End the process group a bench child leads (its own session), leftovers included.

    Only for a child started with `start_new_session=True` and not yet reaped: the group is
    then exactly that child and what it spawned (vLLM's engine core and workers), and its id
    cannot have been reused.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    return proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class ServerProcess:
    """A server command run in its own process group, its output kept in a log file."""

    def __init__(self, name: str, command: list[str], *, port: int, ready_path: str, log_dir: Path,
                 env: dict[str, str] | None = None):
        self.name = name
        self.command = command
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready_url = self.base_url + ready_path
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout_s: float = 300.0) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        began = time.monotonic()
        # Its own session: a SIGKILL fallback reaches vLLM's engine process too, and a Ctrl-C
        # in the terminal does not hit the server before the bench has stopped it.
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was "
                                   f"ready; last lines of {self.log_path}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return
            time.sleep(1.0)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 60.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            return end_group(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# For a server that is timed on the same batch sent again and again: with its score cache on, every
# repeat after the first would be read back, not scored.
NO_SCORE_CACHE = {"AMR_SCORE_CACHE_TTL_S": "0"}


def amr_server(log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    """`amr-sd serve` on a free port with its defaults for this machine (and `env` on top of
    ours); ready on /readyz."""
    port = free_port()
    command = [sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port), "--model",
               corpus.model(), *extra]
    return ServerProcess("amr-sd", command, port=port, ready_path="/readyz", log_dir=log_dir,
                         env=None if env is None else {**os.environ, **env})


def amr_replica(log_dir: Path, name: str, *extra: str, cpus: list[int] | None = None,
                env: dict[str, str] | None = None) -> ServerProcess:
    """`amr-sd serve` as `amr_server` starts it, logged under `name`; with `cpus`, on those CPUs
    only (taskset: the server, vLLM's engine process and their threads) and vLLM's threads bound
    to them, so side-by-side replicas do not share a core."""
    from amr_sd.engine.machine import cpu_list

    port = free_port()
    command = [sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port), "--model",
               corpus.model(), *extra]
    if cpus is not None:
        listed = cpu_list(tuple(sorted(cpus)))
        command = ["taskset", "-c", listed, *command, "--cpu-threads-bind", listed]
    return ServerProcess(name, command, port=port, ready_path="/readyz", log_dir=log_dir,
                         env=None if env is None else {**os.environ, **env})


def start_all(servers: list[ServerProcess], timeout_s: float = 300.0) -> None:
    """Start servers side by side, each waiting for its own readiness; if one fails, every one
    is stopped and the first failure raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(servers)) as pool:
        errors = [f.exception() for f in [pool.submit(s.start, timeout_s) for s in servers]]
    failed = [e for e in errors if e is not None]
    if failed:
        stop_all(servers)
        raise failed[0]


def stop_all(servers: list[ServerProcess]) -> list[int | None]:
    """Stop servers side by side (each by its own pid, as `ServerProcess.stop`); their exit codes."""
    from concurrent.futures import ThreadPoolExecutor

    if not servers:
        return []
    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(lambda s: s.stop(), servers))


class RssSampler:
    """Peak resident memory of a process and all its descendants, sampled in a thread.

    vLLM keeps the model in its engine-core child, so the server's own RSS alone misses most of
    it. Shared pages count once per process: the sum is an upper bound.
    """

    def __init__(self, pid: int, interval_s: float = 0.2):
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_bytes = 0
        self.samples = 0

    def _rss(self) -> int:
        total = 0
        procs = [self._root]
        with contextlib.suppress(self._psutil.Error):
            procs += self._root.children(recursive=True)
        for p in procs:
            with contextlib.suppress(self._psutil.Error):
                total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self.samples += 1
            self._stop.wait(self._interval_s)

    def __enter__(self) -> "RssSampler":
        self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())
