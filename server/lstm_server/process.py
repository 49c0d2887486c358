"""Process-wide matters: checking the port before the model loads, loading it on a thread that
does not hold up an exit, keeping start-up's objects out of the garbage collector's passes, and
the allocator tuning the server applies once serving, and one BLAS thread for numpy.

Requests and replies of megabytes pass through the server. glibc's allocator raises its mmap
threshold after the first such buffer is freed, and from then on serves them from its heaps,
one per thread that allocates, where freed megabytes are rarely returned: a server hit by
4 MiB requests from two senders grew from 655 to 1241 MB over four rounds of 6 s, every round
adding more. A fixed threshold keeps buffers of 1 MiB and more mapped on their own, returned to
the system as soon as they are freed (the same server then stayed between 785 and 892 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER_BYTES = 1 << 20


def return_large_buffers_to_the_system() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, unless the operator set ``MALLOC_MMAP_THRESHOLD_``.
    Returns whether it was set (False on other C libraries)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
    log.debug("mmap threshold fixed at %d bytes: %s", LARGE_BUFFER_BYTES, done)
    return done


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> bool:
    """Keep numpy's BLAS to the calling thread, unless the operator set its thread count.

    The numpy path runs small matrix products on the event loop. OpenBLAS splits any product
    past a few dozen rows across its own threads, which then spin waiting for more work: a
    (32, 160) x (160, 512) product took 220 us of wall time and 286 us of CPU with two threads,
    67 us of both with one (this machine, 2 cores). TensorFlow has threads of its own and does
    not use numpy's BLAS. Returns whether the limit was set.
    """
    if any(name in os.environ for name in BLAS_THREAD_VARIABLES):
        return False
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    return True


def give_back_freed_memory() -> bool:
    """Collect, then hand the heap's free pages back to the system (glibc's ``malloc_trim``):
    what an unloaded model version held otherwise stays with the allocator (measured: 64 MB
    over four load/unload cycles of a 32x128 model). Returns whether the heap was trimmed
    (False on other C libraries)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(0)
    return True


def freeze_startup_objects() -> int:
    """Collect once, then leave every object alive now out of later collections; returns how
    many. TensorFlow, Keras and the model leave some 350,000 objects that live as long as the
    process; a full collection walked them all, 175 ms here, stalling every call in flight
    about once in a few seconds under load. Objects freed by reference counting still go."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def ensure_free(host: str, port: int) -> None:
    """Fail now, not after the model has loaded, if ``port`` is taken (0 is always free)."""
    if port == 0:
        return
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gRPC binds: connections of a server that just stopped, left in TIME_WAIT, do not
        # make the port busy; another socket listening on it does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from exc


async def in_daemon_thread(function: Callable[..., T], *args: Any, niceness: int = 0) -> T:
    """``function(*args)`` on a daemon thread: unlike the default executor's, it does not hold
    the process up if a signal ends start-up meanwhile (loading a model cannot be interrupted).
    ``niceness`` > 0 lowers the thread's CPU priority (Linux; threads it starts inherit it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        if niceness:
            with contextlib.suppress(OSError, AttributeError):  # not Linux: normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        try:
            result = function(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name="model-load", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
