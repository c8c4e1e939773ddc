"""The Dockerfile, compose files and Helm chart, checked offline: lint, merged models, rendered
manifests against the Kubernetes API schemas of two versions, and values the schema refuses.

What runs here is static: no GPU and no Kubernetes cluster exist on these machines, so the GPU
reservation and the chart are checked as configuration (the image and the CPU compose stack run
for real in test_deploy_image.py and test_deploy_compose.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "amr-sd"
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
KUBE_VERSIONS = ("1.29.0", "1.34.0")
DRAIN_DEFAULT_S = 30  # amr_sd.config.Settings.drain_timeout_s


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed (make setup installs it)"
    return path


# ---- Dockerfile ------------------------------------------------------------------------------

def test_hadolint_passes_the_dockerfile():
    # Default failure threshold (info and above fail); each ignore in the file says why.
    result = subprocess.run([_tool("hadolint"), str(DOCKER / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = subprocess.run([_tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout  # untagged base image


def test_dockerfile_declares_what_a_runtime_needs():
    text = (DOCKER / "Dockerfile").read_text()
    for line in ("ARG BASE_IMAGE=", "ARG VARIANT=gpu", "EXPOSE 8000 50051", "STOPSIGNAL SIGTERM",
                 'VOLUME ["/cache"]', "HEALTHCHECK", "/readyz", "USER ${AMR_UID}",
                 'ENTRYPOINT ["amr-sd", "serve", "--host", "0.0.0.0"]'):
        assert line in text, line
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:].count("!service/") == 1 and ".venv" not in text


# ---- compose ---------------------------------------------------------------------------------

def _compose_config(*files: Path, env: dict | None = None, cwd: Path = ROOT) -> dict:
    args = [_tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                            cwd=cwd, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for ch in duration:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total, number = total + float(number) * units[ch], ""
    return total


def test_compose_gpu_stack():
    config = _compose_config(DOCKER / "compose.yml")
    amr, redis = config["services"]["amr-sd"], config["services"]["redis"]
    device = amr["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert amr["ipc"] == "host"
    assert amr["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert amr["environment"]["AMR_REDIS_URL"] == "redis://redis:6379/0"
    assert _seconds(amr["stop_grace_period"]) > DRAIN_DEFAULT_S
    assert amr["build"]["args"]["VARIANT"] == "gpu"
    assert {v["target"] for v in amr["volumes"]} == {"/cache"} and "models" in config["volumes"]
    # Keys never live in the compose file: only the optional env file brings them.
    assert not any("API_KEY" in k for k in amr["environment"])


def test_compose_gpu_reservation_and_engine_parallelism_come_from_the_shell():
    default = _compose_config(DOCKER / "compose.yml")["services"]["amr-sd"]
    assert (default["environment"]["AMR_TENSOR_PARALLEL_SIZE"],
            default["environment"]["AMR_DATA_PARALLEL_SIZE"]) == ("1", "1")
    # Two engine copies, each sharded over 2 GPUs: 4 GPUs reserved.
    env = {"AMR_TENSOR_PARALLEL_SIZE": "2", "AMR_DATA_PARALLEL_SIZE": "2", "AMR_GPU_COUNT": "4"}
    amr = _compose_config(DOCKER / "compose.yml", env=env)["services"]["amr-sd"]
    assert (amr["environment"]["AMR_TENSOR_PARALLEL_SIZE"],
            amr["environment"]["AMR_DATA_PARALLEL_SIZE"]) == ("2", "2")
    assert amr["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4


def test_compose_cpu_override_drops_the_gpu():
    config = _compose_config(DOCKER / "compose.yml", DOCKER / "compose.cpu.yml")
    amr = config["services"]["amr-sd"]
    assert "deploy" not in amr and "ipc" not in amr
    assert amr["build"]["args"]["VARIANT"] == "cpu"
    assert amr["build"]["args"]["BASE_IMAGE"].startswith("python:3.11")
    assert int(amr["shm_size"]) >= 2**30
    assert amr["depends_on"]["redis"]["condition"] == "service_healthy"
    # No GPU to shard over; engine copies (data parallelism) split the CPUs.
    assert amr["environment"]["AMR_TENSOR_PARALLEL_SIZE"] == "1"
    copies = _compose_config(DOCKER / "compose.yml", DOCKER / "compose.cpu.yml",
                             env={"AMR_DATA_PARALLEL_SIZE": "2"})["services"]["amr-sd"]
    assert copies["environment"]["AMR_DATA_PARALLEL_SIZE"] == "2"


def test_compose_takes_api_keys_from_the_env_file(tmp_path):
    docker = tmp_path / "docker"
    shutil.copytree(DOCKER, docker)
    (docker / "amr-sd.env").write_text("AMR_API_KEYS=key-one-0123456789,key-two-0123456789\n")
    config = _compose_config(docker / "compose.yml", cwd=tmp_path)
    assert config["services"]["amr-sd"]["environment"]["AMR_API_KEYS"] == \
        "key-one-0123456789,key-two-0123456789"


# ---- Helm chart ------------------------------------------------------------------------------

CASES = {
    "default": {},
    "cpu": {"variant": "cpu"},
    "gpu-tp2": {"gpu": {"count": 2, "tensorParallelSize": 2}, "replicaCount": 2},
    "gpu-tp2-dp2": {"gpu": {"tensorParallelSize": 2, "dataParallelSize": 2}},
    "autoscaling": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}},
                    "serviceMonitor": {"enabled": True}},
    "external-redis": {"redis": {"mode": "external", "url": "redis://cache.infra:6379/3"}},
    "api-keys": {"apiKeys": {"keys": ["k1-abcdefghijklmnop", "k2-abcdefghijklmnop"]}},
    "existing-secret": {"apiKeys": {"existingSecret": "trainer-keys", "existingSecretKey": "keys"}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                   "networkPolicy": {"enabled": True, "trainerNamespaces": ["rl-train"],
                                     "prometheusNamespace": "monitoring"},
                   "modelCache": {"size": "100Gi"}},
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def _render(chart, values: dict) -> list[dict]:
    chart.validate_schema(values)
    docs = []
    for path, text in sorted(chart.render(values, name="amr", namespace="rl").items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _container(docs: list[dict]) -> dict:
    (deployment,) = _kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_is_clean(case):
    report = helm.lint(CHART, CASES[case], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_manifests_are_valid_kubernetes(chart, case, version):
    docs = _render(chart, CASES[case])
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no schema in the Kubernetes API
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {version}: {exc.message} "
                        f"at {list(exc.path)}")


def test_default_values_give_a_gpu_deployment_with_probes_and_drain(chart):
    docs = _render(chart, {})
    container, pod = _container(docs), _kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--tensor-parallel-size=1" in container["args"]
    assert "--data-parallel-size=1" in container["args"]
    assert _kind(docs, "Deployment")[0]["spec"]["replicas"] == 1
    assert not _kind(docs, "HorizontalPodAutoscaler")
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load budget
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = int(env["AMR_DRAIN_TIMEOUT_S"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert env["AMR_REDIS_URL"] == "redis://amr-amr-sd-redis:6379/0"
    assert len(_kind(docs, "StatefulSet")) == 1 and len(_kind(docs, "PodDisruptionBudget")) == 1
    assert "AMR_API_KEYS" not in env and not _kind(docs, "Secret")
    service = _kind(docs, "Service")
    assert {p["name"] for s in service if s["metadata"]["name"] == "amr-amr-sd" for p in s["spec"]["ports"]} \
        == {"http", "grpc"}


def test_cpu_variant_asks_for_no_gpu(chart):
    container = _container(_render(chart, CASES["cpu"]))
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["image"] == "amr-sd:0.1.0-cpu"
    assert not any(a.startswith(("--tensor-parallel-size", "--data-parallel-size"))
                   for a in container["args"])


def test_gpu_count_and_tensor_parallel_come_from_values(chart):
    container = _container(_render(chart, CASES["gpu-tp2"]))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "--tensor-parallel-size=2" in container["args"]


def test_gpus_per_pod_are_tensor_times_data_parallel(chart):
    container = _container(_render(chart, CASES["gpu-tp2-dp2"]))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert {"--tensor-parallel-size=2", "--data-parallel-size=2"} <= set(container["args"])
    # The user's own requests and limits stay beside the GPUs.
    assert container["resources"]["requests"]["memory"] == "16Gi"
    assert container["resources"]["limits"]["memory"] == "32Gi"


def test_gpu_count_if_given_must_match_tensor_times_data_parallel(chart):
    with pytest.raises(helm.HelmRenderError, match=r"gpu.count \(2\) must equal"):
        chart.render({"gpu": {"count": 2, "tensorParallelSize": 2, "dataParallelSize": 2}},
                     name="amr")


def test_headless_service_lists_every_ready_pod_on_both_ports(chart):
    docs = _render(chart, {})
    services = {s["metadata"]["name"]: s for s in _kind(docs, "Service")}
    cluster_ip, headless = services["amr-amr-sd"], services["amr-amr-sd-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert headless["spec"]["selector"] == cluster_ip["spec"]["selector"]
    # Clients dial the pods themselves: the ports are the container's.
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in headless["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    assert ports == {name: (number, name) for name, number in container_ports.items()}
    assert ports == {"http": (8000, "http"), "grpc": (50051, "grpc")}


def test_service_monitor_scrapes_each_pod_once_not_through_the_headless_service_too(chart):
    docs = _render(chart, CASES["monitoring"])
    (monitor,) = _kind(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    matched = [s["metadata"]["name"] for s in _kind(docs, "Service")
               if wanted.items() <= s["metadata"]["labels"].items()]
    assert matched == ["amr-amr-sd"]


def test_notes_name_the_headless_service(chart):
    notes = chart.render({}, name="amr", namespace="rl")["amr-sd/templates/NOTES.txt"]
    assert 'ReplicaClient(dns="amr-amr-sd-headless.rl.svc.cluster.local:8000")' in notes
    assert "docs/client.md#many-replicas" in notes


def test_autoscaler_renders_only_when_enabled_and_scales_on_the_backlog(chart):
    docs = _render(chart, CASES["autoscaling"])
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "amr-amr-sd"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "amr_sd_pending_sequences"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "1024"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    # The autoscaler owns the replica count: an upgrade must not reset it.
    assert "replicas" not in _kind(docs, "Deployment")[0]["spec"]


def test_autoscaler_metric_is_one_the_service_exports():
    from amr_sd.metrics import Metrics

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    exported = {m.name for m in Metrics().registry.collect()}
    assert values["autoscaling"]["metric"] in exported
    assert values["autoscaling"]["enabled"] is False


def test_autoscaler_needs_max_at_least_min(chart):
    with pytest.raises(helm.HelmRenderError, match="maxReplicas"):
        chart.render({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                     name="amr")


def test_external_redis_replaces_the_bundled_one(chart):
    docs = _render(chart, CASES["external-redis"])
    assert not _kind(docs, "StatefulSet")
    env = {e["name"]: e.get("value") for e in _container(docs)["env"]}
    assert env["AMR_REDIS_URL"] == "redis://cache.infra:6379/3"


@pytest.mark.parametrize("case,secret", [("api-keys", "amr-amr-sd-api-keys"),
                                         ("existing-secret", "trainer-keys")])
def test_api_keys_reach_the_pod_from_a_secret(chart, case, secret):
    docs = _render(chart, CASES[case])
    (env,) = [e for e in _container(docs)["env"] if e["name"] == "AMR_API_KEYS"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == secret
    secrets = _kind(docs, "Secret")
    if case == "api-keys":
        assert secrets[0]["stringData"]["api-keys"] == "k1-abcdefghijklmnop,k2-abcdefghijklmnop"
    else:
        assert not secrets  # the user's own Secret is referenced, never written


def test_monitoring_and_network_policy(chart):
    docs = _render(chart, CASES["monitoring"])
    (monitor,) = _kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s"}
    assert monitor["metadata"]["labels"]["release"] == "prom"
    policies = {p["metadata"]["name"]: p for p in _kind(docs, "NetworkPolicy")}
    trainers = policies["amr-amr-sd"]["spec"]["ingress"]
    assert trainers[0]["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "rl-train"}}}]
    assert trainers[1]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "amr-amr-sd-redis" in policies
    (claim,) = _kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"


BAD_VALUES = {
    "variant": {"variant": "tpu"},
    "replicaCount": {"replicaCount": -1},
    "gpu.count": {"gpu": {"count": 0}},
    "gpu.dataParallelSize 0": {"gpu": {"dataParallelSize": 0}},
    "gpu.dataParallelSize string": {"gpu": {"dataParallelSize": "2"}},
    "autoscaling.minReplicas": {"autoscaling": {"enabled": True, "minReplicas": 0}},
    "autoscaling.metric": {"autoscaling": {"metric": "amr sd pending"}},
    "autoscaling unknown key": {"autoscaling": {"targetCPU": 80}},
    "redis.url": {"redis": {"mode": "external"}},
    "unknown key": {"replicas": 3},
    "networkPolicy.trainerNamespaces": {"networkPolicy": {"enabled": True}},
    "apiKeys.keys": {"apiKeys": {"keys": ["short"]}},
    "extraEnv": {"extraEnv": {"PATH": "/tmp"}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_bad_values(chart, case):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(BAD_VALUES[case])
    report = helm.lint(CHART, BAD_VALUES[case])
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


def test_grace_period_must_outlast_the_drain(chart):
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        chart.render({"drainTimeoutSeconds": 120, "terminationGracePeriodSeconds": 60}, name="amr")


def test_metrics_key_needs_a_token_for_the_service_monitor(chart):
    values = {"apiKeys": {"keys": ["k1-abcdefghijklmnop"], "metricsRequireKey": True},
              "serviceMonitor": {"enabled": True}}
    with pytest.raises(helm.HelmRenderError, match="bearerTokenSecret"):
        chart.render(values, name="amr")
    values["serviceMonitor"]["bearerTokenSecret"] = {"name": "prom-key", "key": "token"}
    (monitor,) = _kind(_render(chart, values), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == \
        {"name": "prom-key", "key": "token"}
