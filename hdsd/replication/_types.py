"""Shapes shared by the write path and hint replay: the local store they need and the replicas
of a key. How blocking work is offloaded and the replication request they send live with the
peer links (:mod:`hdsd.peers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..store import ChunkRecord, EncodedCommit, Version

__all__ = ["LocalCommit", "LocalStore", "Replicas"]

Replicas = dict[str, list[str]]


class LocalCommit(Protocol):
    """A commit queued by :meth:`LocalStore.start_commit`."""

    async def wait(self) -> None: ...

    def abandon(self) -> None: ...


class LocalStore(Protocol):
    """What the coordinator needs of its own store (:class:`hdsd.store.Store` has it)."""

    async def commit(self, records: Sequence[ChunkRecord | Version]) -> None: ...

    def start_commit(self, records: Sequence[ChunkRecord | Version]) -> LocalCommit: ...

    def encode_commit(self, records: Sequence[ChunkRecord | Version]) -> EncodedCommit: ...

    def start_encoded(self, commit: EncodedCommit,
                      chunks: Sequence[ChunkRecord] = ()) -> LocalCommit: ...

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None: ...

    def is_purged(self, tenant: str, bucket: str, key: str, hlc: int, node: str) -> bool: ...

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes: ...

    def find_request(self, tenant: str, request_id: bytes) -> Version | None: ...

