"""Moving whole versions (with their chunks) between nodes: hint replay and anti-entropy both
push a version to a peer and pull one from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from .._errors import ProtocolError
from .._groups import single_error
from ..store import ChunkRecord, Version
from ..wire import MAX_FETCH_CHUNKS, UNSENT, ChunkSizes, FetchChunk, FetchChunks, Replicate
from ._link import DownloadLink, PeerLink
from ._offload import Offload

__all__ = ["BATCH_BYTES", "ChunkReader", "fetch_chunk_records", "fetch_chunks", "local_chunks",
           "push_version", "push_versions", "replicate_message"]

BATCH_BYTES = 3 << 20  # a Replicate request stays under one wire frame


class ChunkReader(Protocol):
    """What :func:`local_chunks` needs of the local store (:class:`hdsd.store.Store` has it)."""

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes: ...


def replicate_message(layout_id: str, chunks: Sequence[ChunkRecord],
                      versions: Sequence[Version | dict[str, Any]], *,
                      hint: bool = False) -> Replicate:
    """The request that stores *chunks* and *versions* on a peer (one commit there); a
    version may be given as its map already (``EncodedCommit.wire_versions``: sealed)."""
    return Replicate(
        rid=UNSENT, layout=layout_id, chunks=[[c.tenant, c.chunk_id, c.payload] for c in chunks],
        versions=[v if isinstance(v, dict) else v.to_wire() for v in versions], hint=hint)


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
    if ids and isinstance(peers, DownloadLink) and peers.downloads(node):
        return await _download_records(peers, node, layout_id, ids, in_flight)
    out: list[ChunkRecord | None] = [None] * len(ids)

    async def one(i: int) -> None:
        tenant, chunk_id = ids[i]

        reply = await peers.call(node, FetchChunk(UNSENT, layout_id, tenant, chunk_id))
        out[i] = ChunkRecord(tenant, chunk_id, reply["payload"])

    await _spread(len(ids), in_flight, one)
    return [r for r in out if r is not None]


async def _spread(count: int, in_flight: int, one: Callable[[int], Awaitable[None]]) -> None:
    """``one(0)`` … ``one(count - 1)``, *in_flight* at a time."""
    if in_flight <= 1 or count <= 1:
        for i in range(count):
            await one(i)
        return
    slots = trio.Semaphore(in_flight)

    async def limited(i: int) -> None:
        try:
            await one(i)
        finally:
            slots.release()

    with single_error():
        async with trio.open_nursery() as nursery:
            for i in range(count):
                await slots.acquire()
                nursery.start_soon(limited, i)


async def _download_records(peers: DownloadLink, node: str, layout_id: str,
                            ids: list[tuple[str, bytes]], in_flight: int) -> list[ChunkRecord]:
    """:func:`fetch_chunk_records` by ``FetchChunks`` downloads: the ids cut into *in_flight*
    runs fetched at once, each run's records arriving as Data frames — a record that came
    as one frame is kept as that frame's bytes, never copied again."""
    parts = max(1, min(in_flight, len(ids)))
    step = -(-len(ids) // parts)
    runs = [ids[i:i + min(step, MAX_FETCH_CHUNKS)]
            for i in range(0, len(ids), min(step, MAX_FETCH_CHUNKS))]
    got: list[list[bytes]] = [[] for _ in runs]

    async def one(k: int) -> None:
        run, out = runs[k], got[k]
        while len(out) < len(run):
            # The peer may send a prefix of what was asked: ask again for the rest.
            records = _Records(node, len(run) - len(out), out)
            request = FetchChunks(UNSENT, layout_id, [[t, c] for t, c in run[len(out):]])
            await peers.download(node, request, records.start, records.data)
            records.end()

    await _spread(len(runs), parts, one)
    return [ChunkRecord(t, c, payload) for (t, c), payload
            in zip(ids, (p for out in got for p in out), strict=True)]
class _Records:
    """Cuts one FetchChunks download's body into its records, appended to *out*: one record
    per frame when it fits (taken as it came, no copy); cut anywhere, the pieces are joined
    once the record's size is in."""

    def __init__(self, node: str, asked: int, out: list[bytes]) -> None:
        self.node, self.asked, self.out = node, asked, out
        self.base = len(out)
        self.sizes: list[int] = []
        self.pending: list[bytes] = []
        self.held = 0

    def start(self, info: ChunkSizes) -> None:
        if not 0 < len(info["sizes"]) <= self.asked:
            raise ProtocolError(f"peer {self.node} announced {len(info['sizes'])} records "
                                f"for {self.asked} chunks asked")
        self.sizes = info["sizes"]

    def data(self, data: bytes) -> None:
        pending, out, sizes = self.pending, self.out, self.sizes
        pending.append(data)
        self.held += len(data)
        while (i := len(out) - self.base) < len(sizes) and self.held >= sizes[i]:
            size = sizes[i]
            if len(pending) == 1 and len(pending[0]) == size:
                out.append(pending.pop())
            else:
                joined = b"".join(pending)
                out.append(joined[:size])
                pending[:] = [joined[size:]] if len(joined) > size else []
            self.held -= size

    def end(self) -> None:
        if self.held or len(self.out) - self.base != len(self.sizes):
            raise ProtocolError(f"peer {self.node} sent a chunk download that does not "
                                "match the sizes it announced")


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
