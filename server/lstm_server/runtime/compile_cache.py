"""XLA's persistent cache of compiled shapes, shared safely by the processes that use it.

TensorFlow reads and writes its cache entries in one directory, and writes each in place: a
process that read an entry another was still writing would fail the call that needed it. So
each server points TensorFlow at a directory of its own, inside the shared one, holding hard
links to the shared entries; what it compiles is published to the shared directory under a
temporary name and renamed into place, so that readers only ever see whole entries. The shared
directory is bounded: past ``max_bytes``, its oldest entries are removed when a server starts.
Beside the entries, the cache keeps the shapes calls met for each program, so that the next
server compiles (loads, mostly) those before it serves. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENTRY_SUFFIX = ".pb"  # XLA's entries: xla_compile_cache__<signature>__<program>__<device>.pb
PRIVATE_PREFIX = ".server-"
SHAPES = "shapes"  # per program, the shapes calls met: compiled by the next start before serving
STALE_SECONDS = 3600.0  # a server's own directory left behind by a crash, removed after this


def default_directory() -> Path:
    """``$XDG_CACHE_HOME/lstm-serving/xla``, or ``~/.cache/lstm-serving/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstm-serving" / "xla"


def _entries(directory: Path) -> dict[str, os.stat_result]:
    found = {}
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.name.endswith(ENTRY_SUFFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    found[entry.name] = entry.stat(follow_symlinks=False)
    return found


class CompileCache:
    """A server's view of the shared cache in ``directory``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        name = f"{PRIVATE_PREFIX}{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.private = directory / name  # TensorFlow's directory
        self._published: set[str] = set()

    def open(self) -> None:
        """Make the shared and private directories, remove what is stale or over the bound,
        and link the shared entries into the private directory. Raises OSError if the
        directory cannot be used."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        self.prune()
        self.private.mkdir()
        self.refresh()

    def refresh(self) -> int:
        """Link entries other servers published since into the private directory; how many."""
        have = set(os.listdir(self.private))
        linked = 0
        for name in _entries(self.directory).keys() - have:
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                os.link(self.directory / name, self.private / name)
                self._published.add(name)  # not this server's to publish
                linked += 1
        return linked

    def publish(self) -> list[str]:
        """Publish the entries this server wrote since the last call; their names (those
        another server published meanwhile are left as they are)."""
        written = []
        for name in _entries(self.private).keys() - self._published:
            self._published.add(name)
            written.append(name)
            if (self.directory / name).exists():
                continue  # another server published the same program meanwhile
            temporary = self.directory / f".{name}.{os.getpid()}.tmp"
            try:
                os.link(self.private / name, temporary)
                os.replace(temporary, self.directory / name)
            except OSError as error:
                log.warning("could not publish compiled shape %s: %s", name, error)
                with contextlib.suppress(OSError):
                    temporary.unlink()
        return written

    def shapes_met(self, program: str) -> list[tuple[int, int]]:
        """The shapes calls met for ``program`` (a portable function's name) on any server."""
        try:
            recorded = json.loads((self.directory / SHAPES / f"{program}.json").read_text())
            return [(int(rows), int(span)) for rows, span in recorded["shapes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def record_met(self, program: str, shape: tuple[int, int]) -> None:
        """Add ``shape`` to what calls met for ``program``, for the next servers to compile
        before they serve (replaced whole: a reader sees the old list or the new one)."""
        met = self.shapes_met(program)
        if shape in met:
            return
        folder = self.directory / SHAPES
        try:
            folder.mkdir(exist_ok=True)
            temporary = folder / f".{program}.{os.getpid()}.tmp"
            temporary.write_text(json.dumps({"shapes": [*met, shape]}))
            os.replace(temporary, folder / f"{program}.json")
        except OSError as error:
            log.warning("could not record the shapes calls met: %s", error)

    def prune(self) -> int:
        """Remove the oldest entries until the shared ones fit ``max_bytes``; bytes removed."""
        entries = sorted(_entries(self.directory).items(), key=lambda item: item[1].st_mtime)
        total = sum(stat.st_size for _, stat in entries)
        removed = 0
        for name, stat in entries:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
            total -= stat.st_size
            removed += stat.st_size
        if removed:
            log.info("compile cache over %d bytes: removed %d bytes", self.max_bytes, removed)
        return removed

    def _remove_stale(self) -> None:
        now = time.time()
        for path in self.directory.iterdir():
            stale = now - path.lstat().st_mtime > STALE_SECONDS
            if path.name.startswith(PRIVATE_PREFIX) and stale:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.endswith(".tmp") and stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        """Publish what is left and remove the private directory."""
        with contextlib.suppress(OSError):
            self.publish()
        shutil.rmtree(self.private, ignore_errors=True)
