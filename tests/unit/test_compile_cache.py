"""The compile cache shared by servers: each writes in a directory of its own and publishes
whole entries by renaming them into place; the shared directory stays within its bound."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lstm_server.runtime.compile_cache import CompileCache, default_directory

ENTRY = "xla_compile_cache__1__2__XLA_CPU_JIT.pb"


def _write(cache: CompileCache, name: str, size: int) -> None:
    """What XLA does when it compiles a program: write an entry in its directory."""
    (cache.private / name).write_bytes(b"x" * size)


def test_what_a_server_compiles_reaches_the_others_whole(tmp_path: Path) -> None:
    first, second = CompileCache(tmp_path, 2**20), CompileCache(tmp_path, 2**20)
    first.open()
    second.open()
    _write(first, ENTRY, 1000)
    assert first.publish() == [ENTRY]
    assert (tmp_path / ENTRY).read_bytes() == b"x" * 1000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert second.refresh() == 1  # linked into the other server's own directory
    assert (second.private / ENTRY).read_bytes() == b"x" * 1000
    assert first.publish() == []  # published once
    assert second.publish() == []  # linked, not written: not its own
    third = CompileCache(tmp_path, 2**20)
    third.open()
    other = ENTRY.replace("__2__", "__3__")
    _write(first, other, 10)
    _write(third, other, 5)  # the same program, compiled by two servers at once
    assert first.publish() == [other]
    assert third.publish() == [other]  # its own compilation, though the first one stays
    assert (tmp_path / other).read_bytes() == b"x" * 10
    for cache in (first, second, third):
        cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ENTRY, other])


def test_the_shared_directory_keeps_its_newest_entries_within_the_bound(tmp_path: Path) -> None:
    for age, name in enumerate(["c", "b", "a"]):  # "a" is the oldest
        path = tmp_path / f"xla_compile_cache__{name}__0__XLA_CPU_JIT.pb"
        path.write_bytes(b"x" * 400)
        os.utime(path, (time.time() - 100 * age, time.time() - 100 * age))
    cache = CompileCache(tmp_path, 1000)
    cache.open()
    try:
        names = sorted(p.name for p in tmp_path.glob("*.pb"))
        assert names == [f"xla_compile_cache__{n}__0__XLA_CPU_JIT.pb" for n in ("b", "c")]
        assert sorted(p.name for p in cache.private.iterdir()) == names
    finally:
        cache.close()


def test_what_a_crashed_server_left_is_removed_after_an_hour(tmp_path: Path) -> None:
    stale = tmp_path / ".server-gone-1-1"
    stale.mkdir()
    (stale / ENTRY).write_bytes(b"x")
    half_written = tmp_path / f".{ENTRY}.1.tmp"
    half_written.write_bytes(b"x")
    recent = tmp_path / ".server-alive-2-2"
    recent.mkdir()
    hour_ago = time.time() - 3700
    for path in (stale, half_written):
        os.utime(path, (hour_ago, hour_ago))
    cache = CompileCache(tmp_path, 2**20)
    cache.open()
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.name]


def test_the_default_directory_is_per_user(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "lstm-serving" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".cache" / "lstm-serving" / "xla"


def test_the_shapes_calls_met_are_kept_for_the_next_servers(tmp_path: Path) -> None:
    first, second = CompileCache(tmp_path, 2**20), CompileCache(tmp_path, 2**20)
    first.open()
    second.open()
    try:
        assert first.shapes_met("lstm_exact_ab_0") == []
        first.record_met("lstm_exact_ab_0", (1, 100))
        second.record_met("lstm_exact_ab_0", (8, 100))
        first.record_met("lstm_exact_ab_0", (1, 100))  # once
        assert second.shapes_met("lstm_exact_ab_0") == [(1, 100), (8, 100)]
        assert first.shapes_met("lstm_masked_ab_0") == []
        (tmp_path / "shapes" / "lstm_masked_ab_0.json").write_text("{not json")
        assert first.shapes_met("lstm_masked_ab_0") == []  # unreadable: nothing met
    finally:
        first.close()
        second.close()
