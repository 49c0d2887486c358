"""Process-wide settings the server makes at start: numpy's BLAS on one thread."""

from __future__ import annotations

import pytest
from lstm_server.process import BLAS_THREAD_VARIABLES, one_blas_thread
from threadpoolctl import threadpool_info, threadpool_limits


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_numpy_blas_is_kept_to_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with threadpool_limits(limits=None):  # the test process gets its own counts back after
        assert one_blas_thread()
        assert blas_threads()  # numpy's BLAS is there to be limited
        assert set(blas_threads()) == {1}


@pytest.mark.parametrize("name", BLAS_THREAD_VARIABLES)
def test_a_thread_count_the_operator_set_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "2")
    with threadpool_limits(limits=2, user_api="blas"):
        assert not one_blas_thread()
        assert set(blas_threads()) == {2}
