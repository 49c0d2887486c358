"""A real Prometheus server scrapes a real lstm-serving /metrics endpoint and reads the same
value back through its query API; every query of the Grafana dashboard runs there."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import ROOT, grpc_labels, scrape, seq_msg, system_binary
from tests.servers import ThreadedServer, free_port, settings


@pytest.fixture(scope="module")
def metered() -> Iterator[ThreadedServer]:
    server = ThreadedServer(settings(features=2, units=3, metrics_port=free_port(), http_port=0))
    yield server
    server.stop()


def test_a_real_prometheus_scrapes_the_service(metered, tmp_path: Path) -> None:
    prometheus = system_binary("prometheus", "prometheus")
    port = metered.server.metrics_server.port
    channel = grpc.insecure_channel(metered.target)
    stub = pb_grpc.LstmServiceStub(channel)
    for _ in range(7):
        stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((2, 2)))]))
    with pytest.raises(grpc.RpcError):  # refused: the wrong number of features
        stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((2, 3)))]))
    http = f"http://127.0.0.1:{metered.server.http_port}/v2/models/default-lstm/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}]}
    urllib.request.urlopen(http, json.dumps(body).encode(), timeout=10).read()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: lstm-serving\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    web = free_port()
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        expected = scrape(f"http://127.0.0.1:{port}/metrics")[
            (
                "grpc_server_handled_total",
                tuple(sorted({**grpc_labels("Predict"), "grpc_code": "OK"}.items())),
            )
        ]
        query = urllib.parse.urlencode(
            {"query": 'grpc_server_handled_total{grpc_method="Predict",grpc_code="OK"}'}
        )
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{web}/api/v1/query?{query}", timeout=5
                ) as r:
                    result = json.load(r)["data"]["result"]
                if result:
                    seen = float(result[0]["value"][1])
                    if seen == expected:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert seen is not None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert seen == expected >= 7
        _dashboard_queries_run(web)
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode is not None


def _dashboard_queries_run(web: int) -> None:
    """Each dashboard query, its variables set to "all", is valid PromQL for this Prometheus;
    the panels of what has happened here (Predict calls, sessions, readiness) find their series."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/lstm-serving.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"job", "instance", "model"}
    time.sleep(3)  # a few more scrapes, so that rates over them have two samples
    with_data = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable in ("$job", "$instance", "$model"):
                expr = expr.replace(variable, ".*")
            query = urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(
                f"http://127.0.0.1:{web}/api/v1/query?{query}", timeout=5
            ) as r:
                answer = json.load(r)
            assert answer["status"] == "success", (panel["title"], expr, answer)
            if answer["data"]["result"]:
                with_data.add(panel["title"])
    assert {
        "Requests per second by method (every door)",
        "Requests per second by replica (every door)",
        "Errors by code (gRPC) and status (HTTP)",
        "Refusals per second by reason and protocol",
        "Session memory in use and budget, by replica",
        "Sessions: store-wide and per replica",
        "Ready and store reachable, by replica",
        "In-flight RPCs by replica",
        "Inference requests per second by model version",
        "Loaded model versions, by replica",
    } <= with_data
