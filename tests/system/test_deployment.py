"""The docker-compose stack is complete and consistent. No Docker engine runs here, so it is parsed
and checked: files exist, Prometheus' configuration passes promtool and targets the server's
metrics port, and the Grafana dashboard uses only metrics the server really exports."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from lstm_client import LstmClient, LstmError
from lstm_server.config import Settings, env_name

from tests.helpers import ROOT, scrape, system_binary
from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, free_port, settings

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DEFAULTS = Settings()


def _host_paths(service: dict) -> list[Path]:
    return [ROOT / v.split(":")[0] for v in service.get("volumes", []) if v.startswith("./")]


REPLICAS = sorted(name for name in COMPOSE["services"] if name.startswith("lstm-server"))


def test_compose_services_and_referenced_files() -> None:
    services = COMPOSE["services"]
    assert {"redis", "nginx", "prometheus", "grafana", "jaeger"} <= set(services)
    assert len(REPLICAS) == 2
    for name in REPLICAS:
        assert (ROOT / services[name]["build"] / "Dockerfile").is_file()
    for name, service in services.items():
        for path in _host_paths(service):
            assert path.exists(), f"{name} mounts {path}, which is missing"
        for dependency in service.get("depends_on", []):
            assert dependency in services
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in COMPOSE["volumes"], f"{name} mounts an undeclared volume {source}"


def test_replica_settings_are_real_and_agree_with_defaults() -> None:
    known = {env_name(f) for f in Settings.__dataclass_fields__}
    for name in REPLICAS:
        env = COMPOSE["services"][name]["environment"]
        assert {k for k in env if not k.startswith("OTEL_")} <= known
        # Traces go to the compose file's OTLP receiver (Jaeger).
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert "jaeger" in COMPOSE["services"][name]["depends_on"]
        assert int(env["LSTM_PORT"]) == DEFAULTS.port
        assert int(env["LSTM_METRICS_PORT"]) == DEFAULTS.metrics_port
        assert int(env["LSTM_HTTP_PORT"]) == DEFAULTS.http_port
        assert env["LSTM_SESSION_STORE"] == "redis://redis:6379/0"
        # The compile cache lies on a volume, so it outlives the container.
        mounts = [v.split(":")[1] for v in COMPOSE["services"][name]["volumes"]]
        assert any(env["LSTM_COMPILE_CACHE"].startswith(m + "/") for m in mounts)
    assert f"{DEFAULTS.port}:{DEFAULTS.port}" in COMPOSE["services"]["nginx"]["ports"]
    assert f"{DEFAULTS.http_port}:{DEFAULTS.http_port}" in COMPOSE["services"]["nginx"]["ports"]


def test_replicas_serve_the_mounted_model_repository_and_publish_their_metrics() -> None:
    """The replicas serve ./deploy/models (mounted read-only), not the built-in default; each
    publishes its metrics port on the host. A real server serves that repository, with the
    numbers of an independent numpy LSTM on the model's weights."""
    published = set()
    for name in REPLICAS:
        service = COMPOSE["services"][name]
        env = service["environment"]
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        assert mounts["./deploy/models"] == env["LSTM_MODEL_REPOSITORY"]
        assert f"./deploy/models:{env['LSTM_MODEL_REPOSITORY']}:ro" in service["volumes"]
        assert env["LSTM_MODEL_CONTROL_MODE"] == "poll"
        (port,) = service["ports"]
        host, container = port.split(":")
        assert int(container) == DEFAULTS.metrics_port
        published.add(int(host))
    assert len(published) == len(REPLICAS)
    repository = ROOT / "deploy" / "models"
    server = ThreadedServer(settings(model_repository=repository))
    try:
        with LstmClient(server.target) as client:
            (listed,) = client.list_models(ready=True)
            x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
            result = client.predict(x)
        name = listed.name
        reference = NumpyLstm.from_saved_model(repository / name / "1" / "model.keras")
        seq, h, c = reference.run(x)
        np.testing.assert_allclose(result.sequence, seq, atol=1e-5)
        np.testing.assert_allclose(result.h, h, atol=1e-5)
        np.testing.assert_allclose(result.c, c, atol=1e-5)
    finally:
        server.stop()


def test_nginx_balances_every_replica() -> None:
    mounts = dict(v.split(":")[:2] for v in COMPOSE["services"]["nginx"]["volumes"])
    config = (ROOT / mounts["./deploy/nginx/nginx.conf"].lstrip("/")).name
    text = (ROOT / "deploy" / "nginx" / config).read_text()
    upstreams = re.findall(r"^\s*server ([\w-]+):(\d+)", text, re.M)
    ports = (str(DEFAULTS.port), str(DEFAULTS.http_port))
    assert sorted(upstreams) == sorted((name, port) for name in REPLICAS for port in ports)
    assert f"listen {DEFAULTS.port} http2;" in text
    assert "grpc_pass grpc://" in text
    assert f"listen {DEFAULTS.http_port};" in text
    assert "proxy_pass http://lstm_http;" in text


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert '".[server,otel]"' in text
    assert "HEALTHCHECK" in text
    # Readiness over plain HTTP on the metrics port: it works when the gRPC port uses TLS.
    assert f"127.0.0.1:{DEFAULTS.metrics_port}/readyz" in text
    assert str(DEFAULTS.port) in text
    assert 'ENTRYPOINT ["lstm-server"]' in text


def test_prometheus_configuration_passes_promtool_and_targets_the_server() -> None:
    promtool = system_binary("promtool", "prometheus")
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    done = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    targets = [
        t
        for job in yaml.safe_load(config.read_text())["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    ]
    assert sorted(targets) == [f"{name}:{DEFAULTS.metrics_port}" for name in REPLICAS]
    mounted = COMPOSE["services"]["prometheus"]["volumes"][0].split(":")[1]
    assert f"--config.file={mounted}" in COMPOSE["services"]["prometheus"]["command"]


RULES = ROOT / "deploy" / "prometheus" / "rules"


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    """Each alert has a test that fires it and one that does not (promtool fails on an alert
    that fires unexpected, or not at all)."""
    promtool = system_binary("promtool", "prometheus")
    for command in (
        [promtool, "check", "rules", str(RULES / "lstm-serving.rules.yml")],
        [promtool, "test", "rules", str(RULES / "lstm-serving.test.yml")],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((RULES / "lstm-serving.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES / "lstm-serving.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.rules.yml"]


def test_alert_rules_use_only_exported_metrics(exported_names: set[str]) -> None:
    text = (RULES / "lstm-serving.rules.yml").read_text()
    used = set(re.findall(r"\b((?:grpc_server|lstm)_[a-z_]+)\b", text))
    assert used
    assert used <= exported_names, used - exported_names


def test_grafana_is_provisioned_with_prometheus() -> None:
    datasources = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/lstm-serving.yml").read_text()
    )
    path = providers["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in COMPOSE["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == path


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    """Every metric name a running server exports after each kind of call."""
    server = ThreadedServer(settings(metrics_port=free_port(), http_port=0))
    try:
        http = f"http://127.0.0.1:{server.server.http_port}"
        with contextlib.suppress(urllib.error.HTTPError):  # an HTTP call, refused
            urllib.request.urlopen(http + "/v2/models/nope/infer", b"{}", timeout=10)
        with LstmClient(server.target) as client:
            client.predict([[0.1]])
            with client.session() as session:
                session.step([[0.2]])
                session.info = replace(session.info, step_count=5)  # a step refused
                with contextlib.suppress(LstmError):
                    session.step([[0.2]])
            list(client.stream([[0.1], [0.2]]))
        samples = scrape(f"http://127.0.0.1:{server.server.metrics_server.port}/metrics")
    finally:
        server.stop()
    return {name for name, _ in samples}


def test_dashboard_uses_only_exported_metrics(exported_names: set[str]) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/lstm-serving.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in expressions for m in re.findall(r"\b((?:grpc_server|lstm)_[a-z_]+)\b", e)}
    assert len(used) >= 10
    assert not used - exported_names, f"not exported: {sorted(used - exported_names)}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "requests per second",
        "latency",
        "errors",
        "timesteps",
        "inference",
        "queue",
        "sessions",
    ):
        assert topic in titles
