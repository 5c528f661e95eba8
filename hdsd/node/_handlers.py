"""Request handlers of one node: each turns one client request into store operations.

A handler runs as its own task with the request's *inbox* (the events of its rid). It ends by
sending exactly one ``Reply`` or ``ErrorReply`` (gets send ``GetStart``, body, ``End``). Errors
that are the client's or the situation's (:class:`HdsdError`) become ``ErrorReply`` and keep the
connection; anything else is a bug: logged with its traceback, reported as ``internal``.

Put theory: body bytes are cut into chunks as they arrive; each full chunk is sealed (hash,
compress, encrypt, in a worker thread when large) and committed to the log by a bounded set of
tasks, and its bytes are granted back to the client as credit only once durable — so the client
can never be more than one window ahead of the disk, and memory stays bounded whatever the blob
size. The version record is committed last, after every chunk it names is durable — except the
last chunk, which is committed with the version in one replicated write (one batch on every
replica, all or nothing): a version is never visible without its content, and a blob of one
chunk costs one round trip and one fsync per replica instead of two. The last chunk is known
once the body ends (the partial tail) or, for a body that ends on a chunk boundary, once the
declared size has arrived (no credit is needed after that, so holding it cannot stall the
client). Blobs up to ``inline_max`` ride inside the version record (one record, one fsync).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import (
    ConnectionLost,
    HdsdError,
    IntegrityError,
    InvalidRequest,
    NotFound,
    RequestTimeout,
    Unavailable,
)
from .._groups import single_error
from ..audit import ObservedSession, audit_request, peer_address
from ..pipeline import Chunker, open_in_thread, seal_in_thread
from ..replication import check_retry
from ..store import ChunkRecord, Version, parse_version_id
from ..transport import Identity, WireSession
from ..wire import (
    Cancel,
    Data,
    DeleteRequest,
    End,
    ErrorReply,
    GetRequest,
    GetStart,
    LayoutPush,
    ListBucketsRequest,
    ListRequest,
    MaintenanceRequest,
    Message,
    PutStart,
    Reply,
    SiteModeRequest,
    StatRequest,
    StatusRequest,
    VersionsRequest,
)
from ._admin_handlers import ADMIN_ROUTES, CATALOG_PEER_ROUTES
from ._auth import check_bucket, check_key
from ._health import cluster_status, tenant_status
from ._listing import merge_buckets, merge_page
from ._metrics import BODY_SIZE
from ._peer_handlers import PEER_ROUTES, layout_push, maintenance, site_mode
from ._reads import decode_version_cursor
from ._roles import check_role
from ._route import Route

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["handle_request"]

log = logging.getLogger("hdsd.node")

_CHUNKS_IN_FLIGHT = 4


async def handle_request(
    node: Node, session: WireSession, ident: Identity, msg: Message,
    inbox: trio.MemoryReceiveChannel[Message],
) -> None:
    rid: int = msg.rid  # type: ignore[attr-defined]
    # The audit hook: every client request (admin ones included) gets one record, written here
    # and nowhere else; node-to-node requests are replication traffic and are not audited.
    observed = None if ident.kind == "node" else ObservedSession(session)
    started = time.perf_counter()
    outcome = "cancelled"
    try:
        route = (NODE_ROUTES if ident.kind == "node" else CLIENT_ROUTES).get(type(msg))
        if route is None:
            raise InvalidRequest(f"{type(msg).__name__} is not a request a {ident.kind} may send")
        if observed is not None:
            # A node that lost its audit log first learns where its chain resumes (see
            # ._continuity); its first record must not be written before.
            await node.audit_continuity.ready.wait()
            if node.audit.failed is not None:
                raise Unavailable(f"the audit log cannot be written ({node.audit.failed}); "
                                  "no request is served untraced")
            session = observed.as_session()
        if ident.kind != "node":
            node.tenancy.check_live(ident.tenant or "")  # a shredded tenant is refused outright
            check_role(node, ident, msg)  # a backup node coordinates no client write
        route.admit(node, ident, msg)  # role, operator, layout: once, for every handler
        await route.handler(node, session, ident, msg, inbox)
        outcome = "ok"
    except HdsdError as exc:
        outcome = exc.code
        await _reply_error(session, rid, exc.code, exc.message)
    except Exception:
        outcome = "internal"
        log.exception("event=request_failed rid=%d op=%s", rid, type(msg).__name__)
        await _reply_error(session, rid, "internal", "internal error on the node; see its log")
    finally:
        node.metrics.request_done(msg, outcome, time.perf_counter() - started)
        session.close_inbox(rid)
        inbox.close()  # not aclose(): its checkpoint would cost every request a scheduler pass
        if observed is not None:
            audit_request(node.audit, ident, msg, observed, outcome, peer_address(session))


async def _reply_error(session: WireSession, rid: int, code: str, message: str) -> None:
    try:
        await session.send(ErrorReply(rid=rid, code=code, message=message))
    except HdsdError:
        pass  # the connection is gone: nobody to tell


async def _resolve(node: Node, tenant: str, bucket: str, key: str,
                   version: str | None) -> Version:
    wanted: tuple[int, str] | None = None
    if version is not None:
        try:
            wanted = parse_version_id(version)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    known = await node.versions_of(tenant, bucket, key)
    if wanted is None:
        found = known[-1] if known else None
    else:
        found = next((v for v in known if v.order == wanted), None)
    if found is None or found.tombstone:
        what = f"{bucket}/{key}" + (f" version {version}" if version else "")
        raise NotFound(f"{what} not found")
    return found


# -- put ---------------------------------------------------------------------------------------
async def _put(node: Node, session: WireSession, ident: Identity, msg: PutStart,
               inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    check_key(msg.key)
    tenant = ident.tenant or ""
    async with node.idempotent(tenant, msg.request_id, msg.bucket, msg.key) as previous:
        if previous is not None:
            # A retry: the same request only (RequestIdConflict otherwise, nothing written),
            # acknowledged only once the policy holds for the version the first attempt made.
            check_retry(previous, bucket=msg.bucket, key=msg.key, delete=False, size=msg.size)
            size, digest = await _hash_body(node, session, tenant, msg.rid, inbox)
            check_retry(previous, bucket=msg.bucket, key=msg.key, delete=False, size=size,
                        content_hash=digest)
            await _settle(node, previous)
            replayed = {**previous.public_info(), "replayed": True}
            await session.send(Reply(rid=msg.rid, body=replayed))
            return
        async with node.tenancy.admit_put(node, tenant, msg.bucket, msg.key, msg.size):
            version = await _receive_and_store(node, session, tenant, msg, inbox)
            BODY_SIZE.set(version.size)
    await session.send(Reply(rid=msg.rid, body=version.public_info()))


class _UploadDeadline:
    """An upload's deadline, which only real throughput moves: ``request_timeout_s`` after it
    began, plus the time its received bytes take at ``min_upload_rate_kib_s``. A client that
    trickles a byte now and then (each within the per-event timeout) gains microseconds per
    byte, so it cannot hold the upload — and the request id, and its queued body — open for
    long; a slow but real link still uploads any size."""

    def __init__(self, node: Node) -> None:
        self.deadline = trio.current_time() + node.config.request_timeout_s
        self.per_byte = 1 / (node.config.min_upload_rate_kib_s * 1024)

    def received(self, event: Message) -> Message:
        if isinstance(event, Data):
            self.deadline += len(event.data) * self.per_byte
        return event


async def _next_body_event(node: Node, inbox: trio.MemoryReceiveChannel[Message],
                           deadline: _UploadDeadline | None = None) -> Message:
    timeout = node.config.request_timeout_s
    with trio.move_on_after(timeout) as scope:
        if deadline is not None:
            scope.deadline = min(scope.deadline, deadline.deadline)
        try:
            event = await inbox.receive()
            return event if deadline is None else deadline.received(event)
        except trio.EndOfChannel:
            raise ConnectionLost("connection closed during the upload") from None
    if deadline is not None and trio.current_time() >= deadline.deadline:
        raise RequestTimeout(f"upload slower than {node.config.min_upload_rate_kib_s:g} KiB/s "
                             "past its deadline; nothing was stored")
    raise RequestTimeout(f"no upload data for {timeout:g} s; nothing was stored")


async def _hash_body(node: Node, session: WireSession, tenant: str, rid: int,
                     inbox: trio.MemoryReceiveChannel[Message]) -> tuple[int, bytes]:
    """Receive a retried put's body without storing it: its size and keyed content hash,
    to check that the retry carries the content the request id was first used for."""
    hasher = node.codec(tenant).content_hasher()
    size = 0
    deadline = _UploadDeadline(node)
    while True:
        event = await _next_body_event(node, inbox, deadline)
        if isinstance(event, Data):
            hasher.update(event.data)
            size += len(event.data)
            await session.consumed(rid, len(event.data))
        elif isinstance(event, End):
            return size, hasher.digest()
        elif isinstance(event, Cancel):
            raise InvalidRequest("upload cancelled by the client; nothing was stored")
        else:
            raise InvalidRequest(f"unexpected {type(event).__name__} during an upload")


async def _settle(node: Node, previous: Version) -> None:
    """Drive a retried request's version to the replicas the write policy needs (hinting
    the others); raises like a first attempt when the policy cannot be met."""
    replicas = node.replicator.replicas_for(previous.tenant, previous.bucket, previous.key)
    lagging = await node.replicator.settle(replicas, previous)
    await node.replicator.keep_hints(lagging, [previous])


async def _receive_and_store(node: Node, session: WireSession, tenant: str, msg: PutStart,
                             inbox: trio.MemoryReceiveChannel[Message]) -> Version:
    codec = node.codec(tenant)
    chunker = Chunker(node.config.chunk_size)
    hasher = codec.content_hasher()
    ids: list[bytes] = []
    size = 0
    inline: bytes | None = None
    last: bytes | None = None  # the final chunk, written with the version record
    limiter = trio.Semaphore(_CHUNKS_IN_FLIGHT)
    replicas = node.replicator.replicas_for(tenant, msg.bucket, msg.key)
    lagging: set[str] = set()

    async def store_chunk(slot: int, piece: bytes) -> None:
        try:
            sealed = await seal_in_thread(codec, piece)
            record = ChunkRecord(tenant=tenant, chunk_id=sealed.chunk_id, payload=sealed.payload)
            # Credit goes back only once the write policy holds for this chunk: the client can
            # never run more than one window ahead of the slowest replica the policy waits for.
            lagging.update(await node.replicator.write(replicas, [record], []))
            ids[slot] = sealed.chunk_id
            await session.consumed(msg.rid, len(piece))
        finally:
            limiter.release()

    async def start_chunk(nursery: trio.Nursery, piece: bytes) -> None:
        await limiter.acquire()
        ids.append(b"")
        nursery.start_soon(store_chunk, len(ids) - 1, piece)

    # Events already queued: a small put usually arrives whole (PutStart, Data, End in one
    # write), and then needs no tasks at all: one seal, one replicated write.
    early: deque[Message] = deque()
    while not early or not isinstance(early[-1], (End, Cancel)):
        try:
            early.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    if early and isinstance(early[-1], End) and all(isinstance(e, Data) for e in
                                                    list(early)[:-1]):
        body = b"".join(e.data for e in early if isinstance(e, Data))
        if len(body) <= node.config.inline_max and (msg.size is None or msg.size == len(body)):
            sealed = await seal_in_thread(codec, body)
            # One chunk: its id is the keyed hash of the whole blob, i.e. the content hash.
            version = Version(
                tenant=tenant, bucket=msg.bucket, key=msg.key, hlc=node.clock.now(),
                node=node.config.name, size=len(body), content_hash=sealed.chunk_id,
                chunks=(sealed.chunk_id,), inline=sealed.payload, metadata=dict(msg.metadata),
                request_id=msg.request_id, chunk_size=node.config.chunk_size)
            lagging.update(await node.replicator.write(replicas, [], [version]))
            await node.replicator.keep_hints(lagging, [version])
            return version

    deadline = _UploadDeadline(node)

    async def next_event() -> Message:
        return deadline.received(early.popleft()) if early else \
            await _next_body_event(node, inbox, deadline)

    with single_error():
        async with trio.open_nursery() as nursery:
            while True:
                event = await next_event()
                if isinstance(event, End):
                    break
                if isinstance(event, Cancel):
                    raise InvalidRequest("upload cancelled by the client; nothing was stored")
                if not isinstance(event, Data):
                    raise InvalidRequest(f"unexpected {type(event).__name__} during an upload")
                size += len(event.data)
                if msg.size is not None and size > msg.size:
                    raise InvalidRequest(f"body is longer than the declared {msg.size} bytes; "
                                         "nothing was stored")
                hasher.update(event.data)
                pieces = chunker.feed(event.data)
                if pieces and size == msg.size and size % chunker.chunk_size == 0:
                    last = pieces.pop()  # the declared body is complete: this is its last chunk
                for piece in pieces:
                    await start_chunk(nursery, piece)
            if msg.size is not None and size != msg.size:
                raise InvalidRequest(f"body has {size} bytes, {msg.size} were declared; "
                                     "nothing was stored")
            tail = chunker.finish()
            if not ids and tail is not None and len(tail) <= node.config.inline_max:
                sealed = await seal_in_thread(codec, tail)
                ids.append(sealed.chunk_id)
                inline = sealed.payload
            elif tail:
                last = tail
    if msg.size is None:
        node.tenancy.check_quota(tenant, size)  # the body's size was not declared up front
    # Every chunk named below is durable but the last one, which rides in the version's own
    # write: one batch on every replica (all or nothing), so the version is still never
    # visible without its content, and a put of one chunk is one replicated write, not two.
    with_version: list[ChunkRecord] = []
    if last is not None:
        sealed = await seal_in_thread(codec, last)
        ids.append(sealed.chunk_id)
        with_version.append(ChunkRecord(tenant=tenant, chunk_id=sealed.chunk_id,
                                        payload=sealed.payload))
    version = Version(
        tenant=tenant, bucket=msg.bucket, key=msg.key, hlc=node.clock.now(),
        node=node.config.name, size=size, content_hash=hasher.digest(), chunks=tuple(ids),
        inline=inline, metadata=dict(msg.metadata), request_id=msg.request_id,
        chunk_size=node.config.chunk_size,
    )
    lagging.update(await node.replicator.write(replicas, with_version, [version]))
    await node.replicator.keep_hints(lagging, [version])
    return version


# -- get ---------------------------------------------------------------------------------------
def _byte_range(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    lo = 0 if start is None else start
    hi = size if end is None else min(end, size)
    if lo < 0 or lo > size or hi < lo:
        raise InvalidRequest(f"range {start}-{end} is outside the object's {size} bytes")
    return lo, hi


async def _get(node: Node, session: WireSession, ident: Identity, msg: GetRequest,
               inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    check_key(msg.key)
    tenant = ident.tenant or ""
    version = await _resolve(node, tenant, msg.bucket, msg.key, msg.version)
    lo, hi = _byte_range(version.size, msg.start, msg.end)
    BODY_SIZE.set(hi - lo)
    codec = node.codec(tenant)
    info = {**version.public_info(), "start": lo, "end": hi}
    timeout = node.config.request_timeout_s
    # Which slice of which chunk the range needs, in order.
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
            plain = await node.chunk_payload(tenant, msg.bucket, msg.key, chunk_id, codec)
        if len(plain) != chunk_len:
            raise IntegrityError(f"chunk {index} of {msg.bucket}/{msg.key} has {len(plain)} "
                                 f"bytes, expected {chunk_len}")
        return plain

    if len(wanted) == 1 and await _get_one_chunk(session, msg, info, read, wanted[0], timeout):
        return
    # Read and decrypt the next chunks while this one is sent: the read-ahead is bounded (three
    # chunks), so a slow reader still holds the node to a few MiB for this request.
    send_ready, receive_ready = trio.open_memory_channel[bytes](2)

    async def produce() -> None:
        async with send_ready:
            for index, chunk_id, chunk_len, _, _ in wanted:
                await send_ready.send(await read(index, chunk_id, chunk_len))

    await session.send(GetStart(rid=msg.rid, info=info))
    with single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive_ready:
                for _, _, _, slice_lo, slice_hi in wanted:
                    plain = await receive_ready.receive()
                    if _cancelled(inbox):
                        nursery.cancel_scope.cancel()
                        await session.send(Cancel(rid=msg.rid))  # our final: the rid is free
                        return
                    with trio.move_on_after(timeout) as scope:
                        await session.send_body(msg.rid, memoryview(plain)[slice_lo:slice_hi])
                    if scope.cancelled_caught:
                        raise RequestTimeout(f"client read nothing for {timeout:g} s; "
                                             "download aborted")
    await session.send(End(rid=msg.rid))


_ONE_WRITE_MAX = 1 << 20  # a get body this small may go out in one Data frame


async def _get_one_chunk(session: WireSession, msg: GetRequest, info: dict[str, Any],
                         read: Callable[[int, bytes, int], Awaitable[bytes]],
                         wanted: tuple[int, bytes, int, int, int], timeout: float) -> bool:
    """A range within one chunk (every small object): read it first, then send GetStart, the
    body and End in one write — one TLS record and one wake-up for the client instead of three,
    and no read-ahead task. False (nothing sent) when the body is over one frame or the
    client's window; the caller then streams it."""
    index, chunk_id, chunk_len, slice_lo, slice_hi = wanted
    if slice_hi - slice_lo > min(_ONE_WRITE_MAX, session.conn.send_credit_available(msg.rid)):
        return False
    plain = await read(index, chunk_id, chunk_len)
    body = [Data(rid=msg.rid, data=bytes(memoryview(plain)[slice_lo:slice_hi]))] \
        if slice_hi > slice_lo else []
    with trio.move_on_after(timeout) as scope:
        await session.send_many([GetStart(rid=msg.rid, info=info), *body, End(rid=msg.rid)])
    if scope.cancelled_caught:
        raise RequestTimeout(f"client read nothing for {timeout:g} s; download aborted")
    return True


def _cancelled(inbox: trio.MemoryReceiveChannel[Message]) -> bool:
    try:
        return isinstance(inbox.receive_nowait(), Cancel)
    except (trio.WouldBlock, trio.EndOfChannel):
        return False


# -- metadata requests -------------------------------------------------------------------------
async def _stat(node: Node, session: WireSession, ident: Identity, msg: StatRequest,
                inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    check_key(msg.key)
    version = await _resolve(node, ident.tenant or "", msg.bucket, msg.key, msg.version)
    await session.send(Reply(rid=msg.rid, body=version.public_info()))


async def _list(node: Node, session: WireSession, ident: Identity, msg: ListRequest,
                inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    tenant = ident.tenant or ""
    limit = max(1, min(msg.limit, 1000))
    if msg.versions and msg.after:
        decode_version_cursor(msg.after)  # refuse a malformed cursor before any fan-out
    # Each node of the site holds the keys placed on it: merge their parts, each bounded by
    # count and bytes; the merge is exact up to the smallest end of a part that has more.
    parts = await node.list_site(tenant, msg.bucket, msg.prefix, msg.after, limit,
                                 msg.versions)
    entries, cursor = merge_page(parts, versions=msg.versions, limit=limit)
    await session.send(Reply(rid=msg.rid, body={"entries": entries, "next": cursor}))


async def _delete(node: Node, session: WireSession, ident: Identity, msg: DeleteRequest,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    check_key(msg.key)
    tenant = ident.tenant or ""
    replayed = False
    async with node.idempotent(tenant, msg.request_id, msg.bucket, msg.key) as previous:
        if previous is None:
            await _resolve(node, tenant, msg.bucket, msg.key, None)  # NotFound if nothing
            await node.tenancy.check_write(node, tenant, msg.bucket, msg.key, size=None,
                                           delete=True)
            previous = Version(
                tenant=tenant, bucket=msg.bucket, key=msg.key, hlc=node.clock.now(),
                node=node.config.name, size=0, content_hash=b"", tombstone=True,
                request_id=msg.request_id)
            replicas = node.replicator.replicas_for(tenant, msg.bucket, msg.key)
            lagging = await node.replicator.write(replicas, [], [previous])
            await node.replicator.keep_hints(lagging, [previous])
        else:
            check_retry(previous, bucket=msg.bucket, key=msg.key, delete=True)
            await _settle(node, previous)
            replayed = True
    await session.send(Reply(rid=msg.rid, body={**previous.public_info(), "replayed": replayed}))


async def _versions(node: Node, session: WireSession, ident: Identity, msg: VersionsRequest,
                    inbox: trio.MemoryReceiveChannel[Message]) -> None:
    check_bucket(msg.bucket)
    check_key(msg.key)
    found = await node.versions_of(ident.tenant or "", msg.bucket, msg.key)
    if not found:
        raise NotFound(f"{msg.bucket}/{msg.key} not found")
    await session.send(Reply(rid=msg.rid, body={"versions": [v.public_info() for v in found]}))


async def _status(node: Node, session: WireSession, ident: Identity, msg: StatusRequest,
                  inbox: trio.MemoryReceiveChannel[Message]) -> None:
    if not node.tenancy.is_operator(ident.tenant, ident.role):
        # Addresses, disks and every tenant's figures are the operator's: a tenant sees its own.
        await session.send(Reply(rid=msg.rid, body=await tenant_status(node, ident.tenant or "")))
        return
    # This node and every other one, asked concurrently (a dead node shows as down).
    body = {**node.status(), "nodes": await cluster_status(node)}
    await session.send(Reply(rid=msg.rid, body=body))


async def _list_buckets(node: Node, session: WireSession, ident: Identity,
                        msg: ListBucketsRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    tenant = ident.tenant or ""
    buckets, cursor = merge_buckets(await node.list_buckets_site(tenant, msg.after))
    await session.send(Reply(rid=msg.rid, body={"tenant": tenant, "buckets": buckets,
                                                "next": cursor}))


# The two tables of the node, each built here once from its parts (no module adds to
# another's table): what a client may send, and what another node may send.
CLIENT_ROUTES: dict[type[Message], Route] = {
    PutStart: Route(_put, op="put"),
    GetRequest: Route(_get, op="get"),
    StatRequest: Route(_stat, op="stat"),
    ListRequest: Route(_list, op="list"),
    DeleteRequest: Route(_delete, op="delete"),
    VersionsRequest: Route(_versions, op="versions"),
    StatusRequest: Route(_status, op="status"),
    SiteModeRequest: Route(site_mode, operator="changes a site's mode"),
    MaintenanceRequest: Route(maintenance, operator="starts a repair or a scrub"),
    LayoutPush: Route(layout_push, operator="changes the cluster layout"),
    ListBucketsRequest: Route(_list_buckets, op="list"),
    **ADMIN_ROUTES,
}
NODE_ROUTES: dict[type[Message], Route] = {**PEER_ROUTES, **CATALOG_PEER_ROUTES}
