"""nginx as the gRPC load balancer, from the repository's configuration, for tests."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import system_binary
from tests.servers import free_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "nginx.conf"


def render(upstreams: list[str], port: int, directory: Path) -> str:
    """The repository's configuration with these upstreams and port, files in ``directory``."""
    text = CONFIG.read_text()
    shipped = re.search(r"        server lstm-server-\d:50051([^\n]*)\n", text)
    assert shipped is not None, "the upstream block of deploy/nginx/nginx.conf changed shape"
    servers = "".join(f"        server {u}{shipped.group(1)}\n" for u in upstreams)
    text, replaced = re.subn(r"(?:        server lstm-server-\d:50051[^\n]*\n)+", servers, text)
    assert replaced == 1, "the upstream block of deploy/nginx/nginx.conf changed shape"
    text = text.replace("listen 50051 http2;", f"listen 127.0.0.1:{port} http2;")
    # The HTTP balancer's block names the compose file's hosts: the gRPC tests leave it out.
    text, cut = re.subn(r"\n    # BEGIN http:.*?# END http\n", "\n", text, flags=re.S)
    assert cut == 1, "the HTTP block of deploy/nginx/nginx.conf changed shape"
    temp = "".join(
        f"    {kind}_temp_path {directory / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace(
        "access_log /dev/stdout;", f"access_log {directory / 'access.log'};\n{temp}"
    )
    return text


class NginxServer:
    """nginx in the foreground on a free port, balancing over ``upstreams`` (host:port)."""

    def __init__(self, upstreams: list[str], directory: Path) -> None:
        binary = system_binary("nginx", "nginx", "/usr/sbin/nginx")
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        config = directory / "nginx.conf"
        config.write_text(render(upstreams, self.port, directory))
        globals_ = (
            f"daemon off; pid {directory / 'nginx.pid'}; error_log {directory / 'error.log'};"
        )
        self.process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(config), "-g", globals_],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((directory / "stderr.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
