"""``GetMany``: many versions' bodies in one download, for a client's restore or export.

A get per object pays a request, a ``GetStart`` map, a reply frame or three, a worker-thread
hop per chunk and the client's round trip; a restore of a tenant is mostly that. Here one
request names up to :data:`~hdsd.wire.MAX_GET_MANY` versions; the node resolves them all,
answers one ``GetStart`` saying each one's version and size (or why it is refused), then sends
their bytes back to back: chunks read and opened a few MiB per worker-thread hop, small objects
gathered into frames of about a MiB, under the download's credit like any get.

Each item is a get of its own for everything that matters: resolved in the tenant of the
client's certificate (a key of another tenant is simply not found there), the route checks the
role may ``get``, and every item gets an audit record (op ``GetMany``, its bucket, key and
version, the bytes sent and its outcome) besides the request's own record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from .._deadline import deadline
from .._errors import HdsdError, IntegrityError, NotFound
from ..audit import audit_item, peer_address
from ..pipeline import ChunkCodec, pipeline_limiter
from ..store import Store, Version
from ..transport import Identity, WireSession
from ..wire import Cancel, End, GetMany, GetStart, Message
from ._metrics import BODY_SIZE
from ._objects import resolve

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["get_many"]

# The GetStart's items are bounded by their encoded size (about this much): items past it are
# left for the client's next request, so the answer always fits one frame.
_INFO_BYTES = 1 << 20
# Chunks read and opened in one worker-thread hop (about this many bytes), and at most two such
# batches held at once (the one being sent, the next being read): the request's memory.
_BATCH_BYTES = 4 << 20
# Bytes of small objects gathered into one Data frame (a frame per 4 KiB object would cost
# both ends a frame each); a larger piece goes out as its own frame, uncopied.
_FRAME_BYTES = 1 << 20
_ERROR_TEXT = 512
# With ``sha256``, the items hashed for one answer stop at about this many bytes (at least one
# item): the client waits for the GetStart while they are read.
_HASH_BYTES = 256 << 20


async def get_many(node: Node, session: WireSession, ident: Identity, msg: GetMany,
                   inbox: trio.MemoryReceiveChannel[Message]) -> None:
    tenant = ident.tenant or ""
    peer = peer_address(session)
    items: list[dict[str, Any]] = []
    served: list[Version | None] = []
    info_bytes = hashed = 0
    op = "GetManySha256" if msg.sha256 else "GetMany"
    for bucket, key, version in msg.items:
        try:
            found = await resolve(node, tenant, bucket, key, version)
        except HdsdError as exc:
            items.append({"error": exc.code, "message": exc.message[:_ERROR_TEXT]})
            served.append(None)
            # Refused items are audited at once: a probe of names is a read attempt too.
            audit_item(node.audit, ident, bucket, key, version or "", 0, exc.code, peer, op)
        else:
            items.append({"version": found.version_id, "size": found.size,
                          "content_hash": found.content_hash.hex()})
            served.append(found)
            hashed += found.size
            if found.size == 0 and not msg.sha256:  # nothing to send: served when announced
                audit_item(node.audit, ident, bucket, key, found.version_id, 0, "ok", peer)
        info_bytes += 64 + len(key.encode()) + len(bucket)
        if info_bytes >= _INFO_BYTES or (msg.sha256 and hashed >= _HASH_BYTES):
            break
    if msg.sha256:
        await _answer_digests(node, session, ident, msg, items, served, peer)
        return
    total = sum(v.size for v in served if v is not None)
    BODY_SIZE.set(total)
    # What it holds at once (see ._budget): the batch being sent, the next one read ahead,
    # and a frame of gathered small objects.
    await node.budget.take(id(msg), min(total, 2 * _BATCH_BYTES + _FRAME_BYTES))
    await session.send(GetStart(rid=msg.rid, info={"items": items}))
    sender = _Sender(node, session, ident, msg.rid, inbox, peer)
    codec = node.codec(tenant) if total else None
    try:
        if codec is not None:
            await sender.run(codec, [v for v in served if v is not None])
        if sender.cancelled:
            await session.send(Cancel(rid=msg.rid))  # our final: the rid is free
            return
        await sender.flush()
    finally:
        sender.close()
    await session.send(End(rid=msg.rid))


async def _answer_digests(node: Node, session: WireSession, ident: Identity, msg: GetMany,
                          items: list[dict[str, Any]], served: list[Version | None],
                          peer: str) -> None:
    """``sha256``: each served version read, opened and hashed here (in worker threads, a
    batch per hop), the digests in the GetStart, and no body."""
    versions = [v for v in served if v is not None]
    codec = node.codec(ident.tenant or "") if versions else None
    digests = {id(v): hashlib.sha256() for v in versions}
    store = node.store
    for batch in _batches(versions):
        done = 0
        while done < len(batch):
            assert codec is not None
            done = await trio.to_thread.run_sync(_hash_from, store, codec, batch, done, digests,
                                                 limiter=pipeline_limiter())
            if done < len(batch):  # read through the replicas (and repaired), as a get would
                version, index, _ = batch[done]
                digests[id(version)].update(await node.reads.chunk_payload(
                    version.tenant, version.bucket, version.key, version.chunks[index], codec))
                done += 1
    for entry, found in zip(items, served, strict=True):
        if found is not None:
            entry["sha256"] = digests[id(found)].hexdigest()
            audit_item(node.audit, ident, found.bucket, found.key, found.version_id, 0, "ok",
                       peer, "GetManySha256")
    await session.send_many([GetStart(rid=msg.rid, info={"items": items}), End(rid=msg.rid)])


def _hash_from(store: Store, codec: ChunkCodec, batch: list[tuple[Version, int, int]],
               start: int, digests: dict[int, Any]) -> int:
    """Hash *batch*'s chunks from *start* on (blocking); the index of the first one missing or
    damaged here, ``len(batch)`` when none was."""
    for i in range(start, len(batch)):
        version, index, length = batch[i]
        chunk_id = version.chunks[index]
        try:
            sealed = version.inline if version.inline is not None else \
                store.read_chunk(version.tenant, chunk_id)
            plain = codec.open(chunk_id, sealed)
        except (NotFound, IntegrityError):
            if version.inline is not None:
                raise
            return i
        if len(plain) != length:
            raise IntegrityError(f"chunk {index} of {version.bucket}/{version.key} has "
                                 f"{len(plain)} bytes, expected {length}")
        digests[id(version)].update(plain)
    return len(batch)


class _Sender:
    """Sends the versions' bytes in order and audits each as it ends (or where it stopped)."""

    def __init__(self, node: Node, session: WireSession, ident: Identity, rid: int,
                 inbox: trio.MemoryReceiveChannel[Message], peer: str) -> None:
        self.node, self.session, self.ident, self.rid = node, session, ident, rid
        self.inbox, self.peer = inbox, peer
        self.pending: list[bytes] = []  # small pieces gathered for the next frame
        self.pending_bytes = 0
        self.current: Version | None = None  # the version whose bytes are being sent
        self.sent = 0  # ... and how many of them so far
        self.cancelled = False
        timeout = node.config.request_timeout_s
        self.timeout = timeout
        self.stalled = f"client read nothing for {timeout:g} s; download aborted"

    async def run(self, codec: ChunkCodec, versions: list[Version]) -> None:
        batches = list(_batches(versions))
        send, receive = trio.open_memory_channel[list[bytes]](1)

        async def read_ahead() -> None:
            async with send:
                for batch in batches:
                    await send.send(await self._open(codec, batch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            async with receive:
                for batch in batches:
                    plains = await receive.receive()
                    for (version, index, _), plain in zip(batch, plains, strict=True):
                        if not await self._piece(version, index, plain):
                            nursery.cancel_scope.cancel()
                            return

    async def _open(self, codec: ChunkCodec,
                    batch: list[tuple[Version, int, int]]) -> list[bytes]:
        """The plaintext of each chunk of *batch*, read and opened in one worker-thread hop;
        a chunk missing or damaged here is then read through the replicas (and repaired), as
        a get would."""
        store = self.node.store

        def read_all() -> list[bytes | HdsdError]:
            out: list[bytes | HdsdError] = []
            for version, index, _ in batch:
                chunk_id = version.chunks[index]
                try:
                    sealed = version.inline if version.inline is not None else \
                        store.read_chunk(version.tenant, chunk_id)
                    out.append(codec.open(chunk_id, sealed))
                except (NotFound, IntegrityError) as exc:
                    out.append(exc)
            return out

        opened = await trio.to_thread.run_sync(read_all, limiter=pipeline_limiter())
        plains: list[bytes] = []
        for (version, index, length), plain in zip(batch, opened, strict=True):
            if not isinstance(plain, bytes):
                if version.inline is not None:
                    raise plain
                plain = await self.node.reads.chunk_payload(
                    version.tenant, version.bucket, version.key, version.chunks[index], codec)
            if len(plain) != length:
                raise IntegrityError(f"chunk {index} of {version.bucket}/{version.key} has "
                                     f"{len(plain)} bytes, expected {length}")
            plains.append(plain)
        return plains

    async def _piece(self, version: Version, index: int, plain: bytes) -> bool:
        """Send chunk *index* of *version*; False if the client cancelled."""
        if _cancelled(self.inbox):
            self.cancelled = True
            return False
        if self.current is not version:
            self.current, self.sent = version, 0
        if len(plain) >= _FRAME_BYTES:
            await self.flush()
            with deadline(self.timeout, self.stalled):
                await self.session.send_body(self.rid, plain)
        else:
            self.pending.append(plain)
            self.pending_bytes += len(plain)
            if self.pending_bytes >= _FRAME_BYTES:
                await self.flush()
        self.sent += len(plain)
        if self.sent == version.size:
            self._audit(version, self.sent, "ok")
            self.current = None
        return True

    async def flush(self) -> None:
        if not self.pending:
            return
        body = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        with deadline(self.timeout, self.stalled):
            await self.session.send_body(self.rid, body)

    def _audit(self, version: Version, sent: int, outcome: str) -> None:
        audit_item(self.node.audit, self.ident, version.bucket, version.key,
                   version.version_id, sent, outcome, self.peer)

    def close(self) -> None:
        """A version cut short (cancelled, the connection lost, a chunk unreadable) is audited
        with what was sent of it (some of it may still sit in the unsent frame)."""
        if self.current is not None:
            self._audit(self.current, max(0, self.sent - self.pending_bytes), "cancelled")
            self.current = None


def _chunk_lengths(version: Version) -> Iterator[int]:
    if version.inline is not None:
        yield version.size
        return
    step = version.chunk_size or version.size
    offset = 0
    for _ in version.chunks:
        yield min(step, version.size - offset)
        offset += step


def _batches(versions: list[Version]) -> Iterator[list[tuple[Version, int, int]]]:
    """``(version, chunk index, plaintext length)`` of every chunk to send, in order, cut
    into batches of about :data:`_BATCH_BYTES`. An empty version sends nothing (it was
    audited when announced)."""
    batch: list[tuple[Version, int, int]] = []
    size = 0
    for version in versions:
        if version.size == 0:
            continue
        for index, length in enumerate(_chunk_lengths(version)):
            batch.append((version, index, length))
            size += length
            if size >= _BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _cancelled(inbox: trio.MemoryReceiveChannel[Message]) -> bool:
    try:
        return isinstance(inbox.receive_nowait(), Cancel)
    except (trio.WouldBlock, trio.EndOfChannel):
        return False

