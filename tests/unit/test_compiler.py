"""The background compiler: shapes calls meet with no compiled form are compiled at once, the
others when the server is idle (or has been busy past their patience), each shape once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import lstm_server.runtime.compiler as compiler_module
import pytest
from lstm_server.runtime.compiler import Compiled, Compiler, Priority, Shape


class Recorder:
    """A compile function that records shapes and the thread that compiled them; the shapes in
    ``hold`` wait until ``release`` is set."""

    def __init__(self, hold: tuple[Shape, ...] = ()) -> None:
        self.compiled: list[tuple[Shape, str]] = []
        self.hold = hold
        self.release = threading.Event()
        self.held = threading.Event()

    def __call__(self, shape: Shape) -> None:
        if shape in self.hold:
            self.held.set()
            assert self.release.wait(30)
        self.compiled.append((shape, threading.current_thread().name))


@pytest.fixture
def compiler() -> Iterator[Compiler]:
    made = Compiler()
    yield made
    made.close()


def test_a_shape_is_compiled_once_in_the_background(compiler: Compiler) -> None:
    compile = Recorder()
    shapes = Compiled(compiler, compile)
    assert not shapes.ready((1, 8))  # the caller runs on the fallback meanwhile
    assert not shapes.ready((1, 8))
    assert compiler.drain(Priority.NOW, 30)
    assert shapes.ready((1, 8))
    assert compile.compiled == [((1, 8), "xla-compile")]
    assert shapes.shapes == {(1, 8)}


def test_shapes_calls_meet_do_not_wait_behind_those_compiled_ahead(compiler: Compiler) -> None:
    compile = Recorder(hold=((64, 128),))
    shapes = Compiled(compiler, compile)
    shapes.ready((64, 128), priority=Priority.AHEAD)
    assert compile.held.wait(30)  # the ahead thread is busy with a long compilation
    shapes.ready((2, 128), priority=Priority.AHEAD)
    shapes.ready((2, 128))  # a call met it: compiled at once, on the other thread
    assert compiler.drain(Priority.NOW, 30)
    assert compile.compiled == [((2, 128), "xla-compile")]  # the ahead thread is still held
    compile.release.set()
    assert compiler.drain(Priority.AHEAD, 30)
    assert [shape for shape, _ in compile.compiled] == [(2, 128), (64, 128)]  # each once
    assert shapes.shapes == {(64, 128), (2, 128)}


def test_at_most_limit_shapes_are_ever_compiled(compiler: Compiler) -> None:
    compile = Recorder()
    shapes = Compiled(compiler, compile, limit=2)
    for span in (1, 2, 3):
        shapes.ready((1, span))
    assert compiler.drain(Priority.NOW, 30)
    assert shapes.shapes == {(1, 1), (1, 2)}
    assert not shapes.ready((1, 3))


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are Linux's")
def test_compiling_ahead_runs_at_the_lowest_priority(compiler: Compiler) -> None:
    seen: dict[str, int] = {}

    def note() -> None:
        seen[threading.current_thread().name] = os.getpriority(
            os.PRIO_PROCESS, threading.get_native_id()
        )

    compiler.submit(note, Priority.AHEAD)
    compiler.submit(note, Priority.NOW)
    assert compiler.drain(Priority.AHEAD, 30)
    assert seen["xla-compile-ahead"] == 19
    assert seen["xla-compile"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_shapes_that_only_make_calls_faster_wait_for_an_idle_moment() -> None:
    busy = threading.Event()
    busy.set()
    made = Compiler(idle=lambda: 0.0 if busy.is_set() else 10.0)
    try:
        compile = Recorder()
        shapes = Compiled(made, compile)
        shapes.ready((8, 128), priority=Priority.AHEAD)
        shapes.ready((1, 100), priority=Priority.SOON)
        shapes.ready((1, 128))  # no compiled form: at once, busy or not
        assert made.drain(Priority.NOW, 30)
        time.sleep(0.5)  # busy: nothing else is compiled
        assert compile.compiled == [((1, 128), "xla-compile")]
        busy.clear()  # idle: the shape calls met goes before the one they have not
        deadline = time.monotonic() + 30
        while len(compile.compiled) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [shape for shape, _ in compile.compiled] == [(1, 128), (1, 100), (8, 128)]
        assert {thread for _, thread in compile.compiled[1:]} == {"xla-compile-ahead"}
    finally:
        made.close()


def test_a_server_that_is_never_idle_compiles_them_after_their_patience(monkeypatch) -> None:
    monkeypatch.setitem(compiler_module.PATIENCE, Priority.SOON, 0.3)
    made = Compiler(idle=lambda: 0.0)  # always busy
    try:
        compile = Recorder()
        shapes = Compiled(made, compile)
        began = time.monotonic()
        shapes.ready((1, 100), priority=Priority.SOON)
        shapes.ready((8, 128), priority=Priority.AHEAD)  # waits a minute: not in this test
        deadline = began + 30
        while not compile.compiled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert compile.compiled == [((1, 100), "xla-compile-ahead")]
        assert time.monotonic() - began >= 0.3
    finally:
        made.close()


def test_draining_compiles_what_waits_for_idle_at_once() -> None:
    made = Compiler(idle=lambda: 0.0)
    try:
        compile = Recorder()
        shapes = Compiled(made, compile)
        shapes.ready((8, 128), priority=Priority.AHEAD)
        assert made.drain(Priority.AHEAD, 30)
        assert compile.compiled == [((8, 128), "xla-compile-ahead")]
    finally:
        made.close()


def test_the_shapes_calls_meet_are_told_once_and_not_those_compiled_ahead(
    compiler: Compiler,
) -> None:
    met: list[tuple[Shape, str]] = []
    shapes = Compiled(
        compiler, Recorder(), met=lambda shape: met.append((shape, threading.current_thread().name))
    )
    shapes.ready((4, 128), priority=Priority.AHEAD)
    shapes.ready((8, 128), priority=Priority.AHEAD)
    shapes.ready((1, 100), priority=Priority.SOON)
    shapes.ready((2, 128))
    shapes.ready((2, 128))
    shapes.ready((8, 128))  # queued ahead of traffic, then met
    assert compiler.drain(Priority.AHEAD, 30)
    assert sorted(met) == [
        ((1, 100), "xla-compile"),
        ((2, 128), "xla-compile"),
        ((8, 128), "xla-compile"),
    ]
