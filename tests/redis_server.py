"""A private redis-server on a free port, for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import system_binary
from tests.servers import free_port


class RedisServer:
    """``redis-server`` in ``directory`` on a free port; ``persist`` keeps data across restarts."""

    def __init__(self, directory: Path, *, persist: bool = False) -> None:
        self.binary = system_binary("redis-server", "redis-server")
        self.directory = directory
        self.persist = persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
        ]
        args += ["--save", "", "--appendonly", "yes" if self.persist else "no"]
        args += ["--appendfsync", "always"] if self.persist else []
        self.process = subprocess.Popen(
            args, stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((self.directory / "redis.log").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
