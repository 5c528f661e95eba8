"""What the client tests against a scripted node share: a client certificate's profile, and an
:class:`~hdsd.AsyncClient` whose ``connect_tls`` reaches the scripted node over an in-memory
pipe (its far end a real server-side ``WireSession``), so a whole exchange runs on trio's clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from hdsd import AsyncClient
from hdsd.client import Profile
from hdsd.transport import create_ca, issue_client_cert


class CountingStream(trio.abc.Stream):
    """The client's end of a scripted node's pipe: counts the client's writes, and can hold
    them (``hang``) as a full socket would."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0
        # Set: every write from then on stays in progress until cancelled, as a write into a
        # full socket (or on a machine too loaded to run it) does.
        self.hang = False
        # Set: every write from then on waits for this event (cancellable, as a write into a
        # full socket is), then goes through, as once the socket drains.
        self.hold: trio.Event | None = None
        self.closed = False  # aclose was called (by the client: its session is over)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.hang:
            await trio.sleep_forever()
        if self.hold is not None:
            await self.hold.wait()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class ScriptedNode(Protocol):
    async def connect(self, nursery: trio.Nursery) -> trio.abc.Stream: ...


def client_profile(root: Path, role: str) -> Profile:
    """A profile for tenant t1 of cluster c1, with a client certificate of *role*."""
    create_ca(root / "ca", "c1")
    cert, key = issue_client_cert(root / "ca", root / "certs", name="alice", tenant="t1",
                                  role=role)
    return Profile(path=root / "client.toml", cluster_id="c1", tenant="t1",
                   ca=root / "ca" / "ca.crt", cert=cert, key=key, site="dc1",
                   sites={"dc1": (("127.0.0.1", 1),)})


@asynccontextmanager
async def client_for(node: ScriptedNode, profile: Profile, monkeypatch: pytest.MonkeyPatch,
                     **options: Any) -> AsyncIterator[AsyncClient]:
    """An AsyncClient (no retries unless *options* say) whose connections reach *node*."""
    async with trio.open_nursery() as nursery:
        async def connect_tls(*args: object, **kwargs: object) -> trio.abc.Stream:
            return await node.connect(nursery)

        monkeypatch.setattr("hdsd.client._async.connect_tls", connect_tls)
        async with AsyncClient(profile, **{"retries": 0, **options}) as client:
            yield client
        nursery.cancel_scope.cancel()
