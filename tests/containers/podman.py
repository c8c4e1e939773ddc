"""A rootful podman of the tests' own: configuration and storage under build/podman/.

Why these settings (seen on these machines): crun fails on this kernel's hybrid cgroups, so runc
with the cgroupfs manager; podman's default nofile limit (1048576) is refused without
CAP_SYS_RESOURCE; no registry is reachable, so the base image is a Debian bookworm minbase made
by debootstrap and imported, and every build runs with --pull=never. HEALTHCHECK survives only in
the docker image format. Healthchecks never run on their own here (no systemd timers), so a
test that waits on one runs `podman healthcheck run` itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / "build" / "podman"
BASE_IMAGE = "localhost/amr-sd-base:bookworm"
CPU_IMAGE = "localhost/amr-sd:cpu-test"
REDIS_IMAGE = "localhost/amr-sd-test-redis:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The base holds what the Dockerfile expects of a slim Python base: python3 with venv and pip's
# HTTPS roots. Everything else (libnuma1) the Dockerfile installs itself, through apt.
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# pip's configured find-links on these machines: the CPU torch wheel lies there.
HOST_WHEELS = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels"))
# pip's read timeout inside the build: its default (15 s) is shorter than a large wheel's stalls
# through these machines' proxy; the host's own pip is configured with 180 s.
PIP_TIMEOUT_S = os.environ.get("PIP_DEFAULT_TIMEOUT", "180")
TAIL_LINES = 60


def env() -> dict[str, str]:
    """The environment for podman commands, writing its configuration on first use."""
    STATE.mkdir(parents=True, exist_ok=True)
    conf, storage = STATE / "containers.conf", STATE / "storage.conf"
    if not conf.exists():
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n')
    if not storage.exists():
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{STATE / "storage"}"\n'
            f'runroot = "{STATE / "run"}"\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


class CommandFailed(RuntimeError):
    """A command that exited non-zero, with the end of what it printed (CalledProcessError's
    message holds only the arguments, and a build's reason is in its last lines)."""


def run(cmd: list[str], check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, timeout=timeout, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        def tail(text: str | None) -> str:
            return "\n".join((text or "").splitlines()[-TAIL_LINES:])
        raise CommandFailed(f"{' '.join(cmd[:3])} ... exited {proc.returncode}\n"
                            f"--- stdout, last {TAIL_LINES} lines ---\n{tail(proc.stdout)}\n"
                            f"--- stderr, last {TAIL_LINES} lines ---\n{tail(proc.stderr)}")
    return proc


def podman(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return run(["podman", *args], env=env(), check=check, timeout=timeout, **kwargs)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base() -> str:
    """A Debian bookworm minbase with python3, made once (about 40 s) and kept under build/."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    rootfs = Path(tempfile.mkdtemp(prefix="amr-sd-rootfs-", dir=STATE))
    try:
        run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
             "bookworm", str(rootfs), DEBIAN_MIRROR], timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE, stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def build_cpu_image() -> tuple[str, float]:
    """docker/Dockerfile's CPU variant on the local base: (image, build seconds).

    pip inside the build reaches PyPI over HTTPS with the host's CA bundle, and takes the CPU
    torch wheel from the host's wheel folder, both mounted read-only; PyTorch's own index is not
    reachable here, hence TORCH_INDEX_URL= (empty).
    """
    ensure_base()
    t0 = time.monotonic()
    args = ["build", "--format", "docker", "--pull=never", "-f", "docker/Dockerfile",
            "-t", CPU_IMAGE, "--build-arg", "VARIANT=cpu", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--build-arg", "TORCH_INDEX_URL=", "--build-arg", f"PIP_DEFAULT_TIMEOUT={PIP_TIMEOUT_S}",
            "--build-arg", "PIP_CERT=/run/host-ca.crt", "-v", f"{HOST_CA}:/run/host-ca.crt:ro"]
    if HOST_WHEELS.is_dir():
        args += ["--build-arg", "PIP_FIND_LINKS=/run/host-wheels",
                 "-v", f"{HOST_WHEELS}:/run/host-wheels:ro"]
    # A build downloads about 1 GB from PyPI; one more try survives a dropped connection, and the
    # first failure is printed so that a flaky mirror is told apart from a broken Dockerfile.
    for attempt in (1, 2):
        try:
            podman(*args, ".", cwd=ROOT, timeout=3000)
            break
        except CommandFailed as exc:
            if attempt == 2:
                raise
            print(f"\nimage build failed, building once more:\n{exc}", flush=True)
    seconds = time.monotonic() - t0
    # Earlier builds' layers (4 GB each) are never reused here: podman rebuilds every layer.
    podman("image", "prune", "--force", timeout=600)
    return CPU_IMAGE, seconds


def build_redis_image() -> str:
    """A Redis image from Debian's redis-server on the local base (no registry to pull from)."""
    if image_exists(REDIS_IMAGE):
        return REDIS_IMAGE
    ensure_base()
    context = Path(tempfile.mkdtemp(prefix="amr-sd-redis-", dir=STATE))
    try:
        (context / "Containerfile").write_text(
            f"FROM {BASE_IMAGE}\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends redis-server "
            "&& rm -rf /var/lib/apt/lists/*\n"
            "USER redis\n"
            'ENTRYPOINT []\nCMD ["redis-server", "--protected-mode", "no"]\n')
        podman("build", "--format", "docker", "--pull=never", "-t", REDIS_IMAGE, str(context),
               timeout=900)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return REDIS_IMAGE


def image_size_mb(name: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip()) / 1e6
