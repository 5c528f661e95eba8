"""AsyncClient.get retried past its first answer: the connection lost in the middle of the body
(nothing handed to the caller yet), the whole get is asked again — of the version the first
answer named, so a version written meanwhile is not mixed in nor silently returned instead.

``connect_tls`` is replaced by an in-memory pipe whose far end is served by
:class:`VersionedNode` (a real server-side :class:`WireSession`), on trio's clock.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost, NotFound, RequestTimeout
from hdsd.client import Profile
from hdsd.transport import WireSession
from hdsd.wire import (
    PROTOCOL_VERSION,
    Connection,
    End,
    ErrorReply,
    GetRequest,
    GetStart,
    Hello,
    Message,
    Role,
)
from tests.client.scripted import CountingStream, client_for, client_profile

LIMIT = 10
V1 = b"one" * 40_000
V2 = b"two" * 50_000


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    return client_profile(tmp_path_factory.mktemp("pki"), "reader")


class VersionedNode:
    """Serves gets of key ``k`` (versions :attr:`versions`, the current one last). On the
    first connection it sends the GetStart and a first piece of the body, then a new version
    is written and the connection ends. Records each get's (version, start, end)."""

    def __init__(self) -> None:
        self.versions: dict[str, bytes] = {"v1": V1}
        self.asked: list[tuple[str | None, int | None, int | None]] = []
        self.streams: list[CountingStream] = []
        self.mid_body_error: str | None = None  # set: the first get ends so, not cut

    async def connect(self, nursery: trio.Nursery) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(self.serve, theirs, len(self.streams))
        self.streams.append(CountingStream(ours))
        return self.streams[-1]

    async def serve(self, stream: trio.abc.Stream, n: int) -> None:
        session = WireSession(stream, Connection(Role.SERVER))
        await session.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1",
                                 peer="n1", window=session.conn.initial_window))
        with trio.fail_after(LIMIT):  # the caller owns the deadline
            await session.receive_hello()
        async with trio.open_nursery() as nursery:
            def on_request(msg: Message) -> None:
                assert isinstance(msg, GetRequest)
                session.open_inbox(msg.rid)
                nursery.start_soon(self.get, session, msg, n)

            # The first connection's end is ours (its abort): its reader may meet it closed.
            with contextlib.suppress(ConnectionLost):
                await session.run_reader(on_request)
            nursery.cancel_scope.cancel()

    async def get(self, session: WireSession, msg: GetRequest, n: int) -> None:
        self.asked.append((msg.version, msg.start, msg.end))
        version = msg.version or list(self.versions)[-1]
        if version not in self.versions:
            await session.send(ErrorReply(rid=msg.rid, code="not_found",
                                          message=f"no version {version}"))
            return
        data = self.versions[version]
        start = msg.start or 0
        end = len(data) if msg.end is None else msg.end
        await session.send(GetStart(rid=msg.rid, info=_info(msg.key, version, data,
                                                            start, end)))
        if n == 0:
            await session.send_body(msg.rid, data[start:start + 1000])
            await trio.testing.wait_all_tasks_blocked()  # the client has read it
            self.versions["v2"] = V2  # written meanwhile: now the current version
            if self.mid_body_error is not None:
                await session.send(ErrorReply(rid=msg.rid, code=self.mid_body_error,
                                              message="the store is too slow"))
                return
            await session.abort()  # the connection is lost mid-body
            return
        await session.send_body(msg.rid, data[start:end])
        await session.send(End(rid=msg.rid))


def _info(key: str, version: str, data: bytes, start: int, end: int) -> dict[str, Any]:
    return {"bucket": "b", "key": key, "version": version, "hlc": int(version[1:]),
            "node": "n1", "size": len(data), "content_hash": "00", "deleted": False,
            "metadata": {}, "start": start, "end": end}


@pytest.mark.parametrize("window", [(None, None), (5, 20_000)])
async def test_a_get_lost_mid_body_is_retried_of_the_same_version(
        profile: Profile, monkeypatch: pytest.MonkeyPatch,
        window: tuple[int | None, int | None]) -> None:
    offset, length = window
    node = VersionedNode()
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch, retries=2) as client:
            got = await client.get("b", "k", offset=offset, length=length)
    first = offset or 0
    assert got == V1[first:None if length is None else first + length]
    end = None if length is None else first + length
    # Asked again of v1, the version the first answer named, though v2 is current by then.
    assert node.asked == [(None, offset, end), ("v1", offset, end)]
    assert len(node.streams) == 2


async def test_a_get_whose_version_went_meanwhile_fails_not_found(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = VersionedNode()
    original = node.get

    async def get(session: WireSession, msg: GetRequest, n: int) -> None:
        if n == 1:
            del node.versions["v1"]  # removed (say, by its retention) before the retry
        await original(session, msg, n)

    node.get = get  # type: ignore[method-assign]
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch, retries=2) as client:
            with pytest.raises(NotFound):
                await client.get("b", "k")
    assert node.asked == [(None, None, None), ("v1", None, None)]


async def test_without_retries_a_get_lost_mid_body_fails(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    node = VersionedNode()
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch) as client:
            with pytest.raises(ConnectionLost):
                await client.get("b", "k")
    assert len(node.asked) == 1


async def test_a_node_too_slow_mid_body_is_not_asked_again(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its RequestTimeout is retryable before the body; in the body, the whole read would be
    # asked again of a node that just said it cannot keep up: the caller decides.
    node = VersionedNode()
    node.mid_body_error = RequestTimeout.code
    with trio.fail_after(LIMIT):
        async with client_for(node, profile, monkeypatch, retries=2) as client:
            with pytest.raises(RequestTimeout, match="too slow"):
                await client.get("b", "k")
    assert len(node.asked) == 1
