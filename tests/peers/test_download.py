"""PeerPool.download against a peer at the other end of an in-memory stream (the TLS dial
replaced): the body handed over frame by frame, credit granted back, a download abandoned
midway cancelled on the wire, and a peer that predates downloads (it closes the link over
the unknown frame) remembered so the next fetches go chunk by chunk."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost, NotFound
from hdsd.cluster import Layout, NodeInfo
from hdsd.peers import PeerPool
from hdsd.transport import Identity, WireSession
from hdsd.wire import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    UNSENT,
    Cancel,
    Connection,
    Data,
    End,
    ErrorReply,
    FetchChunks,
    GetStart,
    Goodbye,
    Hello,
    Message,
    Role,
)
from hdsd.wire._frames import FrameReader, encode_frame
from hdsd.wire._registry import encode_body

CHUNK = [["t", b"c" * 32]]
Serve = Callable[[WireSession, Message, trio.MemoryReceiveChannel[Message]], Awaitable[None]]


def _pool(monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, serve: Serve | None,
          *, old: bool = False) -> PeerPool:
    """A pool whose dial to b1 reaches a peer in this process: *serve* answers each request
    (with its inbox), or, *old*, the peer closes the link at any frame it does not know."""

    async def dial(host: str, port: int, *args: object, **kwargs: object) -> Any:
        ours, theirs = trio.testing.memory_stream_pair()
        ours.getpeercert = lambda binary_form=False: b""  # type: ignore[attr-defined]
        nursery.start_soon(_peer, theirs, serve, old)
        return ours

    monkeypatch.setattr("hdsd.peers._link.connect_tls", dial)
    monkeypatch.setattr("hdsd.peers._link.identity_from_der",
                        lambda der: Identity("node", "b1", "b", None, None, "c"))
    layout = Layout(sites=("a", "b"), nodes=(NodeInfo("a1", "a", "127.0.0.1", 1),
                                             NodeInfo("b1", "b", "127.0.0.1", 2)))
    return PeerPool(name="a1", cluster_id="c", layout=layout,
                    ssl_context=ssl.create_default_context(), request_timeout=5)


async def _peer(stream: trio.abc.Stream, serve: Serve | None, old: bool) -> None:
    if old:
        # A node older than FetchChunks: its Connection refuses the unknown frame type with
        # a protocol Goodbye and closes (its frames are read here as it reads them).
        conn = Connection(Role.SERVER)
        await stream.send_all(conn.send(Hello(PROTOCOL_VERSION, "c", "b1", conn.initial_window)))
        frames = FrameReader(MAX_FRAME)
        while (data := await stream.receive_some()) and not _has_code(frames, data, 0x93):
            pass
        await stream.send_all(encode_frame(*encode_body(
            Goodbye("protocol", "unknown frame type 0x93")), MAX_FRAME))
        await stream.aclose()
        return
    session = WireSession(stream, Connection(Role.SERVER))
    await session.send(Hello(PROTOCOL_VERSION, "c", "b1", session.conn.initial_window))
    assert serve is not None
    async with trio.open_nursery() as requests:
        def on_request(msg: Message) -> None:
            if isinstance(msg, Hello):
                return  # the dialer's
            inbox = session.open_inbox(msg.rid)  # type: ignore[attr-defined]
            requests.start_soon(serve, session, msg, inbox)
        await session.run_reader(on_request)


def _has_code(frames: FrameReader, data: bytes, code: int) -> bool:
    frames.feed(data)
    while (frame := frames.next_frame()) is not None:
        if frame[0] == code:
            return True
    return False


async def test_a_download_hands_over_its_body_and_grants_credit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    records = [bytes([i]) * (3 << 20) for i in range(4)]  # 12 MiB: beyond one window

    async def serve(session: WireSession, msg: Message, inbox: Any) -> None:
        assert isinstance(msg, FetchChunks)
        await session.send(GetStart(msg.rid, {"sizes": [len(r) for r in records]}))
        for r in records:
            await session.send_whole(msg.rid, r)
        await session.send(End(msg.rid))

    got: list[bytes] = []
    starts: list[Any] = []
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, serve)
        await nursery.start(pool.run)
        await pool.download("b1", FetchChunks(UNSENT, "l", CHUNK), starts.append, got.append)
        assert pool.downloads("b1")
        nursery.cancel_scope.cancel()
    assert starts == [{"sizes": [3 << 20] * 4}]
    assert got == records  # one frame each: the window came back as it was consumed


async def test_an_error_before_the_body_is_raised_typed(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    async def serve(session: WireSession, msg: Message, inbox: Any) -> None:
        await session.send(ErrorReply(msg.rid, "not_found", "no such chunk"))  # type: ignore[attr-defined]

    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, serve)
        await nursery.start(pool.run)
        with pytest.raises(NotFound, match="no such chunk"):
            await pool.download("b1", FetchChunks(UNSENT, "l", CHUNK), print, print)
        nursery.cancel_scope.cancel()


async def test_a_download_abandoned_midway_is_cancelled_on_the_wire(
        monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[Message] = []

    async def serve(session: WireSession, msg: Message, inbox: Any) -> None:
        assert isinstance(msg, FetchChunks)
        await session.send(GetStart(msg.rid, {"sizes": [10, 10]}))
        await session.send(Data(msg.rid, b"x" * 10))
        heard.append(await inbox.receive())  # the requester's Cancel, not a hang
        await session.send(Cancel(msg.rid))

    def refuse(data: bytes) -> None:
        raise ValueError("the receiver gives up")

    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, serve)
        await nursery.start(pool.run)
        with pytest.raises(ValueError, match="gives up"):
            await pool.download("b1", FetchChunks(UNSENT, "l", CHUNK), lambda info: None,
                                refuse)
        with trio.fail_after(5):
            while not heard:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [type(m) for m in heard] == [Cancel]


async def test_a_peer_that_predates_downloads_is_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with trio.open_nursery() as nursery:
        pool = _pool(monkeypatch, nursery, None, old=True)
        await nursery.start(pool.run)
        assert pool.downloads("b1")
        with pytest.raises(ConnectionLost):
            await pool.download("b1", FetchChunks(UNSENT, "l", CHUNK), print, print)
        assert not pool.downloads("b1")
        nursery.cancel_scope.cancel()
