"""AsyncClient.get and open_get against a scripted node over an in-memory stream: the client's
deadline for each frame of a get (its GetStart, then every piece of its body) is kept by the
client's one deadline task, and holds as a cancel scope around each wait did.

``connect_tls`` is replaced by an in-memory pipe whose far end is served by :class:`GetNode`
(a real server-side :class:`WireSession`), so the whole exchange runs on trio's clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import RequestTimeout
from hdsd.client import Profile
from hdsd.transport import WireSession
from hdsd.wire import (
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    End,
    GetMany,
    GetRequest,
    GetStart,
    Hello,
    Message,
    Role,
)
from tests.client.scripted import CountingStream, client_for, client_profile

LIMIT = 10


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    return client_profile(tmp_path_factory.mktemp("pki"), "reader")


class GetNode:
    """Answers gets with *pieces* (each sent *gaps[i]* seconds after the previous frame),
    then End. ``mute``: never answers; ``stall_after``: sends that many pieces, then nothing
    (it records the client's Cancel in :attr:`cancelled`)."""

    def __init__(self, pieces: list[bytes], *, gaps: list[float] | None = None,
                 mute: bool = False, stall_after: int | None = None) -> None:
        self.pieces = pieces
        self.gaps = gaps or [0.0] * len(pieces)
        self.mute = mute
        self.stall_after = stall_after
        self.cancelled: list[int] = []
        self.client_stream: CountingStream | None = None
        self.session: WireSession | None = None

    async def connect(self, nursery: trio.Nursery) -> trio.abc.Stream:
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
                assert isinstance(msg, (GetRequest, GetMany))
                nursery.start_soon(self.get, session, msg, session.open_inbox(msg.rid))

            await session.run_reader(on_request)

    async def get(self, session: WireSession, msg: GetRequest | GetMany,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
        if self.mute:
            await trio.sleep_forever()
        size = sum(len(p) for p in self.pieces)
        # A GetMany of one item: that item is the pieces' bytes.
        info = _info(msg, size) if isinstance(msg, GetRequest) else {
            "items": [{"version": "v1", "size": size, "content_hash": "00"}]}
        await session.send(GetStart(rid=msg.rid, info=info))
        for n, (piece, gap) in enumerate(zip(self.pieces, self.gaps, strict=True)):
            if n == self.stall_after:
                async for event in inbox:  # ends when the client's Cancel closes it
                    assert isinstance(event, Cancel)
                self.cancelled.append(msg.rid)
                return
            await trio.sleep(gap)
            await session.send_body(msg.rid, piece)
        await session.send(End(rid=msg.rid))


def _info(msg: GetRequest, size: int) -> dict[str, Any]:
    return {"bucket": msg.bucket, "key": msg.key, "version": "v1", "hlc": 1, "node": "n1",
            "size": size, "content_hash": "00", "deleted": False, "metadata": {},
            "start": 0, "end": size}


async def test_a_small_get_is_its_node_s_bytes(profile: Profile,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    node = GetNode([b"four kib, or so"])
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            assert await client.get("b", "k") == b"four kib, or so"
            assert client._answers.waits == set()


async def test_a_get_without_its_start_times_out(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = GetNode([b"never sent"], mute=True)
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimeout, match="no answer from the node within 30 s"):
                await client.get("b", "k")
            assert trio.current_time() - start == pytest.approx(30)
            assert client._answers.waits == set()
            # The connection stays usable: the late request was only forgotten.
            node.mute = False
            assert await client.get("b", "k") == b"never sent"


async def test_a_body_that_stalls_times_out_and_is_cancelled(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    node = GetNode([b"a" * 1000, b"b" * 1000, b"c" * 1000], stall_after=1)
    got: list[bytes] = []
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            with pytest.raises(RequestTimeout, match="no answer from the node within 30 s"):
                async with client.open_get("b", "k") as stream:
                    async for piece in stream:
                        got.append(piece)
                        start = trio.current_time()
            assert trio.current_time() - start == pytest.approx(30)
            assert client._answers.waits == set()
            await trio.sleep(1)  # the node reads the Cancel
    assert got == [b"a" * 1000]
    assert len(node.cancelled) == 1


@pytest.mark.parametrize("bulk", [False, True])
async def test_a_stalled_download_whose_cancel_cannot_be_written_closes_its_connection(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock, bulk: bool) -> None:
    # The body stalls; the client gives up at its timeout and sends a Cancel, whose write
    # stays in progress (a full socket) until its 2 s bound cuts it: nothing more may be
    # written on the connection. It is closed then, so that the node forgets the download at
    # once instead of keeping the connection (and the rid) until its idle timeout.
    node = GetNode([b"a" * 1000, b"b" * 1000], stall_after=1)
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client, \
                trio.open_nursery() as nursery:
            async def stall_writes() -> None:
                await trio.sleep(10)  # the first piece is in, the second never comes
                assert node.client_stream is not None
                node.client_stream.hang = True

            nursery.start_soon(stall_writes)
            with pytest.raises(RequestTimeout):
                if bulk:
                    async for _ in client.get_many([("b", "k", None)]):
                        pass
                else:
                    async with client.open_get("b", "k") as stream:
                        async for _ in stream:
                            pass
            assert node.client_stream is not None and node.client_stream.closed
            await trio.testing.wait_all_tasks_blocked()
            assert node.session is not None and node.session.closed


async def test_each_frame_of_a_body_has_its_own_deadline(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    # Three pieces 20 s apart under a 30 s timeout: the body takes 60 s in all, each frame
    # comes within its own 30 s, so the get completes (the deadline keeper, woken at a
    # passed deadline, must leave the later ones waiting).
    pieces = [b"x" * 100, b"y" * 200, b"z" * 300]
    node = GetNode(pieces, gaps=[20.0, 20.0, 20.0])
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            assert await client.get("b", "k") == b"".join(pieces)
            assert trio.current_time() - start == pytest.approx(60)
            assert client._answers.waits == set()


async def test_a_bulk_download_that_stalls_times_out_and_is_cancelled(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    # GetMany's frames wait under the same deadline as a get's: its GetStart, then each
    # piece of its body.
    node = GetNode([b"a" * 1000, b"b" * 1000], mute=True)
    with trio.fail_after(3600):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimeout, match="no answer from the node within 30 s"):
                async for _ in client.get_many([("b", "k", None)]):
                    pass
            assert trio.current_time() - start == pytest.approx(30)
            node.mute, node.stall_after = False, 1
            start = trio.current_time()
            with pytest.raises(RequestTimeout, match="no answer from the node within 30 s"):
                async for _ in client.get_many([("b", "k", None)]):
                    pass
            assert trio.current_time() - start == pytest.approx(30)
            assert client._answers.waits == set()
            await trio.sleep(1)  # the node reads the Cancel
    assert len(node.cancelled) == 1
    node.stall_after = None
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch, timeout=30) as client:
            got = [f async for f in client.get_many([("b", "k", None)])]
    assert [f.data for f in got] == [b"a" * 1000 + b"b" * 1000]


async def test_get_to_file_writes_a_streamed_body(
        profile: Profile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pieces = [bytes([n]) * 5000 for n in range(4)]
    node = GetNode(pieces)
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            info = await client.get_to_file("b", "k", tmp_path / "out")
    assert info.size == 20000
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)
