"""A private Redis Cluster for tests: primaries with a replica each, made by
``redis-cli --cluster create`` from ``redis-server --cluster-enabled yes`` nodes on free ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import system_binary
from tests.servers import free_port


class RedisClusterNodes:
    """``primaries`` primaries with ``replicas`` replicas each, all on 127.0.0.1; a node that
    misses a heartbeat for ``node_timeout_ms`` is failed over."""

    def __init__(
        self, directory: Path, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        self.server = system_binary("redis-server", "redis-server")
        self.cli = system_binary("redis-cli", "redis-tools")
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_port() for _ in range(primaries * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        for port in self.ports:
            self.start_node(port)
        self.run_cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        )
        self.wait_ok()
        self.wait_replicas_online(replicas)

    @property
    def url(self) -> str:
        """Two seeds, as a deployment would name them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-port", str(free_port())]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--save", "", "--appendonly", "no"]
        log = (node_dir / "redis.log").open("ab")
        self.processes[port] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((node_dir / "redis.log").read_text())

    def run_cli(self, *args: str, port: int | None = None, timeout: float = 60) -> str:
        target = [] if port is None else ["-p", str(port)]
        done = subprocess.run(
            [self.cli, *target, *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def alive(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a live node: id, address, flags, slots."""
        out = self.run_cli("cluster", "nodes", port=self.alive()[0])
        rows = []
        for line in out.splitlines():
            fields = line.split()
            rows.append(
                {
                    "id": fields[0],
                    "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                    "flags": fields[2],
                    "slots": " ".join(fields[8:]),
                }
            )
        return rows

    def primaries(self) -> list[int]:
        return [
            int(n["port"])
            for n in self.nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        ]

    def replica_of(self, primary: int) -> int:
        """The port of a replica of the primary on ``primary``."""
        rows = self.nodes()
        primary_id = next(n["id"] for n in rows if int(n["port"]) == primary)
        out = self.run_cli("cluster", "replicas", primary_id, port=primary)
        return int(out.split()[1].split("@")[0].rsplit(":", 1)[1])

    def pause(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def node_id(self, port: int) -> str:
        return next(n["id"] for n in self.nodes() if int(n["port"]) == port)

    def keyslot(self, key: str) -> int:
        return int(self.run_cli("cluster", "keyslot", key, port=self.alive()[0]))

    def primary_of_slot(self, slot: int) -> int:
        for node in self.nodes():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for part in node["slots"].split():
                if part.startswith("["):
                    continue  # a slot being migrated
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(node["port"])
        raise LookupError(f"slot {slot} is not served")

    def keys(self, port: int, pattern: str) -> list[str]:
        return self.run_cli("--scan", "--pattern", pattern, port=port).split()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.run_cli("cluster", "info", port=p) for p in self.alive()]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def wait_replicas_online(self, replicas: int, timeout: float = 30) -> None:
        """Until every primary has ``replicas`` replicas in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.run_cli("info", "replication", port=p) for p in self.primaries()]
            if all(i.count("state=online") >= replicas for i in infos):
                return
            time.sleep(0.1)
        raise TimeoutError("the replicas did not come online")

    def kill(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)
