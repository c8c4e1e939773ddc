"""The CPU image built from docker/Dockerfile, and a podman API socket for `docker compose`.

`make test-containers` runs these (not `make test`: building the image takes minutes). The image
is built once per session; podman's layer cache makes a rebuild with unchanged sources quick.
Every container, network and volume a test creates carries its own name or compose project and
is removed by that name, never by a pattern.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import podman  # noqa: E402

# A cold start imports torch and vLLM in three processes (~60 s here) and warms the engine.
READY_TIMEOUT_S = 600
EXAMPLES = podman.ROOT / "examples" / "data" / "groups.jsonl"


def example_groups(n: int) -> list[dict]:
    lines = [line for line in EXAMPLES.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines[:n]]


def wait_ready(base_url: str, alive, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Seconds until GET /readyz answers 200; fails early if `alive()` turns False."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        assert alive(), "the container exited before it was ready"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        time.sleep(1)
    pytest.fail(f"{base_url}/readyz not ready after {timeout_s} s")


def container_state(name: str) -> dict:
    return json.loads(podman.podman("inspect", "--format", "{{json .State}}", name).stdout)


@pytest.fixture(scope="session")
def tools():
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; `make test-containers` installs them "
                    "(apt-get install -y podman runc debootstrap)", pytrace=False)


@pytest.fixture(scope="session")
def cpu_image(tools):
    if os.environ.get("AMR_TEST_REUSE_IMAGE") and podman.image_exists(podman.CPU_IMAGE):
        # Local iteration only: podman here rebuilds every layer (about 7 minutes).
        return podman.CPU_IMAGE
    image, seconds = podman.build_cpu_image()
    size = podman.image_size_mb(image)
    print(f"\nbuilt {image} in {seconds:.0f} s, {size:.0f} MB")
    return image


@pytest.fixture(scope="session")
def redis_image(tools):
    return podman.build_redis_image()


@pytest.fixture(scope="session")
def docker_host(tools, tmp_path_factory):
    """`podman system service` on a socket of the session's own: the Docker API compose talks to."""
    sock = tmp_path_factory.mktemp("podman-api") / "podman.sock"
    log = open(sock.parent / "service.log", "wb")
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            env=podman.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, (sock.parent / "service.log").read_text()
            assert time.monotonic() < deadline, "podman system service did not open its socket"
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def run_name(request):
    """A container / project name of this test's own, removed after it however it ends."""
    name = f"amr-sd-test-{os.getpid()}-{request.node.name.replace('_', '-')[:30]}"
    yield name
    podman.podman("rm", "--force", "--time", "5", name, check=False)
