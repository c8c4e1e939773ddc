"""The CPU image for real: built from docker/Dockerfile with podman, started, scored through
AMRClient, and stopped with SIGTERM (the drain, then exit 0)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from amr_client import AMRClient

import podman
from bench.common.procs import free_port
from conftest import container_state, example_groups, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DRAIN_TIMEOUT_S = 30  # the image's default (amr-sd serve --drain-timeout-s)


def test_image_metadata(cpu_image):
    (image,) = json.loads(podman.podman("image", "inspect", cpu_image).stdout)
    config = image["Config"]
    assert config["User"] == "10001"
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "50051/tcp"}
    assert config["Entrypoint"] == ["amr-sd", "serve", "--host", "0.0.0.0"]
    assert "/readyz" in " ".join(image["Healthcheck"]["Test"])  # kept: docker format
    assert "/cache" in config["Volumes"]


def test_embedded_model_is_in_the_image_and_needs_no_network(cpu_image, run_name):
    # No network at all: the converted model must already be there (a conversion would also be
    # refused, the folder being read-only to the runtime user).
    out = podman.podman(
        "run", "--rm", "--name", run_name, "--network", "none", "--entrypoint", "python", cpu_image,
        "-c", "import os; from amr_sd.engine.models import materialize_embedded as m; p = m(); "
              "print(p, os.getuid(), sorted(os.listdir(p)))").stdout
    path, uid, files = out.split(" ", 2)
    assert path.startswith("/opt/amr-sd/models/") and uid == "10001"
    assert "config.json" in files and "model.safetensors" in files


def test_container_serves_scores_and_drains_on_sigterm(cpu_image, run_name):
    port = free_port()
    t0 = time.monotonic()
    podman.podman("run", "-d", "--name", run_name, "-p", f"127.0.0.1:{port}:8000",
                  "--shm-size", "1g", cpu_image)
    base_url = f"http://127.0.0.1:{port}"
    ready_s = wait_ready(base_url, lambda: container_state(run_name)["Running"])
    print(f"\ncontainer ready in {ready_s:.0f} s ({time.monotonic() - t0:.0f} s from `podman run`)")

    # The image's HEALTHCHECK is what a runtime would run: it must call the container healthy.
    health = podman.podman("healthcheck", "run", run_name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    groups = example_groups(2)
    with AMRClient(base_url) as client:
        info = client.info()
        assert info["model"] == "smollm2-135m-instruct" and info["engine"] == "vllm"
        answer = client.score(groups, step=0)
    assert answer.stats.groups == 2 and answer.stats.reflections_requested > 0
    for group, scored in zip(groups, answer.groups):
        for rollout, out in zip(group["rollouts"], scored.rollouts):
            advantages = np.asarray(out.advantages)
            assert advantages.shape == (len(rollout["token_ids"]),)  # aligned to the token ids
            # The method never flips a sign: every token keeps the rollout's GRPO sign.
            assert np.all(advantages * out.base_advantage >= 0)

    t_stop = time.monotonic()
    podman.podman("stop", "--time", str(DRAIN_TIMEOUT_S + 30), run_name, timeout=120)
    stop_s = time.monotonic() - t_stop
    state = container_state(run_name)
    logs = podman.podman("logs", run_name, check=False)
    assert state["ExitCode"] == 0, logs.stdout[-3000:] + logs.stderr[-3000:]
    # Exited by itself after the drain, not killed at the runtime's stop timeout.
    assert stop_s < DRAIN_TIMEOUT_S + 15, f"stop took {stop_s:.1f} s"
    print(f"stopped with exit 0 in {stop_s:.1f} s")
