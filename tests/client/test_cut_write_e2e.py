"""Against real node processes over real TLS: a client write cut midway closes the connection
at once, and the node sees it gone — long before its idle timeout (set to an hour here), which
is when it used to let go of a connection left holding half a frame."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hdsd import AsyncClient
from hdsd.transport import _session, _tlsread
from hdsd.transport._tlsread import Sendable, Sender
from tests.helpers.cluster import NodeProcess, init_cluster

pytestmark = pytest.mark.e2e

LIMIT = 60.0  # a hang guard for the whole test on a loaded machine; nothing is timed
IDLE_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cut")
    profile = init_cluster(root)
    for config in root.glob("*/node.toml"):
        text = config.read_text()
        text = text.replace("# [limits]", "[limits]", 1)
        text = re.sub(r"^# idle_timeout_s = \d+", f"idle_timeout_s = {IDLE_TIMEOUT_S}", text,
                      flags=re.M)
        assert f"idle_timeout_s = {IDLE_TIMEOUT_S}" in text
        config.write_text(text)
    nodes = [NodeProcess(root / f"{site}-n1" / "node.toml").start() for site in ("dc2", "dc1")]
    try:
        yield profile
    finally:
        for node in nodes:
            node.kill()


class HalfWrites:
    """Wraps the sessions' TLS sender: once armed, a write sends the first half of its bytes
    (the node reads half a frame) and then waits, as a write into a socket that stopped
    draining does, until its caller gives up."""

    def __init__(self) -> None:
        self.armed = False
        self.cut = 0

    def wrap(self, real: Sender) -> Sender:
        async def send_all(data: Sendable) -> None:
            if not self.armed:
                await real(data)
                return
            self.armed = False
            pieces = data if isinstance(data, tuple) else (data,)
            whole = b"".join(bytes(piece) for piece in pieces)
            await real(whole[:len(whole) // 2])
            self.cut += 1
            await trio.sleep_forever()
        return send_all


async def _connections(observer: AsyncClient) -> int:
    """The node's open client sessions (the peer links are counted apart)."""
    status: Any = await observer.status()
    return int(status["limits"]["client_sessions"]["open"])


async def test_the_node_sees_a_cut_connection_end_at_once(
        cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    half = HalfWrites()
    real_sender = _tlsread.tls_sender
    monkeypatch.setattr(_session, "tls_sender", lambda stream: half.wrap(real_sender(stream)))
    with trio.fail_after(LIMIT):
        async with AsyncClient(cluster, site="dc1", retries=0) as observer, \
                AsyncClient(cluster, site="dc1", retries=0) as client:
            await client.put("cut", "k", b"x" * 5000)  # connected, and a key to ask for
            before = await _connections(observer)
            cut = trio.CancelScope()

            async def get() -> None:
                with cut:
                    await client.get("cut", "k")

            async with trio.open_nursery() as nursery:
                half.armed = True
                nursery.start_soon(get)
                while not half.cut:  # its request is half written
                    await trio.sleep(0.01)
                cut.cancel()  # the caller gives up
            assert cut.cancelled_caught
            # The node lets the connection go as soon as it reads its end (it used to keep
            # it, waiting for the rest of the frame, for its idle timeout).
            while (now := await _connections(observer)) != before - 1:
                assert now == before
                await trio.sleep(0.05)
            # The client goes on, on a new connection.
            assert await client.get("cut", "k") == b"x" * 5000


class SlowWrites:
    """Wraps the sessions' TLS sender (counting the sessions made): once armed, a write sends
    the first half of its bytes, then waits until :attr:`go` is set — as a write into a socket
    that drains slowly does, its caller free to give up meanwhile — and sends the rest."""

    def __init__(self) -> None:
        self.armed = False
        self.halfway = trio.Event()
        self.go = trio.Event()
        self.sessions = 0

    def wrap(self, real: Sender) -> Sender:
        self.sessions += 1

        async def send_all(data: Sendable) -> None:
            if not self.armed:
                await real(data)
                return
            self.armed = False
            pieces = data if isinstance(data, tuple) else (data,)
            whole = b"".join(bytes(piece) for piece in pieces)
            await real(whole[:len(whole) // 2])
            self.halfway.set()
            await self.go.wait()
            await real(whole[len(whole) // 2:])
        return send_all


async def test_a_caller_cancelled_mid_frame_leaves_the_other_requests_alone(
        cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A streamed put (not replayable: a cut would fail it, retries or not) is in flight when
    # a get's caller gives up with the get's frame half written: the frame is finished, the
    # get ends Cancelled, and the put completes on the same connection, the only one opened.
    slow = SlowWrites()
    real_sender = _tlsread.tls_sender
    monkeypatch.setattr(_session, "tls_sender", lambda stream: slow.wrap(real_sender(stream)))
    more = trio.Event()
    waiting = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 3000
        waiting.set()
        await more.wait()
        yield b"b" * 3000

    with trio.fail_after(LIMIT):
        async with AsyncClient(cluster, site="dc1", retries=0) as client:
            await client.put("cut", "there", b"x" * 5000)
            infos: list[int] = []
            cut = trio.CancelScope()

            async def put() -> None:
                infos.append((await client.put("cut", "streamed", body())).size)

            async def get() -> None:
                with cut:
                    await client.get("cut", "there")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(put)
                await waiting.wait()  # the put's first piece is sent, the rest to come
                slow.armed = True
                nursery.start_soon(get)
                await slow.halfway.wait()  # the get's request is half written ...
                cut.cancel()  # ... when its caller gives up
                await trio.sleep(0.1)
                slow.go.set()  # the rest of its frame goes out
                more.set()
            assert cut.cancelled_caught
            assert infos == [6000]
            assert slow.sessions == 1  # one connection: nothing was cut, nothing retried
            assert await client.get("cut", "streamed") == b"a" * 3000 + b"b" * 3000
            assert slow.sessions == 1
