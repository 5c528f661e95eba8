"""Shapes shared by the write path and hint replay: the local store they need, how blocking
work is offloaded, and the replication request they send."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from ..store import ChunkRecord, Version
from ..wire import Replicate

__all__ = ["LocalCommit", "LocalStore", "Offload", "Replicas", "replicate_message", "to_thread"]

Replicas = dict[str, list[str]]


class LocalCommit(Protocol):
    """A commit queued by :meth:`LocalStore.start_commit`."""

    async def wait(self) -> None: ...

    def abandon(self) -> None: ...


class LocalStore(Protocol):
    """What the coordinator needs of its own store (:class:`hdsd.store.Store` has it)."""

    async def commit(self, records: Sequence[ChunkRecord | Version]) -> None: ...

    def start_commit(self, records: Sequence[ChunkRecord | Version]) -> LocalCommit: ...

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None: ...

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes: ...

    def find_request(self, tenant: str, request_id: bytes) -> Version | None: ...


Offload = Callable[..., Awaitable[Any]]


async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def replicate_message(layout_id: str, chunks: Sequence[ChunkRecord],
                      versions: Sequence[Version], *, hint: bool = False) -> Any:
    return lambda rid: Replicate(
        rid=rid, layout=layout_id, chunks=[[c.tenant, c.chunk_id, c.payload] for c in chunks],
        versions=[v.to_wire() for v in versions], hint=hint)
