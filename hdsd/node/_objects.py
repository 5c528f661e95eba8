"""The node's object API: put, get, stat, list, delete and versions of one tenant's objects,
independent of the session that asked.

The native wire handlers (:mod:`._handlers`) and the S3 gateway (:mod:`hdsd.s3`) both call
these; each brings its body as a :class:`BodySource` and its download as a sink, so the
promises live here once: a put is acknowledged (returns) only once the write policy holds for
its version, a version is committed only after every chunk it names is durable, a retried
request id is settled instead of written twice, and memory stays bounded whatever the size
(the source is read only as fast as chunks become durable; the download reads ahead at most
three chunks).

Put theory: body bytes are cut into chunks as they arrive; each full chunk is sealed (hash,
compress, encrypt, in a worker thread when large) and committed to the log by a bounded set of
tasks, and its bytes are granted back to the source (``consumed``) only once durable — so a
native client can never be more than one window ahead of the disk. The version record is
committed last, after every chunk it names is durable — except the last chunk, which is
committed with the version in one replicated write (one batch on every replica, all or
nothing): a version is never visible without its content, and a blob of one chunk costs one
round trip and one fsync per replica instead of two. The last chunk is known once the body
ends (the partial tail) or, for a body that ends on a chunk boundary, once the declared size
has arrived. Blobs up to ``inline_max`` ride inside the version record (one record, one fsync).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._errors import (
    HdsdError,
    IntegrityError,
    InvalidRequest,
    NotFound,
    RequestIdConflict,
    Unavailable,
    WrongRole,
)
from .._groups import single_error
from ..pipeline import (
    THREAD_THRESHOLD,
    ChunkCodec,
    Chunker,
    OrderedHasher,
    open_in_thread,
    random_bytes,
    seal_in_thread,
)
from ..replication import check_retry
from ..s3 import Principal
from ..store import ChunkRecord, Version, parse_version_id, retained_until, visible_versions
from ..wire import DEFAULT_WINDOW
from ._auth import authorize, check_bucket, check_key
from ._budget import put_reservation
from ._listing import merge_buckets, merge_page
from ._metrics import BODY_SIZE
from ._reads import decode_version_cursor

if TYPE_CHECKING:
    from ._server import Node

__all__ = [
    "BodySource",
    "ChannelSource",
    "NodeObjects",
    "StoredPart",
    "byte_range",
    "compose_object",
    "delete_object",
    "list_buckets",
    "list_objects",
    "object_versions",
    "purge_version",
    "put_object",
    "resolve",
    "seal_small",
    "seal_whole",
    "store_part",
    "stream_object",
]

_CHUNKS_IN_FLIGHT = 4


class BodySource(Protocol):
    """A put's body, read with backpressure: the core asks for the next piece only when it has
    room for it (at most ``_CHUNKS_IN_FLIGHT`` chunks in flight)."""

    def ready(self) -> bytes | None:
        """The whole body if it has already arrived (a small put: one seal, no tasks), else
        None. Called once, before any :meth:`read`."""

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end (only once the source has checked
        everything it checks: a declared length, a payload signature). Raises a typed error
        (timeout, disconnect, cancel) for a body that does not arrive whole."""

    async def consumed(self, n: int) -> None:
        """*n* body bytes are durable under the write policy (the native client's credit)."""

    def trailer(self) -> Mapping[str, str]:
        """Metadata known only once the body ended (S3's ETag), merged into the version's."""


async def resolve(node: Node, tenant: str, bucket: str, key: str,
                  version: str | None) -> Version:
    """The key's current version (or the one named); NotFound for none or a delete marker."""
    check_bucket(bucket)
    check_key(key)
    # A malformed id is refused before anything is read.
    wanted = _version_order(version) if version is not None else None
    if node.reads.local_only(tenant, bucket, key):
        # This node's store is the whole answer: its one version, not all the key's merged.
        local = node.reads.local_version(tenant, bucket, key, wanted)
        if local is None or local.tombstone:
            what = f"{bucket}/{key}" + (f" version {version}" if version else "")
            raise NotFound(f"{what} not found")
        return local
    found = _named(await node.reads.versions_of(tenant, bucket, key), bucket, key, version)
    if found.tombstone:
        raise NotFound(f"{bucket}/{key} version {version} not found")
    return found


def resolve_now(node: Node, tenant: str, bucket: str, key: str,
                version: str | None) -> Version | None:
    """What :func:`resolve` gives, when this node's store alone answers for the key (see
    ``ReadPaths.local_only``) and has it; None in every other case — others to ask,
    nothing to serve, any refusal — for :func:`resolve` to decide. Never awaits, never
    raises :class:`HdsdError`."""
    try:
        check_bucket(bucket)
        check_key(key)
        if not node.reads.local_only(tenant, bucket, key):
            return None
        found = node.reads.local_version(
            tenant, bucket, key, _version_order(version) if version is not None else None)
    except HdsdError:
        return None
    return None if found is None or found.tombstone else found


# -- put ---------------------------------------------------------------------------------------
async def put_object(node: Node, tenant: str, bucket: str, key: str, source: BodySource, *,
                     size: int | None, metadata: Mapping[str, str],
                     request_id: bytes, retry: bool = False) -> tuple[Version, bool]:
    """Store *source* as a new version; ``(version, replayed)`` once the write policy holds.

    A request id that already wrote a version is a retry: it must be the same request
    (RequestIdConflict otherwise, nothing written); its body is received and hashed, not
    stored, and it is acknowledged only once the policy holds for the first attempt's version.
    *retry* (the client says it is sending the id again) widens the search for that version
    to every replica of both sites.
    """
    check_bucket(bucket)
    check_key(key)
    async with node.idempotent(tenant, request_id, bucket, key, retry=retry) as previous:
        if previous is not None:
            check_retry(previous, bucket=bucket, key=key, delete=False, size=size)
            got, digest = await _hash_body(node, tenant, source)
            check_retry(previous, bucket=bucket, key=key, delete=False, size=got,
                        content_hash=digest)
            await _settle(node, previous)
            return previous, True
        async with node.tenancy.admit_put(node, tenant, bucket, key, size):
            version = await _receive_and_store(node, tenant, bucket, key, source, size=size,
                                               metadata=metadata, request_id=request_id)
            BODY_SIZE.set(version.size)
    return version, False


async def _hash_body(node: Node, tenant: str, source: BodySource) -> tuple[int, bytes]:
    """Receive a retried put's body without storing it: its size and keyed content hash,
    to check that the retry carries the content the request id was first used for."""
    hasher = node.codec(tenant).content_hasher()
    size = 0
    whole = source.ready()
    if whole is not None:
        hasher.update(whole)
        return len(whole), hasher.digest()
    while piece := await source.read():
        hasher.update(piece)
        size += len(piece)
        await source.consumed(len(piece))
    return size, hasher.digest()


async def _replicate(node: Node, record: Version) -> None:
    """Write a content-less record (delete marker, purge, retention) to its key's replicas;
    returns once the write policy holds for it (hinting the replicas that lag)."""
    replicas = node.replicator.replicas_for(record.tenant, record.bucket, record.key)
    await node.replicator.keep_hints(await node.replicator.write(replicas, [], [record]),
                                     [record])


async def _settle(node: Node, previous: Version) -> None:
    """Drive a retried request's version to the replicas the write policy needs (hinting
    the others); raises like a first attempt when the policy cannot be met."""
    replicas = node.replicator.replicas_for(previous.tenant, previous.bucket, previous.key)
    lagging = await node.replicator.settle(replicas, previous)
    await node.replicator.keep_hints(lagging, [previous])


async def _receive_and_store(node: Node, tenant: str, bucket: str, key: str,
                             source: BodySource, *, size: int | None,
                             metadata: Mapping[str, str], request_id: bytes) -> Version:
    declared = size
    codec = node.codec(tenant)
    replicas = node.replicator.replicas_for(tenant, bucket, key)

    def version_of(size: int, content_hash: bytes, chunks: tuple[bytes, ...],
                   inline: bytes | None) -> Version:
        return Version(
            tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(), node=node.config.name,
            size=size, content_hash=content_hash, chunks=chunks, inline=inline,
            metadata={**metadata, **source.trailer()}, request_id=request_id,
            chunk_size=node.config.chunk_size)

    # A body of one chunk usually arrives whole and then needs no tasks at all: one seal (its
    # chunk id is the keyed hash of the whole blob, i.e. the content hash: hashed once), one
    # replicated write — inside the version record up to inline_max, beside it above.
    whole = source.ready()
    if whole is not None and len(whole) <= node.config.chunk_size and \
            (declared is None or declared == len(whole)):
        if declared is None:
            node.tenancy.check_quota(tenant, len(whole))
        version, records = await seal_whole(node, tenant, bucket, key, whole,
                                            {**metadata, **source.trailer()}, request_id)
        await node.replicator.keep_hints(
            await node.replicator.write(replicas, records, [version]), [version])
        return version

    chunker = Chunker(node.config.chunk_size)
    # The content hash is fed chunk by chunk by the threads that seal them (off the event
    # loop), and not at all for a blob of one chunk: it is that chunk's id.
    hasher = OrderedHasher(codec.content_hasher())
    writer = _ChunkWriter(node, tenant, codec, replicas, source, hasher)
    ids, lagging = writer.ids, writer.lagging
    received = 0
    inline: bytes | None = None
    last: bytes | None = None  # the final chunk, written with the version record

    async def next_piece() -> bytes:
        nonlocal whole
        if whole is not None:
            piece, whole = whole, None
            return piece
        return await source.read()

    with single_error():
        async with trio.open_nursery() as nursery:
            while piece := await next_piece():
                received += len(piece)
                if declared is not None and received > declared:
                    raise InvalidRequest(f"body is longer than the declared {declared} bytes; "
                                         "nothing was stored")
                chunks = chunker.feed(piece)
                if chunks and received == declared and received % node.config.chunk_size == 0:
                    last = chunks.pop()  # the declared body is complete: this is its last chunk
                for chunk in chunks:
                    await writer.start(nursery, chunk)
            if declared is not None and received != declared:
                raise InvalidRequest(f"body has {received} bytes, {declared} were declared; "
                                     "nothing was stored")
            tail = chunker.finish()
            if not ids and last is None and tail is not None and \
                    len(tail) <= node.config.inline_max:
                sealed = await seal_in_thread(codec, tail)
                ids.append(sealed.chunk_id)
                inline = sealed.payload
            elif tail:
                last = tail
    if declared is None:
        node.tenancy.check_quota(tenant, received)  # the body's size was not declared up front
    # Every chunk named below is durable but the last one, which rides in the version's own
    # write: one batch on every replica (all or nothing), so the version is still never
    # visible without its content, and a put of one chunk is one replicated write, not two.
    with_version: list[ChunkRecord] = []
    if last is not None:
        sealed = await seal_in_thread(codec, last, hasher if ids else None, len(ids))
        ids.append(sealed.chunk_id)
        with_version.append(ChunkRecord(tenant=tenant, chunk_id=sealed.chunk_id,
                                        payload=sealed.payload))
    content_hash = ids[0] if len(ids) == 1 else hasher.digest(len(ids))
    version = version_of(received, content_hash, tuple(ids), inline)
    # Not to a replica that missed a chunk: its hint brings the chunks with the version.
    lagging.update(await node.replicator.write(replicas, with_version, [version],
                                               missed=frozenset(lagging)))
    await node.replicator.keep_hints(lagging, [version])
    return version


async def seal_whole(node: Node, tenant: str, bucket: str, key: str, whole: bytes,
                     metadata: dict[str, str], request_id: bytes
                     ) -> tuple[Version, list[ChunkRecord]]:
    """A body of one chunk that arrived whole, sealed once, as its version and the records to
    write with it: none up to ``inline_max`` (the payload rides in the version record), its
    one chunk above. Its content hash is its chunk id (the keyed hash of the whole blob).
    *metadata* becomes the version's own (the caller's copy)."""
    inline = len(whole) <= node.config.inline_max
    if inline and len(whole) < THREAD_THRESHOLD:
        await trio.lowlevel.checkpoint_if_cancelled()  # as seal_in_thread does for it
        return seal_small(node, tenant, bucket, key, whole, metadata, request_id), []
    sealed = await seal_in_thread(node.codec(tenant), whole)
    version = _whole_version(node, tenant, bucket, key, len(whole), sealed.chunk_id,
                             sealed.payload if inline else None, metadata, request_id)
    if inline:
        return version, []
    return version, [ChunkRecord(tenant=tenant, chunk_id=sealed.chunk_id,
                                 payload=sealed.payload)]


def seal_small(node: Node, tenant: str, bucket: str, key: str, whole: bytes,
               metadata: dict[str, str], request_id: bytes) -> Version:
    """:func:`seal_whole` of a body of at most ``inline_max`` bytes (and under
    ``THREAD_THRESHOLD``: sealed in the calling thread, as ``seal_in_thread`` does for it),
    here and now: its payload in the version record."""
    sealed = node.codec(tenant).seal(whole)
    return _whole_version(node, tenant, bucket, key, len(whole), sealed.chunk_id,
                          sealed.payload, metadata, request_id)


def _whole_version(node: Node, tenant: str, bucket: str, key: str, size: int, chunk_id: bytes,
                   inline: bytes | None, metadata: dict[str, str], request_id: bytes) -> Version:
    return Version(
        tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(), node=node.config.name,
        size=size, content_hash=chunk_id, chunks=(chunk_id,), inline=inline,
        metadata=metadata, request_id=request_id, chunk_size=node.config.chunk_size)


class _ChunkWriter:
    """A body's full chunks, sealed and written to the key's replicas by at most
    ``_CHUNKS_IN_FLIGHT`` tasks, each granted back to the source (``consumed``) only once the
    write policy holds for it — a put's and a multipart part's, the same way. ``ids``: the
    chunk ids in body order; ``lagging``: replicas that had not confirmed some chunk."""

    def __init__(self, node: Node, tenant: str, codec: ChunkCodec, replicas: dict[str, list[str]],
                 source: BodySource, hasher: OrderedHasher | None = None) -> None:
        self.node = node
        self.tenant = tenant
        self.codec = codec
        self.replicas = replicas
        self.source = source
        self.hasher = hasher  # fed each chunk, in order, by the thread that seals it
        self.ids: list[bytes] = []
        self.lagging: set[str] = set()
        self._limiter = trio.Semaphore(_CHUNKS_IN_FLIGHT)

    async def start(self, nursery: trio.Nursery, piece: bytes) -> None:
        """Write *piece* as the next chunk, in *nursery*, once fewer are in flight."""
        await self._limiter.acquire()
        self.ids.append(b"")
        nursery.start_soon(self._store, len(self.ids) - 1, piece)

    async def _store(self, slot: int, piece: bytes) -> None:
        try:
            sealed = await seal_in_thread(self.codec, piece, self.hasher, slot)
            record = ChunkRecord(tenant=self.tenant, chunk_id=sealed.chunk_id,
                                 payload=sealed.payload)
            # Credit goes back only once the write policy holds for this chunk: the client can
            # never run more than one window ahead of the slowest replica the policy waits for.
            self.lagging.update(await self.node.replicator.write(self.replicas, [record], []))
            self.ids[slot] = sealed.chunk_id
            await self.source.consumed(len(piece))
        finally:
            self._limiter.release()


# -- multipart: parts stored as chunks, composed into one version -------------------------------
@dataclass(frozen=True, slots=True)
class StoredPart:
    """A part's chunks, sealed and durable under the write policy on the replicas of the key
    its upload completes into; ``lagging``: replicas that had not confirmed them (hinted with
    the composed version). Nothing of it is visible until :func:`compose_object`."""

    chunks: tuple[bytes, ...]
    size: int
    chunk_size: int
    lagging: tuple[str, ...]


async def store_part(node: Node, tenant: str, bucket: str, key: str,
                     source: BodySource) -> StoredPart:
    """Cut *source* into chunks and write them as a put would (bounded, backpressured, each
    chunk acknowledged once the policy holds for it); the version comes at composition. A
    hold or retention that would refuse the final put refuses the part already."""
    check_bucket(bucket)
    check_key(key)
    await node.tenancy.check_write(node, tenant, bucket, key, size=None, delete=False)
    replicas = node.replicator.replicas_for(tenant, bucket, key)
    chunker = Chunker(node.config.chunk_size)
    writer = _ChunkWriter(node, tenant, node.codec(tenant), replicas, source)
    received = 0
    with single_error():
        async with trio.open_nursery() as nursery:
            while piece := await source.read():
                received += len(piece)
                for chunk in chunker.feed(piece):
                    await writer.start(nursery, chunk)
            tail = chunker.finish()
            if tail:
                await writer.start(nursery, tail)
    return StoredPart(tuple(writer.ids), received, node.config.chunk_size,
                      tuple(sorted(writer.lagging)))


async def compose_object(node: Node, tenant: str, bucket: str, key: str,
                         parts: list[StoredPart], *, metadata: Mapping[str, str],
                         request_id: bytes) -> Version:
    """Commit one version naming the parts' chunks in order, once the write policy holds for
    it. Its chunks must be uniform (every part but the last a whole number of chunks of this
    node's size), else the parts are read back and put again as one stream. The content hash
    is computed by reading the chunks back (no re-sealing, no re-replication)."""
    check_bucket(bucket)
    check_key(key)
    chunk_size = node.config.chunk_size
    size = sum(p.size for p in parts)
    chunks = tuple(c for p in parts for c in p.chunks)
    uniform = all(p.chunk_size == chunk_size for p in parts) and \
        all(p.size % chunk_size == 0 for p in parts[:-1])
    codec = node.codec(tenant)
    draft = Version(tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(),
                    node=node.config.name, size=size, content_hash=b"", chunks=chunks,
                    metadata=dict(metadata), request_id=request_id, chunk_size=chunk_size)
    if not uniform:
        # Read the parts back in order (each part's chunks as one piece list) into a put.
        send, receive = trio.open_memory_channel[bytes](2)
        result: list[Version] = []

        async def feed() -> None:
            async with send:
                for part in parts:
                    piece_version = dataclasses.replace(
                        draft, size=part.size, chunks=part.chunks, chunk_size=part.chunk_size)

                    async def sink(piece: memoryview) -> bool:
                        await send.send(bytes(piece))
                        return True
                    await stream_object(node, tenant, piece_version, 0, part.size, sink)

        async def put() -> None:
            async with receive:
                version, _ = await put_object(node, tenant, bucket, key,
                                              ChannelSource(receive), size=size,
                                              metadata=metadata, request_id=request_id)
                result.append(version)

        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(put)
        return result[0]
    hasher = codec.content_hasher()

    async def digest(piece: memoryview) -> bool:
        hasher.update(piece)
        return True

    # Reads every chunk back (local replica first), checking each one's length: a part whose
    # chunks are not what its record says fails here, before anything is committed.
    await stream_object(node, tenant, draft, 0, size, digest)
    replicas = node.replicator.replicas_for(tenant, bucket, key)
    async with node.idempotent(tenant, request_id, bucket, key) as previous:
        if previous is not None:
            check_retry(previous, bucket=bucket, key=key, delete=False, size=size,
                        content_hash=hasher.digest())
            await _settle(node, previous)
            return previous
        async with node.tenancy.admit_put(node, tenant, bucket, key, size):
            version = dataclasses.replace(draft, hlc=node.clock.now(),
                                          content_hash=hasher.digest())
            lagging = {n for p in parts for n in p.lagging}
            lagging.update(await node.replicator.write(replicas, [], [version],
                                                       missed=frozenset(lagging)))
            await node.replicator.keep_hints(lagging, [version])
            BODY_SIZE.set(size)
    return version


class ChannelSource:
    """A body another task pushes piece by piece into a memory channel (a copy, a multipart
    upload read back, an upload part copied): the same source for the node and the gateway.
    *trailer*: metadata known only at the end (S3's ETag)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes],
                 trailer: Mapping[str, str] | None = None) -> None:
        self.receive = receive
        self._trailer = dict(trailer or {})

    def ready(self) -> bytes | None:
        return None

    async def read(self) -> bytes:
        try:
            return await self.receive.receive()
        except trio.EndOfChannel:
            return b""

    async def consumed(self, n: int) -> None:
        return None

    def trailer(self) -> dict[str, str]:
        return self._trailer


# -- get ---------------------------------------------------------------------------------------
def byte_range(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """``[lo, hi)`` of an object of *size* bytes for a request's *start*/*end* (None: open)."""
    lo = 0 if start is None else start
    hi = size if end is None else min(end, size)
    if lo < 0 or lo > size or hi < lo:
        raise InvalidRequest(f"range {start}-{end} is outside the object's {size} bytes")
    return lo, hi


#: Chunks of a get read ahead of the one being sent (the node's body budget counts them:
#: ``_budget._GET_CHUNKS``, one at the sink and three ahead).
_READ_AHEAD = 3


async def stream_object(node: Node, tenant: str, version: Version, lo: int, hi: int,
                        sink: Callable[[memoryview], Awaitable[bool]]) -> bool:
    """Send bytes ``[lo, hi)`` of *version* to *sink*, in order; False if the sink said stop
    (returned False: the reader is gone or cancelled), True once everything was sent.

    The next chunks are read and decrypted while this one is sent: the read-ahead is bounded
    (three chunks), so a slow reader holds the node to a few MiB for this request."""
    codec = node.codec(tenant)
    wanted: list[tuple[int, bytes, int, int, int]] = []  # index, id, length, slice lo, hi
    offset = 0
    for index, chunk_id in enumerate(version.chunks):
        chunk_len = version.size if version.inline is not None else \
            min(version.chunk_size or version.size, version.size - offset)
        chunk_lo, chunk_hi = max(lo, offset), min(hi, offset + chunk_len)
        if chunk_lo < chunk_hi:
            wanted.append((index, chunk_id, chunk_len, chunk_lo - offset, chunk_hi - offset))
        offset += chunk_len
        if offset >= hi:
            break

    async def read(index: int, chunk_id: bytes, chunk_len: int) -> bytes:
        if version.inline is not None:
            plain = await open_in_thread(codec, chunk_id, version.inline)
        else:
            plain = await node.reads.chunk_payload(tenant, version.bucket, version.key, chunk_id,
                                                   codec, chunk_len)
        if len(plain) != chunk_len:
            raise IntegrityError(f"chunk {index} of {version.bucket}/{version.key} has "
                                 f"{len(plain)} bytes, expected {chunk_len}")
        return plain

    if len(wanted) == 1:
        # One chunk (every small object): nothing to read ahead, so no task and no channel.
        index, chunk_id, chunk_len, slice_lo, slice_hi = wanted[0]
        plain = await read(index, chunk_id, chunk_len)
        return await sink(memoryview(plain)[slice_lo:slice_hi])

    ahead = None if version.inline is not None else node.reads.read_ahead(
        tenant, version.bucket, version.key, [w[1] for w in wanted], codec, _READ_AHEAD)
    if ahead is not None:
        # This node holds the key: its chunks are read in worker threads ahead of the sink,
        # without a producer task (see ReadAhead).
        try:
            for index, _, chunk_len, slice_lo, slice_hi in wanted:
                plain = await ahead.next()
                if len(plain) != chunk_len:
                    raise IntegrityError(f"chunk {index} of {version.bucket}/{version.key} has "
                                         f"{len(plain)} bytes, expected {chunk_len}")
                if not await sink(memoryview(plain)[slice_lo:slice_hi]):
                    return False
        finally:
            ahead.close()
        return True

    send_ready, receive_ready = trio.open_memory_channel[bytes](2)

    async def produce() -> None:
        async with send_ready:
            for index, chunk_id, chunk_len, _, _ in wanted:
                await send_ready.send(await read(index, chunk_id, chunk_len))

    with single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive_ready:
                for _, _, _, slice_lo, slice_hi in wanted:
                    plain = await receive_ready.receive()
                    if not await sink(memoryview(plain)[slice_lo:slice_hi]):
                        nursery.cancel_scope.cancel()
                        return False
    return True


# -- metadata requests -------------------------------------------------------------------------
async def list_objects(node: Node, tenant: str, bucket: str, prefix: str, after: str,
                       limit: int, versions: bool) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a bucket's keys (or versions) after *after*: ``(entries, next)``."""
    check_bucket(bucket)
    limit = max(1, min(limit, 1000))
    if versions and after:
        decode_version_cursor(after)  # refuse a malformed cursor before any fan-out
    # Each node of the site holds the keys placed on it: merge their parts, each bounded by
    # count and bytes; the merge is exact up to the smallest end of a part that has more.
    parts = await node.reads.list_site(tenant, bucket, prefix, after, limit, versions)
    return merge_page(parts, versions=versions, limit=limit)


async def list_buckets(node: Node, tenant: str, after: str) -> tuple[list[str], str | None]:
    """One page of the buckets holding versions of *tenant* in this site."""
    return merge_buckets(await node.reads.list_buckets_site(tenant, after))


async def delete_object(node: Node, tenant: str, bucket: str, key: str,
                        request_id: bytes, retry: bool = False) -> tuple[Version, bool]:
    """Write a delete marker once the key exists and no hold or retention forbids it;
    ``(marker, replayed)`` once the write policy holds for it (a retry is settled, looked
    for at both sites when *retry*)."""
    check_bucket(bucket)
    check_key(key)
    async with node.idempotent(tenant, request_id, bucket, key, retry=retry) as previous:
        if previous is not None:
            check_retry(previous, bucket=bucket, key=key, delete=True)
            await _settle(node, previous)
            return previous, True
        await resolve(node, tenant, bucket, key, None)  # NotFound if nothing
        await node.tenancy.check_write(node, tenant, bucket, key, size=None, delete=True)
        marker = Version(
            tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(), node=node.config.name,
            size=0, content_hash=b"", tombstone=True, request_id=request_id)
        await _replicate(node, marker)
    return marker, False


async def purge_version(node: Node, tenant: str, bucket: str, key: str, version: str,
                        request_id: bytes, retry: bool = False
                        ) -> tuple[Version, Version, bool]:
    """Delete one version of a key for good (a version or a delete marker): ``(purged,
    purge record, replayed)`` once the write policy holds for the purge record — a replicated
    write like a delete, settled on a retry of the same request id. NotFound if the key has
    no such version (or it is purged already); LegalHold or RetentionLocked while a hold or
    the bucket's retention protects it. Every replica that learns of the record drops the
    version and refuses it ever after (repair included), see ``docs/design-notes.md``.
    *retry*: as for a delete (the first attempt is looked for at both sites)."""
    check_bucket(bucket)
    check_key(key)
    target = _version_order(version)
    async with node.idempotent(tenant, request_id, bucket, key, retry=retry) as previous:
        if previous is not None:
            check_retry(previous, bucket=bucket, key=key, delete=True, purges=target)
            await _settle(node, previous)
            return _purged_by(previous), previous, True
        records = await node.reads.key_records(tenant, bucket, key)
        found = next((v for v in visible_versions(records) if v.order == target), None)
        if found is None:
            raise NotFound(f"{bucket}/{key} version {version} not found")
        await node.tenancy.check_purge(node, found, retained_until(records, found))
        record = Version(
            tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(), node=node.config.name,
            size=0, content_hash=b"", request_id=request_id, purges=target)
        await _replicate(node, record)
    return found, record, False


async def retention_of(node: Node, tenant: str, bucket: str, key: str,
                       version: str | None) -> tuple[Version, int]:
    """A version (the current one if *version* is None) and when it may be purged (Unix ms;
    0: the bucket keeps no retention and none was set on it)."""
    check_bucket(bucket)
    check_key(key)
    records = await node.reads.key_records(tenant, bucket, key)
    known = visible_versions(records)
    found = _named(known, bucket, key, version)
    return found, node.tenancy.retained_until(found, retained_until(records, found))


async def retain_version(node: Node, tenant: str, bucket: str, key: str, version: str | None,
                         until_ms: int, request_id: bytes) -> tuple[Version, int]:
    """Retain a version (COMPLIANCE) until *until_ms* at least: nothing may purge it before,
    whatever the role; a retention only grows. ``(version, retained until)``; a retention
    record is written — a replicated write under the write policy, like a put — only when
    *until_ms* is later than what already holds it (its bucket's retention, earlier
    records). S3's PutObjectRetention."""
    check_bucket(bucket)
    check_key(key)
    async with node.idempotent(tenant, request_id, bucket, key) as previous:
        if previous is not None:  # (a fresh id per S3 request: only a native retry)
            if previous.retains is None or (previous.bucket, previous.key) != (bucket, key):
                raise RequestIdConflict("request id already used by another request; nothing "
                                        "was written")
            await _settle(node, previous)
            return await retention_of(node, tenant, bucket, key, version)
        found, until = await retention_of(node, tenant, bucket, key, version)
        if until_ms <= until:
            return found, until
        await node.tenancy.ensure_confirmed(node, tenant)
        record = Version(
            tenant=tenant, bucket=bucket, key=key, hlc=node.clock.now(), node=node.config.name,
            size=0, content_hash=b"", request_id=request_id,
            retains=(found.hlc, found.node, until_ms))
        await _replicate(node, record)
    return found, until_ms


def _version_order(version: str) -> tuple[int, str]:
    """The (hlc, node) a version id names; InvalidRequest for a malformed one."""
    try:
        return parse_version_id(version)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _named(known: list[Version], bucket: str, key: str, version: str | None) -> Version:
    """The version named (the current one if None); NotFound for none or a delete marker
    when the current one is asked for."""
    wanted = _version_order(version) if version is not None else None
    if wanted is None:
        found = known[-1] if known and not known[-1].tombstone else None
    else:
        found = next((v for v in known if v.order == wanted), None)
    if found is None:
        what = f"{bucket}/{key}" + (f" version {version}" if version else "")
        raise NotFound(f"{what} not found")
    return found


def _purged_by(record: Version) -> Version:
    """What a retried purge answers about the version it purged (gone: its identity only)."""
    assert record.purges is not None
    hlc, origin = record.purges
    return Version(tenant=record.tenant, bucket=record.bucket, key=record.key, hlc=hlc,
                   node=origin, size=0, content_hash=b"")


async def object_versions(node: Node, tenant: str, bucket: str, key: str) -> list[Version]:
    """Every version of a key, delete markers included; NotFound if it never existed."""
    check_bucket(bucket)
    check_key(key)
    found = await node.reads.versions_of(tenant, bucket, key)
    if not found:
        raise NotFound(f"{bucket}/{key} not found")
    return found


class NodeObjects:
    """The object API of one node as the S3 gateway's backend (:class:`hdsd.s3.Backend`):
    the same operations the native handlers call, with the same authorisation by role, the
    access key's tenant instead of a certificate's, and the same audit log."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def authorize(self, role: str, op: str) -> None:
        authorize(role, op)  # type: ignore[arg-type]  # the gateway names only Operations

    def check_serving(self) -> None:
        node = self.node
        if node.stopping:
            raise Unavailable("node is shutting down; retry on another node or later")
        if node.audit.failed is not None:
            raise Unavailable(f"the audit log cannot be written ({node.audit.failed}); no "
                              "request is served untraced")

    async def audit_ready(self) -> None:
        """A node that lost its audit log first learns where its chain resumes: no S3 record
        before that, as for native requests."""
        await self.node.audit_continuity.ready.wait()

    def in_flight(self) -> AbstractContextManager[None]:
        return self.node.counted_request()

    def _refuse_on_backup(self) -> None:
        node = self.node
        if node.role == "backup":
            raise WrongRole(f"this node ({node.config.name}) is a backup node: it coordinates "
                            "no write; use the S3 endpoint of a storage node")

    async def _tenant(self, tenant: str) -> None:
        self.node.tenancy.check_live(tenant)  # a shredded tenant is refused outright

    def check_put(self, tenant: str, bucket: str, key: str) -> None:
        self.node.tenancy.check_live(tenant)
        self._refuse_on_backup()
        check_bucket(bucket)
        check_key(key)

    async def put(self, tenant: str, bucket: str, key: str, source: BodySource, *,
                  size: int | None, metadata: Mapping[str, str]) -> Version:
        await self._tenant(tenant)
        self._refuse_on_backup()
        # A fresh request id per S3 put: S3 has no retry identity of its own, so a retried
        # PUT is a new version (as on S3 with versioning on), never a conflict. (From a buffer
        # of kernel randomness, never handed out twice: no getrandom per request.)
        async with self.node.budget.holding(put_reservation(size, DEFAULT_WINDOW)):
            version, _ = await put_object(self.node, tenant, bucket, key, source, size=size,
                                          metadata=metadata, request_id=random_bytes(16))
        return version

    async def store_part(self, tenant: str, bucket: str, key: str,
                         source: BodySource) -> dict[str, Any]:
        """A multipart part's chunks stored; its record (JSON-able: the gateway keeps it in
        its upload's state until the upload is completed)."""
        await self._tenant(tenant)
        self._refuse_on_backup()
        async with self.node.budget.holding(DEFAULT_WINDOW):
            part = await store_part(self.node, tenant, bucket, key, source)
        return {"chunks": [c.hex() for c in part.chunks], "size": part.size,
                "chunk_size": part.chunk_size, "lagging": list(part.lagging)}

    async def compose(self, tenant: str, bucket: str, key: str,
                      records: builtins.list[dict[str, Any]],
                      metadata: Mapping[str, str]) -> Version:
        await self._tenant(tenant)
        self._refuse_on_backup()
        try:
            parts = [StoredPart(tuple(bytes.fromhex(c) for c in r["chunks"]), int(r["size"]),
                                int(r["chunk_size"]), tuple(r["lagging"])) for r in records]
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"a part record of {bucket}/{key} is damaged: {exc}") from None
        return await compose_object(self.node, tenant, bucket, key, parts, metadata=metadata,
                                    request_id=random_bytes(16))

    async def retention(self, tenant: str, bucket: str, key: str,
                        version: str | None) -> tuple[Version, int]:
        """A version and when it may be purged (Unix ms, 0: no retention holds it)."""
        await self._tenant(tenant)
        return await retention_of(self.node, tenant, bucket, key, version)

    async def retain(self, tenant: str, bucket: str, key: str, version: str | None,
                     until_ms: int) -> tuple[Version, int]:
        """Retain a version (COMPLIANCE) until *until_ms* at least (S3's PutObjectRetention)."""
        await self._tenant(tenant)
        self._refuse_on_backup()
        return await retain_version(self.node, tenant, bucket, key, version, until_ms,
                                    random_bytes(16))

    def now_ms(self) -> int:
        """The retention clock."""
        return self.node.tenancy.now_ms()

    def piece_source(self, receive: trio.MemoryReceiveChannel[bytes],
                     trailer: Mapping[str, str]) -> ChannelSource:
        """A body another of the gateway's tasks pushes (a copy, an upload part copied)."""
        return ChannelSource(receive, trailer)

    async def resolve(self, tenant: str, bucket: str, key: str,
                      version: str | None) -> Version:
        await self._tenant(tenant)
        return await resolve(self.node, tenant, bucket, key, version)

    async def stream(self, tenant: str, version: Version, lo: int, hi: int,
                     sink: Callable[[memoryview], Awaitable[bool]]) -> bool:
        BODY_SIZE.set(hi - lo)
        return await stream_object(self.node, tenant, version, lo, hi, sink)

    async def delete(self, tenant: str, bucket: str, key: str) -> Version:
        await self._tenant(tenant)
        self._refuse_on_backup()
        marker, _ = await delete_object(self.node, tenant, bucket, key,
                                        random_bytes(16))
        return marker

    async def purge(self, tenant: str, bucket: str, key: str, version: str) -> Version:
        """Delete one version for good (S3's DeleteObject with a versionId); the version
        purged (a delete marker's ``tombstone`` says it was one)."""
        await self._tenant(tenant)
        self._refuse_on_backup()
        purged, _, _ = await purge_version(self.node, tenant, bucket, key, version,
                                           random_bytes(16))
        return purged

    async def versions(self, tenant: str, bucket: str, key: str) -> list[Version]:
        await self._tenant(tenant)
        try:
            return await object_versions(self.node, tenant, bucket, key)
        except NotFound:
            return []

    async def list(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                   versions: bool) -> tuple[list[dict[str, Any]], str | None]:
        await self._tenant(tenant)
        return await list_objects(self.node, tenant, bucket, prefix, after, limit, versions)

    async def buckets(self, tenant: str) -> builtins.list[str]:
        await self._tenant(tenant)
        names = {name for _, name in self.node.tenancy.open_buckets(tenant)}
        names.update(await self.node.reads.buckets_site(tenant))
        return sorted(names)

    async def bucket_exists(self, tenant: str, bucket: str) -> bool:
        await self._tenant(tenant)
        check_bucket(bucket)
        if self.node.tenancy.bucket_entry(tenant, bucket) is not None:
            return True
        entries, _ = await list_objects(self.node, tenant, bucket, "", "", 1, True)
        return bool(entries)

    async def create_bucket(self, tenant: str, bucket: str) -> bool:
        """Record the bucket in the replicated catalog (no retention); False if it existed.
        (A bucket also exists from its first put, as with the native protocol.)"""
        if await self.bucket_exists(tenant, bucket):
            return False
        tenancy = self.node.tenancy
        await tenancy.ensure_confirmed(self.node, tenant)
        await tenancy.apply_and_push(self.node, tenancy.create_bucket(tenant, bucket, 0))
        return True

    def audit(self, principal: Principal | None, op: str, bucket: str, key: str, version: str,
              bytes_in: int, bytes_out: int, outcome: str, peer: str) -> None:
        """One record per S3 request, like a native one: the access key is the identity, and
        the names are sealed under the tenant's key like a native request's (hdsd.audit)."""
        tenant = principal.tenant if principal else ""
        seal_names = self.node.audit.seal_names
        if seal_names is not None:
            try:
                bucket, key = seal_names(tenant, bucket, key)
            except Exception:  # never raise from here; but never record the names in clear
                bucket, key = "sealed:-", ""
        self.node.audit.record(
            identity=f"s3:{principal.name}" if principal else "s3:anonymous",
            role=principal.role if principal else "", tenant=tenant,
            op=f"S3:{op}", bucket=bucket, key=key, version=version,
            bytes_in=bytes_in, bytes_out=bytes_out, outcome=outcome, peer=peer)

    def retention_days(self, tenant: str, bucket: str) -> int:
        return self.node.tenancy.retention_days(tenant, bucket)

    async def set_retention_days(self, tenant: str, bucket: str, days: int) -> None:
        """Extend the bucket's retention (never shortened: RetentionLocked), replicated."""
        tenancy = self.node.tenancy
        await tenancy.ensure_confirmed(self.node, tenant)
        await tenancy.apply_and_push(self.node, tenancy.create_bucket(tenant, bucket, days))

    def held(self, tenant: str, bucket: str, key: str) -> bool:
        hold = self.node.tenancy.hold_entry(tenant, bucket, key)
        return hold is not None and hold.held

    async def set_hold(self, tenant: str, bucket: str, key: str, held: bool, by: str) -> None:
        tenancy = self.node.tenancy
        await tenancy.ensure_confirmed(self.node, tenant)
        await tenancy.apply_and_push(self.node, tenancy.set_hold(tenant, bucket, key, held, by))
