"""Moving whole versions (with their chunks) between nodes: hint replay and anti-entropy both
push a version to a peer and pull one from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from .._groups import single_error
from ..store import ChunkRecord, Version
from ..wire import UNSENT, FetchChunk, Replicate
from ._link import PeerLink
from ._offload import Offload

__all__ = ["BATCH_BYTES", "ChunkReader", "fetch_chunk_records", "fetch_chunks", "local_chunks",
           "push_version", "push_versions", "replicate_message"]

BATCH_BYTES = 3 << 20  # a Replicate request stays under one wire frame


class ChunkReader(Protocol):
    """What :func:`local_chunks` needs of the local store (:class:`hdsd.store.Store` has it)."""

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes: ...


def replicate_message(layout_id: str, chunks: Sequence[ChunkRecord],
                      versions: Sequence[Version], *, hint: bool = False) -> Replicate:
    """The request that stores *chunks* and *versions* on a peer (one commit there)."""
    return Replicate(
        rid=UNSENT, layout=layout_id, chunks=[[c.tenant, c.chunk_id, c.payload] for c in chunks],
        versions=[v.to_wire() for v in versions], hint=hint)


async def local_chunks(store: ChunkReader, offload: Offload, version: Version) -> list[ChunkRecord]:
    """The chunk records of *version* from the local store (none for an inline version)."""
    if version.inline is not None:
        return []
    chunks = []
    for chunk_id in dict.fromkeys(version.chunks):
        payload = await offload(store.read_chunk, version.tenant, chunk_id)
        chunks.append(ChunkRecord(version.tenant, chunk_id, payload))
    return chunks


async def fetch_chunks(peers: PeerLink, node: str, layout_id: str, tenant: str,
                       chunk_ids: Sequence[bytes], *,
                       in_flight: int = 1) -> list[ChunkRecord]:
    """Fetch chunk records from *node* (raises if it cannot serve one)."""
    return await fetch_chunk_records(peers, node, layout_id,
                                     [(tenant, c) for c in chunk_ids], in_flight=in_flight)


async def fetch_chunk_records(peers: PeerLink, node: str, layout_id: str,
                              wanted: Sequence[tuple[str, bytes]], *,
                              in_flight: int = 1) -> list[ChunkRecord]:
    """Fetch the ``(tenant, chunk_id)`` records *wanted* from *node*, in order, duplicates
    once; raises if it cannot serve one.

    With *in_flight* > 1 that many requests are outstanding at once on the multiplexed link, so
    a bulk transfer moves at the speed of the link and the peer's disk rather than one round
    trip per chunk. The payloads are the sealed records as stored (compressed, encrypted under
    the tenant's key, which every node of the cluster shares): copied as they are, never opened.
    """
    ids = list(dict.fromkeys(wanted))
    out: list[ChunkRecord | None] = [None] * len(ids)

    async def one(i: int) -> None:
        tenant, chunk_id = ids[i]

        reply = await peers.call(node, FetchChunk(UNSENT, layout_id, tenant, chunk_id))
        out[i] = ChunkRecord(tenant, chunk_id, reply["payload"])

    if in_flight <= 1 or len(ids) <= 1:
        for i in range(len(ids)):
            await one(i)
    else:
        slots = trio.Semaphore(in_flight)

        async def limited(i: int) -> None:
            try:
                await one(i)
            finally:
                slots.release()

        with single_error():
            async with trio.open_nursery() as nursery:
                for i in range(len(ids)):
                    await slots.acquire()
                    nursery.start_soon(limited, i)
    return [r for r in out if r is not None]


async def push_version(peers: PeerLink, node: str, layout_id: str, version: Version,
                       chunks: Sequence[ChunkRecord], *, hint: bool) -> int:
    """Store *version* and its *chunks* on *node*: chunks in frame-sized batches, the version
    with the last batch (so it never becomes visible before its content). Returns the payload
    bytes sent."""
    return await push_versions(peers, node, layout_id, [(version, chunks)], hint=hint)


async def push_versions(peers: PeerLink, node: str, layout_id: str,
                        items: Sequence[tuple[Version, Sequence[ChunkRecord]]], *,
                        hint: bool) -> int:
    """Like :func:`push_version` for many versions, packed into as few frame-sized requests
    (one fsync each on the receiver) as fit: a version always travels with or after its
    chunks. Returns the payload bytes sent."""
    chunks: list[ChunkRecord] = []
    versions: list[Version] = []
    size = sent = 0

    async def flush() -> None:
        nonlocal chunks, versions, size, sent
        if chunks or versions:
            await peers.call(node, replicate_message(layout_id, chunks, versions, hint=hint))
        chunks, versions, sent, size = [], [], sent + size, 0

    for version, own in items:
        for chunk in own:
            chunks.append(chunk)
            size += len(chunk.payload)
            if size >= BATCH_BYTES:
                await flush()
        versions.append(version)
        size += len(version.inline or b"") + 200
        if size >= BATCH_BYTES:
            await flush()
    await flush()
    return sent
