"""The house's layering, read from the source's imports: core imports no adapter, no grpc and no
TensorFlow; only the runtime imports TensorFlow; the packages form no cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

SERVER = ROOT / "server" / "lstm_server"
CLIENT = ROOT / "client" / "lstm_client"
TENSORFLOW = ("tensorflow", "keras")


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def unit_of(module: str) -> str | None:
    """The package of lstm_server a module belongs to (``core``, ``app``, ...), or None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lstm_server" and len(parts) > 1 else None


def package_imports(package: str) -> set[str]:
    root = SERVER / package if (SERVER / package).is_dir() else SERVER / f"{package}.py"
    files = root.rglob("*.py") if root.is_dir() else [root]
    return {name for f in files for name in imports(f)}


PACKAGES = sorted(
    p.stem
    for p in SERVER.iterdir()
    if (p.is_dir() and p.name != "__pycache__") or p.suffix == ".py"
)
PACKAGES = [p for p in PACKAGES if p not in ("__init__", "__main__")]


def test_core_imports_no_adapter_no_grpc_and_no_tensorflow() -> None:
    found = package_imports("core")
    assert {unit_of(m) for m in found} - {None, "core"} == set()
    assert not [m for m in found if m.split(".")[0] in ("grpc", "grpc_status", *TENSORFLOW)]


@pytest.mark.parametrize("package", ["sessions", "transport", "metrics"])
def test_adapters_and_transport_depend_on_core_not_on_each_other(package: str) -> None:
    allowed = {None, "core", package}
    assert {unit_of(m) for m in package_imports(package)} - allowed == set()


def test_only_the_runtime_imports_tensorflow() -> None:
    for path in SERVER.rglob("*.py"):
        if "runtime" in path.relative_to(SERVER).parts:
            continue
        heavy = [m for m in imports(path) if m.split(".")[0] in TENSORFLOW]
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
    for path in CLIENT.rglob("*.py"):
        assert not [m for m in imports(path) if m.split(".")[0] in (*TENSORFLOW, "lstm_server")]


def test_the_packages_form_no_cycle() -> None:
    graph = {p: {unit_of(m) for m in package_imports(p)} - {None, p} for p in PACKAGES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting, node])}"
        if node in done or node not in graph:
            return
        visiting.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for package in PACKAGES:
        visit(package)
