"""The README's Open Inference Protocol examples work as printed: its ``tritonclient`` script and
its ``curl`` lines, run against ``lstm-server`` with the default model (on free ports, which is
the only change made to them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import ROOT
from tests.servers import ServerProcess, free_port

SECTION = "### The Open Inference Protocol (KServe V2)"


def _blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    http_port = free_port()
    server = ServerProcess(["--http-port", str(http_port)], tmp_path_factory.mktemp("logs"))
    yield server, http_port
    server.stop()


def _local(text: str, server: ServerProcess, http_port: int) -> str:
    return text.replace("localhost:50051", server.target).replace(
        "localhost:8080", f"127.0.0.1:{http_port}"
    )


def test_the_tritonclient_example(served: tuple[ServerProcess, int]) -> None:
    [script] = _blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", _local(script, *served)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.strip().splitlines()
    assert first.startswith("(1, 3, 1) [[")
    assert last == "True"


def test_the_curl_example(served: tuple[ServerProcess, int]) -> None:
    [commands] = _blocks("sh")
    lines = _local(commands, *served).replace("\\\n", " ").strip().splitlines()
    answers = []
    for line in lines:
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    ready, metadata, reply = answers
    assert ready == {"ready": True}
    assert metadata["name"] == "default-lstm"
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["sequence"]["shape"] == [1, 3, 1]
    assert len(outputs["sequence"]["data"]) == 3
