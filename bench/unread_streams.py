"""Server memory per session stream whose client sends steps and never reads the replies:
``python bench/unread_streams.py [--streams N] [--window W] [--timesteps T] [server flags]``.
Prints the server's resident memory before and after, and per stream."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from lstm_client import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--timesteps", type=int, default=1000, help="timesteps per step")
    parser.add_argument("--seconds", type=float, default=10.0)
    args, server_flags = parser.parse_known_args()
    ports = Path(tempfile.mkdtemp()) / "ports.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "lstm_server", "--features", "32", "--units", "128",
         "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--http-port", "off",
         "--port-file", str(ports), *server_flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while not ports.exists():
        time.sleep(0.2)
    bound = json.loads(ports.read_text())
    target = f"127.0.0.1:{bound['port']}"

    def rss_mb() -> float:
        url = f"http://127.0.0.1:{bound['metrics_port']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        found = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
        assert found is not None
        return float(found.group(1)) / 2**20

    opening, step = bench.session_messages(32, args.timesteps, window=args.window)
    stop = threading.Event()

    def stream() -> None:
        with grpc.insecure_channel(target) as channel:
            call = channel.stream_stream("/lstm.v1.LstmService/StreamSession")

            def requests():  # type: ignore[no-untyped-def]
                yield opening
                while not stop.is_set():
                    yield step

            replies = call(requests())  # never read
            stop.wait()
            replies.cancel()

    try:
        time.sleep(3)
        before = rss_mb()
        threads = [threading.Thread(target=stream) for _ in range(args.streams)]
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        during = rss_mb()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(
        f"{args.streams} streams, window {args.window}, steps of {args.timesteps} timesteps "
        f"{' '.join(server_flags)}: RSS {before:.0f} -> {during:.0f} MB, "
        f"{(during - before) / args.streams:.1f} MB per stream"
    )


if __name__ == "__main__":
    main()
