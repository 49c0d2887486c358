"""Server-held sessions through the real server: chaining, exactly-once steps, lifetime, streams."""

from __future__ import annotations

import asyncio
import itertools
import queue
import time

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc
from lstm_server.sessions import MemorySessionStore

from tests.helpers import seq_msg, state_msg
from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, settings

TOL = 1e-5


def splits(length: int, max_parts: int = 4):
    """Every way to cut range(length) into consecutive non-empty pieces (up to max_parts)."""
    for parts in range(1, max_parts + 1):
        for cuts in itertools.combinations(range(1, length), parts - 1):
            bounds = (0, *cuts, length)
            yield [(bounds[i], bounds[i + 1]) for i in range(parts)]


def assert_matches(outputs: list[np.ndarray], h, c, whole: tuple) -> None:
    np.testing.assert_allclose(np.concatenate(outputs), whole[0], atol=TOL)
    np.testing.assert_allclose(h, whole[1], atol=TOL)
    np.testing.assert_allclose(c, whole[2], atol=TOL)


def test_step_chaining_over_every_split(stub, wide_reference: NumpyLstm, rng) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    h0, c0 = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    whole = wide_reference.run(x, h0, c0)
    count = 0
    for pieces in splits(len(x), max_parts=5):
        session = stub.CreateSession(pb.CreateSessionRequest(initial_state=state_msg(h0, c0)))
        outputs = []
        for n, (a, b) in enumerate(pieces, start=1):
            reply = stub.Step(
                pb.StepRequest(session_id=session.session_id, input=seq_msg(x[a:b]), step_number=n)
            )
            assert reply.step_number == n
            outputs.append(np.array([v.values for v in reply.hidden_sequence]))
        assert_matches(outputs, reply.state.h.values, reply.state.c.values, whole)
        count += 1
    assert count == 16  # 2 ** (5 - 1) ways to split five timesteps


def test_stream_session_chaining_over_every_split(stub, wide_reference, rng) -> None:
    x = rng.normal(size=(4, 8)).astype(np.float32)
    whole = wide_reference.run(x)
    for pieces in splits(len(x)):
        requests = [
            pb.SessionStreamRequest(
                open=pb.OpenSession(create=pb.CreateSessionRequest(), close_on_end=True)
            )
        ]
        requests += [
            pb.SessionStreamRequest(step=pb.SessionStep(input=seq_msg(x[a:b]), step_number=n))
            for n, (a, b) in enumerate(pieces, start=1)
        ]
        replies = list(stub.StreamSession(iter(requests)))
        assert replies[0].HasField("session")
        steps = [r.step for r in replies[1:]]
        assert [s.step_number for s in steps] == list(range(1, len(pieces) + 1))
        outputs = [np.array([v.values for v in s.hidden_sequence]) for s in steps]
        assert_matches(outputs, steps[-1].state.h.values, steps[-1].state.c.values, whole)
        with pytest.raises(grpc.RpcError) as caught:  # close_on_end closed it
            stub.GetSession(pb.GetSessionRequest(session_id=replies[0].session.session_id))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_sdk_session_chaining_and_state(client: LstmClient, wide_reference, rng) -> None:
    x = rng.normal(size=(7, 8)).astype(np.float32)
    whole = wide_reference.run(x)
    with client.session() as session:
        outputs = [session.step(x[a:b]).sequence for a, b in [(0, 2), (2, 3), (3, 7)]]
        assert session.step_count == 3
        assert_matches(outputs, session.state[0], session.state[1], whole)
        exported = session.refresh()
        np.testing.assert_array_equal(exported.h, session.state[0])
        assert exported.model_version == client.metadata().version
    with pytest.raises(LstmError) as caught:
        client.attach(session.session_id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "closed" in caught.value.details


def test_sdk_stream_session(client: LstmClient, wide_reference, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)
    results = list(client.stream_session([x[:1], x[1:4], x[4:]]))
    assert [r.step_number for r in results] == [1, 2, 3]
    assert_matches(
        [r.sequence for r in results], results[-1].h, results[-1].c, wide_reference.run(x)
    )


async def test_async_session_and_stream_session(
    aclient: AsyncLstmClient, wide_reference, rng
) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    whole = wide_reference.run(x)
    async with await aclient.session() as session:
        outputs = [(await session.step(x[a:b])).sequence for a, b in [(0, 3), (3, 5)]]
        assert_matches(outputs, *session.state, whole)
        await session.reset()
        assert session.step_count == 0
        again = await session.step(x)
        np.testing.assert_allclose(again.sequence, whole[0], atol=TOL)
    results = [r async for r in aclient.stream_session([x[:2], x[2:]])]
    assert_matches([r.sequence for r in results], results[-1].h, results[-1].c, whole)


def test_import_export_and_reset(client: LstmClient, wide_reference, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)
    whole = wide_reference.run(x)
    with client.session() as first:
        first.step(x[:3])
        exported = first.refresh()
    with client.session(initial_state=(exported.h, exported.c)) as second:  # imported elsewhere
        rest = second.step(x[3:])
        assert_matches(
            [first_part := wide_reference.run(x[:3])[0], rest.sequence], rest.h, rest.c, whole
        )
        assert first_part.shape == (3, 16)
        info = second.reset(state=(exported.h, exported.c))
        assert info.step_count == 0
        np.testing.assert_array_equal(info.h, exported.h)
        np.testing.assert_allclose(second.step(x[3:]).sequence, rest.sequence, atol=1e-6)


def test_retry_of_the_last_step_repeats_its_reply(stub, rng) -> None:
    session = stub.CreateSession(pb.CreateSessionRequest())
    sid = session.session_id
    x1, x2 = (seq_msg(rng.normal(size=(2, 8)).astype(np.float32)) for _ in range(2))
    first = stub.Step(pb.StepRequest(session_id=sid, input=x1, step_number=1))
    retry = stub.Step(pb.StepRequest(session_id=sid, input=x1, step_number=1))
    assert retry == first
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).step_count == 1
    with pytest.raises(grpc.RpcError) as caught:  # same number, other input
        stub.Step(pb.StepRequest(session_id=sid, input=x2, step_number=1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already applied with another input" in caught.value.details()
    second = stub.Step(pb.StepRequest(session_id=sid, input=x2, step_number=2))
    assert second.step_number == 2


@pytest.mark.parametrize("number", [4, 7, 1])
def test_wrong_step_numbers_are_refused_and_change_nothing(stub, rng, number: int) -> None:
    sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
    x = seq_msg(rng.normal(size=(1, 8)).astype(np.float32))
    stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=1))
    stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=2))
    before = stub.GetSession(pb.GetSessionRequest(session_id=sid))
    other = seq_msg(rng.normal(size=(1, 8)).astype(np.float32))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Step(pb.StepRequest(session_id=sid, input=other, step_number=number))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    if number != 1:
        assert "expects step_number 3" in caught.value.details()
    after = stub.GetSession(pb.GetSessionRequest(session_id=sid))
    assert after.step_count == 2
    assert after.state == before.state


def test_step_number_zero_appends(stub, rng) -> None:
    sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
    x = seq_msg(rng.normal(size=(1, 8)).astype(np.float32))
    numbers = [stub.Step(pb.StepRequest(session_id=sid, input=x)).step_number for _ in range(3)]
    assert numbers == [1, 2, 3]


async def test_concurrent_steps_on_one_session_are_serialized(
    wide_server, wide_reference, rng
) -> None:
    x = rng.normal(size=(12, 8)).astype(np.float32)
    async with grpc.aio.insecure_channel(wide_server.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        sid = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
        # Twelve appends at once: each applies once, in some order, each from the state before it.
        replies = await asyncio.gather(
            *(
                stub.Step(pb.StepRequest(session_id=sid, input=seq_msg(x[i : i + 1])))
                for i in range(12)
            )
        )
        assert sorted(r.step_number for r in replies) == list(range(1, 13))
        order = [i for _, i in sorted((r.step_number, i) for i, r in enumerate(replies))]
        whole = wide_reference.run(x[order])
        by_number = sorted(replies, key=lambda r: r.step_number)
        outputs = [np.array([v.values for v in r.hidden_sequence]) for r in by_number]
        assert_matches(outputs, by_number[-1].state.h.values, by_number[-1].state.c.values, whole)
        # Five copies of one numbered step at once: applied once, all five get the same reply.
        step = pb.StepRequest(session_id=sid, input=seq_msg(x[:2]), step_number=13)
        same = await asyncio.gather(*(stub.Step(step) for _ in range(5)))
        assert all(r == same[0] for r in same)
        assert (await stub.GetSession(pb.GetSessionRequest(session_id=sid))).step_count == 13


async def test_many_sessions_in_parallel_do_not_bleed(aclient, wide_reference, rng) -> None:
    inputs = [rng.normal(size=(6, 8)).astype(np.float32) for _ in range(24)]
    starts = [(rng.normal(size=16), rng.normal(size=16)) for _ in inputs]

    async def drive(x: np.ndarray, start) -> tuple[list[np.ndarray], tuple]:
        async with await aclient.session(initial_state=start) as session:
            outputs = [(await session.step(x[i : i + 2])).sequence for i in range(0, 6, 2)]
            return outputs, session.state

    results = await asyncio.gather(*(drive(x, s) for x, s in zip(inputs, starts, strict=True)))
    for x, (h0, c0), (outputs, (h, c)) in zip(inputs, starts, results, strict=True):
        assert_matches(outputs, h, c, wide_reference.run(x, h0, c0))


def test_unknown_closed_and_expired_sessions(stub, rng) -> None:
    x = seq_msg(rng.normal(size=(1, 8)).astype(np.float32))
    cases = []
    with pytest.raises(grpc.RpcError) as caught:
        stub.Step(pb.StepRequest(session_id="0" * 32, input=x, step_number=1))
    cases.append((caught.value, "does not exist"))
    sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=1))
    cases.append((caught.value, "was closed"))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    cases.append((caught.value, "was closed"))
    short = stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=1))
    assert short.ttl_seconds == 1
    assert abs(short.expires_at.ToDatetime().timestamp() - time.time() - 1) < 2
    stub.Step(pb.StepRequest(session_id=short.session_id, input=x, step_number=1))
    time.sleep(1.3)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetSession(pb.GetSessionRequest(session_id=short.session_id))
    cases.append((caught.value, "was expired"))
    for error, words in cases:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert words in error.details()


def test_session_ids_are_random_and_wide(stub) -> None:
    ids = [stub.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # 128 bits, hex
    for sid in ids:
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))


def test_session_cap_and_expired_make_room(tmp_path) -> None:
    server = ThreadedServer(settings(max_sessions=3, reap_interval=60))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            live = [stub.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(2)]
            stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=1))
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateSession(pb.CreateSessionRequest())
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "maximum of 3 sessions" in caught.value.details()
            time.sleep(1.3)  # the short one expires; the reaper is not due, so create reaps it
            stub.CreateSession(pb.CreateSessionRequest())
            for sid in live:  # live sessions were never evicted
                assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).session_id == sid
    finally:
        server.stop()


def test_resume_on_a_new_stream_after_the_first_was_cut(wide_server, wide_reference, rng) -> None:
    x = rng.normal(size=(4, 8)).astype(np.float32)
    with grpc.insecure_channel(wide_server.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        outbox.put(pb.SessionStreamRequest(open=pb.OpenSession(create=pb.CreateSessionRequest())))
        first = stub.StreamSession(iter(outbox.get, None))
        sid = next(first).session.session_id
        outbox.put(
            pb.SessionStreamRequest(step=pb.SessionStep(input=seq_msg(x[:2]), step_number=1))
        )
        step1 = next(first).step
        first.cancel()  # the connection is lost
    with LstmClient(wide_server.target) as client:
        resumed = list(client.stream_session([x[2:]], session_id=sid))
        assert resumed[0].step_number == 2
        outputs = [np.array([v.values for v in step1.hidden_sequence]), resumed[0].sequence]
        assert_matches(outputs, resumed[0].h, resumed[0].c, wide_reference.run(x))
        assert client.attach(sid).step_count == 2  # a resumed session outlives the stream


def test_a_cut_windowed_stream_resumes_from_the_replies_it_kept(
    wide_server, wide_reference, rng
) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)

    def step(n: int) -> pb.SessionStreamRequest:
        return pb.SessionStreamRequest(
            step=pb.SessionStep(input=seq_msg(x[n - 1 : n]), step_number=n)
        )

    with grpc.insecure_channel(wide_server.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        opening = pb.OpenSession(create=pb.CreateSessionRequest(), window=4)
        outbox.put(pb.SessionStreamRequest(open=opening))
        first = stub.StreamSession(iter(outbox.get, None))
        sid = next(first).session.session_id
        for n in range(1, 5):  # four steps in flight
            outbox.put(step(n))
        step1 = next(first).step
        deadline = time.monotonic() + 10  # steps 2-4 are applied; their replies are never read
        while stub.GetSession(pb.GetSessionRequest(session_id=sid)).step_count < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.cancel()
        resume = pb.OpenSession(resume_session_id=sid, window=4, close_on_end=True)
        requests = [pb.SessionStreamRequest(open=resume), step(2), step(3), step(4), step(5)]
        replies = list(stub.StreamSession(iter(requests)))
    assert replies[0].session.step_count == 4
    steps = [r.step for r in replies[1:]]
    assert [s.step_number for s in steps] == [2, 3, 4, 5]  # 2-4 answered again, 5 applied
    outputs = [np.array([v.values for v in s.hidden_sequence]) for s in [step1, *steps]]
    assert_matches(
        outputs, steps[-1].state.h.values, steps[-1].state.c.values, wide_reference.run(x)
    )
    _, h2, c2 = wide_reference.run(x[:2])  # a replayed step carries the state after it
    np.testing.assert_allclose(steps[0].state.h.values, h2, atol=TOL)
    np.testing.assert_allclose(steps[0].state.c.values, c2, atol=TOL)


def test_a_window_past_the_maximum_is_refused(stub) -> None:
    opening = pb.OpenSession(create=pb.CreateSessionRequest(), window=65)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamSession(iter([pb.SessionStreamRequest(open=opening)])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open.window" in caught.value.details()
    assert "at most 64 steps in flight" in caught.value.details()


def test_in_band_errors_leave_the_stream_open(stub, rng) -> None:
    x = rng.normal(size=(2, 8)).astype(np.float32)
    good = lambda n: pb.SessionStreamRequest(step=pb.SessionStep(input=seq_msg(x), step_number=n))  # noqa: E731
    requests = [
        pb.SessionStreamRequest(open=pb.OpenSession(create=pb.CreateSessionRequest())),
        good(1),
        pb.SessionStreamRequest(
            step=pb.SessionStep(input=seq_msg(np.zeros((1, 3))), step_number=2)
        ),
        good(5),
        pb.SessionStreamRequest(open=pb.OpenSession()),
        good(2),
    ]
    replies = list(stub.StreamSession(iter(requests)))
    kinds = [r.WhichOneof("kind") for r in replies]
    assert kinds == ["session", "step", "error", "error", "error", "step"]
    assert replies[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "input.timesteps[0].values" in replies[2].error.message
    assert replies[3].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "expects step_number 2" in replies[3].error.message
    assert replies[4].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[5].step.step_number == 2


def test_stream_must_open_first(stub) -> None:
    request = pb.SessionStreamRequest(step=pb.SessionStep(input=seq_msg(np.zeros((1, 8)))))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamSession(iter([request])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.StreamSession(
                iter([pb.SessionStreamRequest(open=pb.OpenSession(resume_session_id="f" * 32))])
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_session_of_other_weights_is_refused() -> None:
    """Two servers with different weights share one store: steps never mix weights."""
    store = MemorySessionStore()
    first = ThreadedServer(settings(seed=1), store=store)
    second = ThreadedServer(settings(seed=2), store=store)
    try:
        with LstmClient(first.target) as a, LstmClient(second.target) as b:
            session = a.session()
            session.step([[0.5]])
            with pytest.raises(LstmError) as caught:
                b.attach(session.session_id).step([[0.5]])
            assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert a.metadata().version in caught.value.details
            assert session.refresh().step_count == 1
    finally:
        first.stop()
        second.stop()
