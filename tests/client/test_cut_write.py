"""A client write cut midway — the caller of a lone request cancelled while its bytes were going
out, or a write that did not finish within its bound — closes the whole connection at once,
whatever the request (a get, a bulk read, an admin call, a delete): the session closes its
stream itself, so the node sees the connection end instead of holding it (and the half-read
request on it) until its idle timeout. The other requests in flight on that connection fail with
ConnectionLost and are retried by the client on a new one. While other requests are in flight,
a caller cancelled mid-frame does not cut: its frame is finished first (bounded), and the others
carry on on the same connection.

``connect_tls`` is replaced by an in-memory pipe whose far end is served by :class:`MixedNode`
(a real server-side :class:`WireSession`), so the whole exchange runs on trio's clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import AsyncClient
from hdsd.client import Profile
from hdsd.transport import WireSession
from hdsd.transport._session import WRITE_GRACE
from hdsd.wire import (
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    Data,
    End,
    GetRequest,
    GetStart,
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
    return client_profile(tmp_path_factory.mktemp("pki"), "admin")


class MixedNode:
    """Serves gets (of :attr:`objects`) and puts, one connection after the other; the first
    connection's requests are read and never answered (they stay in flight). Records every
    connection's client end (:attr:`streams`), whether the node saw it end (:attr:`ended`),
    and the puts it read (:attr:`puts`)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.streams: list[CountingStream] = []
        self.ended: list[bool] = []
        self.puts: list[PutStart] = []
        self.silent_first = True  # the first connection's requests are never answered
        self.release: trio.Event | None = None  # set: answers wait for it
        self.held: set[str] = set()  # keys whose gets are never answered ...
        self.cancelled: list[str] = []  # ... and those of them the client cancelled
        self.unanswered = False  # set: the other requests are left unanswered (else: a bug)

    async def connect(self, nursery: trio.Nursery) -> CountingStream:
        ours, theirs = trio.testing.memory_stream_pair()
        n = len(self.streams)
        self.streams.append(CountingStream(ours))
        self.ended.append(False)
        nursery.start_soon(self.serve, theirs, n)
        return self.streams[n]

    async def serve(self, stream: trio.abc.Stream, n: int) -> None:
        session = WireSession(stream, Connection(Role.SERVER))
        await session.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1",
                                 peer="n1", window=session.conn.initial_window))
        with trio.fail_after(LIMIT):  # the caller owns the deadline
            await session.receive_hello()
        async with trio.open_nursery() as nursery:
            def on_request(msg: Message) -> None:
                inbox = session.open_inbox(msg.rid)  # type: ignore[attr-defined]
                nursery.start_soon(self.answer, session, n, msg, inbox)

            await session.run_reader(on_request)  # returns at the connection's end
            self.ended[n] = True
            nursery.cancel_scope.cancel()  # the first connection's requests wait forever

    async def answer(self, session: WireSession, n: int, msg: Message,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
        if isinstance(msg, PutStart):
            self.puts.append(msg)
            size = 0
            async for event in inbox:
                if isinstance(event, End):
                    break
                assert isinstance(event, Data)
                size += len(event.data)
                await session.consumed(msg.rid, len(event.data))
        if n == 0 and self.silent_first:
            await trio.sleep_forever()
        if isinstance(msg, GetRequest) and msg.key in self.held:
            async for event in inbox:
                if isinstance(event, Cancel):
                    self.cancelled.append(msg.key)
            await trio.sleep_forever()
        if self.release is not None:
            await self.release.wait()
        if isinstance(msg, PutStart):
            await session.send(Reply(rid=msg.rid, body=_info(msg.key, size)))
        elif isinstance(msg, GetRequest):
            data = self.objects[msg.key]
            await session.send(GetStart(rid=msg.rid, info={**_info(msg.key, len(data)),
                                                           "start": 0, "end": len(data)}))
            await session.send_body(msg.rid, data)
            await session.send(End(rid=msg.rid))
        elif self.unanswered:
            await trio.sleep_forever()
        else:
            raise AssertionError(f"not scripted: {type(msg).__name__}")


def _info(key: str, size: int) -> dict[str, Any]:
    return {"bucket": "b", "key": key, "version": "v1", "hlc": 1, "node": "n1", "size": size,
            "content_hash": "00", "deleted": False, "metadata": {}}


async def _get_many(client: AsyncClient) -> None:
    async for _ in client.get_many([("b", "k", None)]):
        pass


CALLS: dict[str, Callable[[AsyncClient], Awaitable[object]]] = {
    "get": lambda client: client.get("b", "k"),
    "get_many": _get_many,
    "admin": lambda client: client.tenant_list(),
    "delete": lambda client: client.delete("b", "k"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_request_whose_write_is_cut_closes_its_connection_at_once(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    node = MixedNode()
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            await client._connected()
            [stream] = node.streams
            stream.hang = True  # the request's write stays in progress ...
            scope = trio.CancelScope()

            async def request() -> None:
                with scope:
                    await CALLS[call](client)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
                await trio.testing.wait_all_tasks_blocked()
                assert stream.writes == 2  # (the Hello, then the request's)
                scope.cancel()  # ... until its caller gives up
            assert scope.cancelled_caught
            # Its stream is closed by then (not later, by the reader or the next request):
            # the node sees the connection end as soon as it reads again.
            assert stream.closed
            await trio.testing.wait_all_tasks_blocked()
            assert node.ended == [True]


async def test_requests_in_flight_on_a_cut_connection_are_retried_and_succeed(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = MixedNode()
    node.objects["k"] = b"the object's bytes"
    got: dict[str, object] = {}
    with trio.fail_after(10 * WRITE_GRACE):
        async with client_for(node, profile, monkeypatch, retries=2) as client:
            async def get() -> None:
                got["get"] = await client.get("b", "k")

            async def put() -> None:
                got["put"] = (await client.put("b", "new", b"a new object")).size

            cut = trio.CancelScope()

            async def stat() -> None:
                with cut:
                    await client.stat("b", "k")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(get)
                nursery.start_soon(put)
                await trio.testing.wait_all_tasks_blocked()
                [first] = node.streams  # both sent, waiting for their answers
                assert len(node.puts) == 1
                first.hang = True  # the stat's write never finishes: the node stopped reading
                nursery.start_soon(stat)
                await trio.testing.wait_all_tasks_blocked()
                cancelled_at = trio.current_time()
                cut.cancel()  # its caller gives up; the write, started, goes on ...
                await trio.testing.wait_all_tasks_blocked()
                assert not first.closed
            # ... until its bound: then the stuck connection is cut.
            assert cut.cancelled_caught and first.closed
            assert trio.current_time() - cancelled_at >= WRITE_GRACE
    # The get and the put were answered on a second connection, as on a fresh one; the put
    # said it was a retry (the node completes the first attempt, if any, not a second one).
    assert got == {"get": b"the object's bytes", "put": len(b"a new object")}
    assert len(node.streams) == 2 and node.ended[0]
    assert [p.request_id for p in node.puts] == [node.puts[0].request_id] * 2
    assert [p.retry for p in node.puts] == [False, True]


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_caller_cancelled_mid_frame_does_not_cut_the_others(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    # Another request waits for its answer while a caller is cancelled with its frame half
    # written: the frame is finished, the caller gets Cancelled, and the other request is
    # answered on the same connection (no retries allowed: a cut would fail it).
    node = MixedNode()
    node.silent_first = False
    node.objects["k"] = b"the object's bytes"
    node.release = trio.Event()
    node.unanswered = True
    got: list[bytes] = []
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            await client._connected()
            [stream] = node.streams

            async def other() -> None:
                got.append(await client.get("b", "k"))

            cut = trio.CancelScope()

            async def cancelled() -> None:
                with cut:
                    await CALLS[call](client)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                await trio.testing.wait_all_tasks_blocked()
                stream.hold = trio.Event()  # the socket takes the next write slowly ...
                nursery.start_soon(cancelled)
                await trio.testing.wait_all_tasks_blocked()
                assert stream.writes == 3  # (the Hello, the other get, this request)
                cut.cancel()  # ... and its caller gives up meanwhile
                await trio.testing.wait_all_tasks_blocked()
                assert not stream.closed
                stream.hold.set()  # the frame goes out whole
                await trio.testing.wait_all_tasks_blocked()
                assert cut.cancelled_caught
                node.release.set()
            assert got == [b"the object's bytes"]
            assert node.streams == [stream] and not stream.closed and not node.ended[0]


async def test_a_get_cancelled_before_its_answer_is_cancelled_on_the_node(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = MixedNode()
    node.silent_first = False
    node.held.add("slow")
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with trio.move_on_after(0.5) as scope:
                await client.get("b", "slow")
            assert scope.cancelled_caught
            while not node.cancelled:
                await trio.sleep(0.01)
            assert node.cancelled == ["slow"]
            node.objects["k"] = b"still fine"
            assert await client.get("b", "k") == b"still fine"
            assert len(node.streams) == 1
