"""AsyncClient.put against a scripted node over an in-memory stream: a small put is one write
and one reply, with no helper task; larger or streamed bodies keep the credit-driven path.

``connect_tls`` is replaced by an in-memory pipe whose far end is served by :class:`FakeNode`
(a real server-side :class:`WireSession`), so the whole exchange runs on trio's clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import (
    Client,
    ConnectionLost,
    HdsdError,
    InvalidArgument,
    PermissionDenied,
    RequestTimeout,
)
from hdsd.client import Profile
from hdsd.transport import WireSession
from hdsd.wire import (
    PROTOCOL_VERSION,
    Connection,
    Data,
    End,
    ErrorReply,
    Hello,
    Message,
    PutStart,
    Reply,
    Role,
)
from tests.client.scripted import CountingStream, client_for, client_profile

LIMIT = 10


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    return client_profile(tmp_path_factory.mktemp("pki"), "writer")


class FakeNode:
    """Serves puts: ``mode`` "store" drains the body and replies (``delay`` seconds later),
    "refuse" answers PutStart at once with an ErrorReply ("refuse_late": once the body's first
    Data frame is in), "mute" reads everything and never
    answers (other requests than puts included), "drop" closes the connection once a put's
    body is in or another request arrives."""

    def __init__(self, mode: str = "store") -> None:
        self.mode = mode
        self.delay = 0.0
        self.bodies: list[bytes] = []
        self.request_ids: list[bytes] = []
        self.client_stream: CountingStream | None = None
        self.session: WireSession | None = None

    async def connect(self, nursery: trio.Nursery) -> CountingStream:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(self.serve, theirs)
        self.client_stream = CountingStream(ours)
        return self.client_stream

    async def serve(self, stream: trio.abc.Stream) -> None:
        session = self.session = WireSession(stream, Connection(Role.SERVER))
        await session.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1",
                                 peer="n1", window=session.conn.initial_window))
        with trio.fail_after(LIMIT):  # the caller owns the deadline
            await session.receive_hello()
        async with trio.open_nursery() as nursery:
            def on_request(msg: Message) -> None:
                if self.mode == "mute" and not isinstance(msg, PutStart):
                    return
                if self.mode == "drop" and not isinstance(msg, PutStart):
                    nursery.start_soon(session.aclose)
                    return
                assert isinstance(msg, PutStart)
                self.request_ids.append(msg.request_id)
                nursery.start_soon(self.put, session, msg, session.open_inbox(msg.rid))

            try:
                await session.run_reader(on_request)
            except ConnectionLost:
                assert self.mode == "drop"  # it closed its own end under the reader

    async def put(self, session: WireSession, msg: PutStart,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
        refusal = ErrorReply(rid=msg.rid, code="permission_denied", message="no writes for you")
        if self.mode == "refuse":
            await session.send(refusal)
        body = bytearray()
        async for event in inbox:  # ends at End, or when a Cancel closes the inbox
            if isinstance(event, End):
                break
            assert isinstance(event, Data)
            body += event.data
            await session.consumed(msg.rid, len(event.data))
            if self.mode == "refuse_late" and len(body) == len(event.data):
                await session.send(refusal)
        self.bodies.append(bytes(body))
        session.close_inbox(msg.rid)
        if self.mode == "store":
            await trio.sleep(self.delay)
            await session.send(Reply(rid=msg.rid, body=_info(msg, len(body))))
        elif self.mode == "drop":
            await session.aclose()


def _info(msg: PutStart, size: int) -> dict[str, Any]:
    return {"bucket": msg.bucket, "key": msg.key, "version": "v1", "hlc": 1, "node": "n1",
            "size": size, "content_hash": "00", "deleted": False}


async def test_small_put_is_one_write(profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode()
    data = os.urandom(4096)
    seen: list[int] = []
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            await client.put("b", "first", b"warm")  # connects (Hello is a write of its own)
            assert node.client_stream is not None
            before = node.client_stream.writes
            info = await client.put("b", "k", data, progress=seen.append)
            assert node.client_stream.writes - before == 1
    assert (info.key, info.size) == ("k", 4096)
    assert node.bodies[-1] == data
    assert seen == [4096]


async def test_request_ids_ascend_with_time_and_are_unique(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode()
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            for i in range(50):
                await client.put("b", f"k{i}", b"x")
            await client.put("b", "mine", b"x", request_id=b"r" * 16)
    *made, given = node.request_ids
    assert given == b"r" * 16  # the caller's own id is sent as it is
    assert all(len(r) == 16 for r in made) and len(set(made)) == len(made)
    # Milliseconds first: one client's ids land at the end of a node's request-id index.
    millis = [int.from_bytes(r[:6], "big") for r in made]
    assert millis == sorted(millis)
    assert abs(millis[-1] - time.time_ns() // 1_000_000) < 60_000


async def test_empty_put_sends_no_data_frame(profile: Profile,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode()
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            info = await client.put("b", "empty", b"")
    assert info.size == 0
    assert node.bodies == [b""]


async def test_large_and_streamed_puts_keep_the_credit_path(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode()
    big = os.urandom(3 * 1024 * 1024 + 5)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i]) * 1000

    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            await client.put("b", "warm", b"x")
            assert node.client_stream is not None
            before = node.client_stream.writes
            await client.put("b", "big", big)
            assert node.client_stream.writes - before > 1
            await client.put("b", "streamed", pieces())
    assert node.bodies[1:] == [big, b"\0" * 1000 + b"\1" * 1000 + b"\2" * 1000]


async def test_small_put_refused_early(profile: Profile,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode(mode="refuse")
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with pytest.raises(PermissionDenied, match="no writes for you"):
                await client.put("b", "k", b"data")


async def test_small_put_without_answer_times_out(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = FakeNode(mode="mute")
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimeout):
                await client.put("b", "k", b"data")
            assert trio.current_time() - start == pytest.approx(30)
    assert node.bodies == [b"data"]  # the body was complete: only the answer was missing



async def test_other_requests_without_answer_time_out(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = FakeNode(mode="mute")
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimeout, match="no answer from the node within 30 s"):
                await client.delete("b", "k")
            assert trio.current_time() - start == pytest.approx(30)
            assert client._answers.waits == set()


@pytest.mark.parametrize("size", [4, 2 << 20], ids=["small", "streamed"])
async def test_a_put_whose_connection_drops_while_it_waits_sees_connection_lost(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    # The answer's one-message inbox, closed with the session, wakes the put as lost (an
    # Unavailable, what the client retries), never as a timeout or a bare EndOfChannel.
    node = FakeNode(mode="drop")
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with pytest.raises(ConnectionLost, match="lost during the"):
                await client.put("b", "k", os.urandom(size))
            assert client._answers.waits == set()
    assert [len(b) for b in node.bodies] == [size]


async def test_a_call_whose_connection_drops_while_it_waits_sees_connection_lost(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode(mode="drop")
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with pytest.raises(ConnectionLost, match="lost during the request"):
                await client.stat("b", "k")
            assert client._answers.waits == set()


async def test_an_answer_within_its_deadline_is_taken_after_an_earlier_deadline_passed(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    # The client's deadline keeper sleeps until the first put's deadline (t=30) although that
    # put was answered at once; waking then, it must leave the second put (deadline t=50)
    # waiting, and that put's answer at t=45 is its result.
    node = FakeNode()
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            await client.put("b", "first", b"x")
            await trio.sleep(20)
            node.delay = 25
            info = await client.put("b", "second", b"y")
            assert trio.current_time() - start == pytest.approx(45)
            assert client._answers.waits == set()
    assert info.key == "second"


async def test_a_lowered_timeout_holds_while_a_longer_one_waits(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = FakeNode(mode="mute")
    ended: dict[str, float] = {}

    async def put(key: str) -> None:
        with pytest.raises(RequestTimeout):
            await client.put("b", key, b"x")
        ended[key] = trio.current_time() - start

    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=100) as client, \
                trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(put, "long")
            await trio.sleep(1)
            client.timeout = 10  # the keeper sleeps until t=100: brought forward to t=11
            nursery.start_soon(put, "short")
    assert ended == {"short": pytest.approx(11), "long": pytest.approx(100)}
    assert client._answers.waits == set()


async def test_a_streamed_put_refused_early_is_cancelled_so_the_node_forgets_it(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    # The refusal arrives while the body is still being sent: its first piece went out whole,
    # the next is slow to come. (It used to come at a random point of an endless body, and
    # once, under load, in the middle of a write: that case is the test below.)
    node = FakeNode(mode="refuse_late")

    async def endless() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await trio.sleep_forever()

    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with pytest.raises(PermissionDenied):
                await client.put("b", "k", endless())
            session = client._session
            assert session is not None and not session.conn.in_flight(1)
            # The node's connection forgets the rid too (it did at the client's Cancel; it
            # would wait for End or Cancel forever otherwise, draining what still comes).
            assert node.session is not None
            while node.session.conn.in_flight(1):
                await trio.sleep(0.01)
            assert not session.closed and not node.session.closed  # the connection stays


@pytest.mark.parametrize("cut", ["body", "cancel"])
async def test_a_refused_put_whose_write_was_cut_closes_its_connection_so_the_node_forgets_it(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    """A write still in progress when the client stops it — a Data frame's, when the node's
    early refusal stops the body's sender (``body``), or the Cancel's own, when
    ``cancel_abandoned`` gives up after its 2 s (``cancel``) — leaves part of a frame unsent:
    nothing more may be written on the connection, the Cancel that frees the rid on the node
    included. The client closes the connection then, so that the node drops the half-read
    upload at once; it used to keep it (the rid in flight, the connection open) until its
    idle timeout, the race this test's earlier form met once under load."""
    node = FakeNode(mode="refuse" if cut == "body" else "refuse_late")
    sessions: list[WireSession | None] = []

    async def source() -> AsyncIterator[bytes]:
        stream = node.client_stream
        assert stream is not None
        sessions.append(client._session)  # the put's
        stream.hang = cut == "body"  # this piece's write is in progress at the refusal
        yield b"x" * 1000
        stream.hang = True  # the next write (the Cancel's) is cut by its 2 s bound
        await trio.sleep_forever()

    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            # The caller's generator is the caller's to close (the client stops iterating it).
            async with aclosing(source()) as body:
                with pytest.raises(PermissionDenied):
                    await client.put("b", "k", body)
            [session] = sessions
            assert session is not None and session.closed  # a write was cut: it is gone
            assert node.session is not None
            while not node.session.closed:
                await trio.sleep(0.01)


async def test_a_str_body_is_refused_unless_it_names_a_file(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    node = FakeNode()
    src = tmp_path / "report.txt"
    src.write_bytes(b"from the file")
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            # Text that is no file: a clear error, before anything is sent. (mypy refuses a
            # str already: the ignores below are the point of the test.)
            with pytest.raises(InvalidArgument, match=r"pass bytes .* or a pathlib\.Path"):
                await client.put("b", "k", "some text")  # type: ignore[arg-type]
            assert node.client_stream is None  # not even connected
            with pytest.raises(TypeError):  # what Python code expects for a wrong type
                await client.put("b", "k", str(tmp_path / "missing"))  # type: ignore[arg-type]
            # A Path is a file; so, deprecated, is a str naming one.
            await client.put("b", "path", src)
            with pytest.warns(DeprecationWarning, match=r"pass pathlib\.Path") as warned:
                await client.put("b", "str", str(src))  # type: ignore[arg-type]
    assert node.bodies == [b"from the file", b"from the file"]
    assert [w.filename for w in warned] == [__file__]  # it names the caller's line


async def test_a_file_body_is_read_a_few_pieces_per_thread_hop(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A hop per MiB read (trio's file object) was a third of the client's CPU per MiB put.
    node = FakeNode()
    body = os.urandom(5 * 1024 * 1024 + 3)
    src = tmp_path / "blob"
    src.write_bytes(body)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    hops: list[object] = []
    real = trio.to_thread.run_sync

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await real(fn, *args, **kwargs)

    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            await client.put("b", "warm", b"x")  # connected: only the body's hops count
            monkeypatch.setattr(trio.to_thread, "run_sync", counting)
            await client.put("b", "file", src)
            file_hops = len(hops)
            await client.put("b", "empty", empty)
    # The open, two reads of up to 4 MiB, the read that finds the end (one hop per MiB: 9).
    assert file_hops <= 4
    assert node.bodies[1:] == [body, b""]


def test_the_blocking_client_checks_in_the_callers_thread(profile: Profile,
                                                          tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with Client(profile, retries=0, timeout=5) as c:  # nothing listens on its endpoint
        with pytest.raises(InvalidArgument, match="which is not a file"):
            c.put("b", "k", "hello")  # type: ignore[arg-type]
        with pytest.warns(DeprecationWarning) as warned, pytest.raises(HdsdError):
            # Accepted as a path; then the connection fails.
            c.put("b", "k", str(src))  # type: ignore[arg-type]
    assert [w.filename for w in warned] == [__file__]
