"""PeerPool.call against a peer at the other end of an in-memory stream (the TLS dial
replaced), on trio's mock clock: the answer handed over (a Reply decoded, an ErrorReply
typed), the link's own bound, a shielded caller's bound (the pair write: the link adds no
scope of its own, and the link survives the abandoned request), a link lost under a call.
The answers arrive in a one-message inbox (``ReplySlot``: tests/transport/test_reply_slot.py)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost, NotFound, RequestTimeout
from hdsd.cluster import Layout, NodeInfo
from hdsd.peers import PeerPool
from hdsd.transport import Identity, WireSession
from hdsd.wire import (
    PROTOCOL_VERSION,
    UNSENT,
    Connection,
    ErrorReply,
    FetchChunk,
    Hello,
    Message,
    Reply,
    Role,
)

TIMEOUT = 5.0
Serve = Callable[[WireSession, FetchChunk], Awaitable[None]]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _request(n: int = 0) -> FetchChunk:
    return FetchChunk(UNSENT, "l", "t", bytes([n]) * 32)


def _pool(monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, serve: Serve,
          dialled: list[WireSession]) -> PeerPool:
    """A pool whose dial to b1 reaches a peer in this process, where *serve* answers each
    request (the peer's sessions are appended to *dialled*)."""

    async def dial(host: str, port: int, *args: object, **kwargs: object) -> Any:
        ours, theirs = trio.testing.memory_stream_pair()
        ours.getpeercert = lambda binary_form=False: b""  # type: ignore[attr-defined]
        nursery.start_soon(_peer, theirs, serve, dialled)
        return ours

    monkeypatch.setattr("hdsd.peers._link.connect_tls", dial)
    monkeypatch.setattr("hdsd.peers._link.identity_from_der",
                        lambda der: Identity("node", "b1", "b", None, None, "c"))
    layout = Layout(sites=("a", "b"), nodes=(NodeInfo("a1", "a", "127.0.0.1", 1),
                                             NodeInfo("b1", "b", "127.0.0.1", 2)))
    return PeerPool(name="a1", cluster_id="c", layout=layout,
                    ssl_context=ssl.create_default_context(), request_timeout=TIMEOUT)


async def _peer(stream: trio.abc.Stream, serve: Serve, dialled: list[WireSession]) -> None:
    session = WireSession(stream, Connection(Role.SERVER))
    dialled.append(session)
    await session.send(Hello(PROTOCOL_VERSION, "c", "b1", session.conn.initial_window))
    async with trio.open_nursery() as requests:
        def on_request(msg: Message) -> None:
            if isinstance(msg, FetchChunk):
                requests.start_soon(serve, session, msg)
        try:
            await session.run_reader(on_request)
        except ConnectionLost:
            pass  # it hung up (or the pool did)


async def _answer(session: WireSession, msg: FetchChunk) -> None:
    """A chunk whose payload is its id; none for id 0xee (the peer says so, typed), no
    answer at all for id 0xff."""
    if msg.chunk_id[0] == 0xff:
        await trio.sleep_forever()
    if msg.chunk_id[0] == 0xee:
        await session.send(ErrorReply(msg.rid, "not_found", "no such chunk"))
        return
    await session.send(Reply(msg.rid, {"payload": msg.chunk_id}))


async def test_the_answer_is_decoded_or_raised_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, _answer, [])
        await nursery.start(pool.run)
        for shielded in (False, True):
            body = await pool.call("b1", _request(1), shielded=shielded)
            assert body == {"payload": bytes([1]) * 32}
            with pytest.raises(NotFound, match="no such chunk"):
                await pool.call("b1", _request(0xee), shielded=shielded)
        nursery.cancel_scope.cancel()


async def test_a_peer_that_does_not_answer_is_timed_out_by_the_link(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, _answer, [])
        await nursery.start(pool.run)
        began = trio.current_time()
        with pytest.raises(RequestTimeout, match="did not answer within 5 s"):
            await pool.call("b1", _request(0xff))
        assert trio.current_time() - began == pytest.approx(TIMEOUT)
        assert not pool._peers["b1"].kept  # the link's own bound ended it: its slot is free
        nursery.cancel_scope.cancel()


async def test_a_shielded_caller_bounds_the_call_and_the_link_lives_on(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """The pair write's call: its shielded scope, with a deadline earlier than the link's
    bound, is what ends a call that gets no answer (the link's bound never fires first); the
    request is abandoned, not the link: the next call on it is answered."""
    dialled: list[WireSession] = []
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, _answer, dialled)
        await nursery.start(pool.run)
        await pool.call("b1", _request(1), shielded=True)  # the link is open
        began = trio.current_time()
        with trio.CancelScope(shield=True, deadline=began + 1) as scope:
            await pool.call("b1", _request(0xff), shielded=True)
        assert scope.cancelled_caught
        assert trio.current_time() - began == pytest.approx(1)
        assert await pool.call("b1", _request(2), shielded=True) == {"payload": b"\2" * 32}
        assert len(dialled) == 1 and pool.reachable("b1")
        nursery.cancel_scope.cancel()


async def test_a_link_lost_under_a_call_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    dialled: list[WireSession] = []

    async def hang_up(session: WireSession, msg: FetchChunk) -> None:
        await session.aclose()

    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, hang_up, dialled)
        await nursery.start(pool.run)
        for shielded in (False, True):
            with pytest.raises(ConnectionLost, match="connection to peer b1 lost"):
                await pool.call("b1", _request(1), shielded=shielded)
            await trio.testing.wait_all_tasks_blocked()
        assert len(dialled) == 2  # each call found the link closed and dialled again
        nursery.cancel_scope.cancel()


# -- the in-flight bound when callers stop waiting (a `local` write's grace) -------------------
SLOTS = 4
GRACE = 0.02


class SlowPeer:
    """A peer that answers each request *delay* seconds after it came (an ErrorReply for id
    0xee, none at all for 0xff), counting the requests it works on at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.working = 0
        self.most = 0
        self.served = 0

    async def __call__(self, session: WireSession, msg: FetchChunk) -> None:
        self.working += 1
        self.most = max(self.most, self.working)
        try:
            if msg.chunk_id[0] == 0xff:
                await trio.sleep_forever()
            await trio.sleep(self.delay)
            if msg.chunk_id[0] == 0xee:
                await session.send(ErrorReply(msg.rid, "not_found", "no such chunk"))
            else:
                await session.send(Reply(msg.rid, {"payload": msg.chunk_id}))
            self.served += 1
        finally:
            self.working -= 1


async def _graced_call(pool: PeerPool, n: int) -> bool:
    """The `local` pair write's call: a shielded scope bounded by the write timeout, cut a
    grace after the request is out. True if the answer came within the grace."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + TIMEOUT) as scope:
        def sent() -> None:
            scope.deadline = min(scope.deadline, trio.current_time() + GRACE)
        await pool.call("b1", _request(n), sent=sent, shielded=True)
        return True
    return False


def _free(pool: PeerPool) -> int:
    return pool._peers["b1"].slots.value


async def test_callers_that_stop_waiting_never_lift_the_in_flight_bound(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """A peer slower than the grace: every caller stops waiting, yet the peer never works on
    more requests at once than the link's bound (the slot stays taken until the answer), and
    the late answers free the slots: every caller got through, none timed out."""
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    peer = SlowPeer(delay=0.5)
    answered: list[bool] = []
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, peer, [])
        await nursery.start(pool.run)

        async def caller(n: int) -> None:
            answered.append(await _graced_call(pool, n))

        async with trio.open_nursery() as callers:
            for n in range(5 * SLOTS):
                callers.start_soon(caller, n)
        await trio.testing.wait_all_tasks_blocked()
        assert answered == [False] * 5 * SLOTS  # all cut by the grace
        assert peer.most == SLOTS
        await trio.sleep(1)  # the last late answers come
        assert peer.served == 5 * SLOTS and _free(pool) == SLOTS
        nursery.cancel_scope.cancel()


async def test_a_late_answer_or_error_frees_a_kept_slot(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, SlowPeer(delay=0.5), [])
        await nursery.start(pool.run)
        assert not await _graced_call(pool, 1)
        assert not await _graced_call(pool, 0xee)
        assert _free(pool) == SLOTS - 2  # the peer still works on both
        await trio.sleep(0.5)
        assert _free(pool) == SLOTS  # the answer and the error came, and were dropped
        assert pool._peers["b1"].session is not None
        assert pool._peers["b1"].session.open_inboxes == 0
        nursery.cancel_scope.cancel()


async def test_a_link_that_goes_down_frees_every_kept_slot(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    dialled: list[WireSession] = []
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, SlowPeer(delay=0.5), dialled)
        await nursery.start(pool.run)
        async with trio.open_nursery() as callers:
            for _ in range(SLOTS):
                callers.start_soon(_graced_call, pool, 0xff)  # never answered
        assert _free(pool) == 0
        await dialled[0].aclose()  # the peer hangs up
        await trio.testing.wait_all_tasks_blocked()
        assert _free(pool) == SLOTS and not pool._peers["b1"].kept
        assert await _graced_call(pool, 1) is False  # a new link, and a slot for it
        nursery.cancel_scope.cancel()


async def test_a_kept_slot_is_given_up_one_request_bound_after_its_caller_left(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """A peer that never answers over a live link: its kept slots are not held for ever. A
    caller that finds none free gets one once the oldest kept request's bound has passed
    (then it waits for its own answer, within the link's bound)."""
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, SlowPeer(delay=0.5), [])
        await nursery.start(pool.run)
        async with trio.open_nursery() as callers:
            for _ in range(SLOTS):
                callers.start_soon(_graced_call, pool, 0xff)
        cut = trio.current_time()
        assert _free(pool) == 0
        body = await pool.call("b1", _request(7))
        assert body == {"payload": b"\7" * 32}
        assert trio.current_time() - cut == pytest.approx(TIMEOUT + 0.5)
        assert _free(pool) == SLOTS and not pool._peers["b1"].kept
        nursery.cancel_scope.cancel()


async def test_a_caller_with_a_slot_wait_does_not_queue_behind_a_slow_peer(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """The `local` write's call: when every slot is taken (kept by requests the peer still
    works on), it waits no longer than its bound for one, then gives up with nothing sent
    (the caller hints the peer); a free slot is taken at once."""
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    peer = SlowPeer(delay=0.5)
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, peer, [])
        await nursery.start(pool.run)
        async with trio.open_nursery() as callers:
            for n in range(SLOTS):
                callers.start_soon(_graced_call, pool, n)
        began = trio.current_time()
        with pytest.raises(RequestTimeout, match=r"busy: no free slot within 0\.02 s"):
            await pool.call("b1", _request(9), shielded=True, slot_wait=GRACE)
        assert trio.current_time() - began == pytest.approx(GRACE)
        await trio.sleep(0.5)
        assert peer.served == SLOTS and peer.most == SLOTS  # the ninth was never sent
        assert await pool.call("b1", _request(9), shielded=True, slot_wait=GRACE) == \
            {"payload": b"\t" * 32}
        nursery.cancel_scope.cancel()


async def test_a_pool_shut_down_with_kept_slots_ends_cleanly(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """No task waits for a kept slot's answer: the pool's shutdown closes the link, which
    frees them, and nothing is left running or raised."""
    monkeypatch.setattr("hdsd.peers._link._MAX_IN_FLIGHT", SLOTS)
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, SlowPeer(delay=0.5), [])
        running = trio.CancelScope()

        async def run_pool() -> None:
            with running:
                await pool.run()

        nursery.start_soon(run_pool)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as callers:
            for _ in range(SLOTS):
                callers.start_soon(_graced_call, pool, 0xff)
        assert _free(pool) == 0
        running.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert _free(pool) == SLOTS and not pool._peers["b1"].kept
        nursery.cancel_scope.cancel()
