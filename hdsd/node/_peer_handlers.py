"""Requests from the other nodes (replication, repair reads) and the site-mode admin request.

Peer requests are accepted only from node certificates of this cluster's layout, and only when
the sender's layout id equals ours (``same_layout`` of their :class:`~._route.Route`, checked
before the handler runs): two nodes that place data differently must not mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import trio

from .._deadline import deadline
from .._errors import IntegrityError, InvalidRequest, PermissionDenied
from ..cluster import LayoutRecord
from ..store import Bell, ChunkRecord, CommitTicket, replicated_version
from ..transport import Identity, WireSession
from ..wire import (
    AuditShip,
    Cancel,
    End,
    FetchChunk,
    FetchChunks,
    FetchVersions,
    GetStart,
    LayoutPush,
    LeafDiff,
    ListBucketsPeer,
    ListPeer,
    MaintenanceRequest,
    Message,
    PeerStatusRequest,
    Replicate,
    Reply,
    SiteModeName,
    SiteModeRequest,
    TreeLevel,
)
from ._route import Route

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["PEER_ROUTES", "layout_push", "maintenance", "replicate_now", "site_mode"]


async def layout_push(node: Node, session: WireSession, ident: Identity, msg: LayoutPush,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """A layout version from the operator (``hdsd layout apply``; its route checks it is the
    operator) or a peer: adopt it if newer; the reply is this node's record and migration
    state either way. Not checked against this node's layout id: it is how a node learns a
    new one."""
    try:
        record = LayoutRecord.from_wire(msg.record)
    except ValueError as exc:
        raise InvalidRequest(f"malformed layout record: {exc}") from None
    adopted = await node.layouts.offer(record, ident.name, operator=ident.kind != "node")
    await session.send(Reply(rid=msg.rid, body={**node.layouts.reply(), "adopted": adopted}))


async def _replicate(node: Node, session: WireSession, ident: Identity, msg: Replicate,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    try:
        chunks = [ChunkRecord(tenant=t, chunk_id=c, payload=p) for t, c, p in msg.chunks]
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"malformed chunk record from {ident.name}: {exc}") from None
    # The peers' share of the body budget, released as the request ends (see ._budget).
    await node.budget.take(id(msg), sum(len(c.payload) for c in chunks), peer=True)
    versions = [replicated_version(v) for v in msg.versions]
    for v in versions:
        node.clock.observe(v.hlc)
    node.replicated_over.add(session)
    # Chunks first, then the versions naming them, in one batch: one fdatasync, all or nothing.
    try:
        await node.store.commit([*chunks, *versions])
    except PermissionDenied:
        # No key here for a tenant the sender writes: this node joined the layout a moment
        # ago and its catalog sync has not run since (its peers refused it until then).
        # The sender holds the catalog: take it now, and commit once more.
        await node.tenancy.sync_with(node, ident.name)
        await node.store.commit([*chunks, *versions])
    await session.send(Reply(rid=msg.rid, body={}))


def replicate_now(node: Node, session: WireSession, msg: Replicate,
                  bell: Bell) -> CommitTicket | None:
    """Queue a peer's Replicate of versions alone (no chunks: small puts, whose data is
    inline) to this node's log writer from the connection's reader, without a task: the
    commit rings the connection's *bell* once it is over, and the Reply is written by the
    connection's acknowledger (``Connections._ack_replicates``), which waits on that bell, in
    arrival order — the log writer makes batches durable in the order they were queued.
    Per replicated small put this spares the replica a task (its spawn, its first
    scheduling and its exit) and the request's wrappers: with the sealing of the versions,
    what its event loop spent most on before the fsync.

    The same work as :func:`_replicate`, which answers everything else: None when this
    Replicate carries chunks (their share of the body budget may have to be waited for),
    is placed under a layout this node does not accept, or fails before queueing (a tenant
    without a key here, a malformed version, the store failed): its task then meets the
    failure again and answers it. Nothing is changed before that point but the clock
    (observing an HLC twice is harmless)."""
    if msg.chunks or not node.layouts.record.accepts(msg.layout):
        return None
    try:
        # Each as sealed by the coordinator when it sent it so (and it holds here): the names
        # are not sealed a second time (see hdsd.store.ReplicatedVersion).
        versions = [replicated_version(v) for v in msg.versions]
        for v in versions:
            node.clock.observe(v.hlc)
        ticket = node.store.start_commit(versions, bell)
    except Exception:
        return None
    node.replicated_over.add(session)
    return ticket


async def _fetch_versions(node: Node, session: WireSession, ident: Identity, msg: FetchVersions,
                          inbox: trio.MemoryReceiveChannel[Message]) -> None:
    found = node.store.versions(msg.tenant, msg.bucket, msg.key)
    await session.send(Reply(rid=msg.rid, body={"versions": [v.to_wire() for v in found]}))


async def _fetch_chunk(node: Node, session: WireSession, ident: Identity, msg: FetchChunk,
                       inbox: trio.MemoryReceiveChannel[Message]) -> None:
    payload = await node.read_payload(msg.tenant, msg.chunk_id)
    await session.send(Reply(rid=msg.rid, body={"payload": payload}))


# One FetchChunks download carries about this much (or one chunk, if larger): the sender reads
# it before its GetStart (which lists the sizes), so this bounds its memory per download.
_DOWNLOAD_BYTES = 8 << 20
# A record up to this size goes as one Data frame (under the frame limit, and half the
# receiver's default window, so its credit always comes back); a larger one is split.
_WHOLE_FRAME = 4 << 20


def _read_records(node: Node, chunks: list[Any]) -> list[bytes]:
    """The sealed records of a prefix of *chunks* (about :data:`_DOWNLOAD_BYTES`), in one
    worker-thread hop instead of one per chunk."""
    out: list[bytes] = []
    size = 0
    for tenant, chunk_id in chunks:
        if size >= _DOWNLOAD_BYTES:
            break
        out.append(node.store.read_chunk(tenant, chunk_id))
        size += len(out[-1])
    return out


async def _fetch_chunks(node: Node, session: WireSession, ident: Identity, msg: FetchChunks,
                        inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """Chunk records as a download's body: no msgpack map per chunk, no copy of the payload
    into one, and one thread hop per ~8 MiB read (see :class:`~hdsd.wire.FetchChunks`)."""
    records = await trio.to_thread.run_sync(_read_records, node, msg.chunks)
    await session.send(GetStart(rid=msg.rid, info={"sizes": [len(r) for r in records]}))
    timeout = node.config.request_timeout_s
    whole = min(_WHOLE_FRAME, session.conn.max_frame - 64,
                (session.conn.their_hello.window if session.conn.their_hello else 0) // 2)
    for i, record in enumerate(records):
        if _cancelled(inbox):
            await session.send(Cancel(rid=msg.rid))  # our final: the rid is free
            return
        records[i] = b""  # handed over: not held here past its frame
        with deadline(timeout, f"{ident.name} read nothing for {timeout:g} s; "
                               "chunk download aborted"):
            if len(record) <= whole:
                await session.send_whole(msg.rid, record)
            else:
                await session.send_body(msg.rid, record)
    await session.send(End(rid=msg.rid))


def _cancelled(inbox: trio.MemoryReceiveChannel[Message]) -> bool:
    try:
        return isinstance(inbox.receive_nowait(), Cancel)
    except (trio.WouldBlock, trio.EndOfChannel):
        return False


async def _list_peer(node: Node, session: WireSession, ident: Identity, msg: ListPeer,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    # (see ask())
    part = await trio.to_thread.run_sync(node.reads.list_local, msg.tenant, msg.bucket,
                                         msg.prefix, msg.after, msg.limit, msg.versions)
    await session.send(Reply(rid=msg.rid, body={"versions": [v.to_wire() for v in part.versions],
                                                "more": part.more}))


async def _list_buckets_peer(node: Node, session: WireSession, ident: Identity,
                             msg: ListBucketsPeer,
                             inbox: trio.MemoryReceiveChannel[Message]) -> None:
    part = node.reads.list_buckets_local(msg.tenant, msg.after)
    await session.send(Reply(rid=msg.rid, body={"buckets": part.buckets, "more": part.more}))


async def _peer_status(node: Node, session: WireSession, ident: Identity,
                       msg: PeerStatusRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    await session.send(Reply(rid=msg.rid, body=node.status()))


async def site_mode(node: Node, session: WireSession, ident: Identity, msg: SiteModeRequest,
                    inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """The operator: degrade or restore this node's site."""
    if msg.site != node.config.site:
        raise InvalidRequest(f"this node is in site {node.config.site}, not {msg.site}")
    if msg.mode == "degraded" and not msg.reason.strip():
        raise InvalidRequest("say why the site is degraded (--reason)")
    by = f"{ident.name}@{ident.tenant}"
    wanted = cast(SiteModeName, msg.mode)  # SiteModeRequest checked it is one of SITE_MODES
    mode = node.mode.set(wanted, reason=msg.reason or "restored by an operator", by=by)
    if msg.mode == "normal":
        # Writes accepted alone must now be compared with the other site, at once.
        node.doubts.doubt(None, "the site was restored to normal")
    await session.send(Reply(rid=msg.rid, body={"node": node.config.name,
                                                "write_policy": node.replicator.effective_policy(),
                                                **_mode_body(mode)}))


async def _tree_level(node: Node, session: WireSession, ident: Identity, msg: TreeLevel,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    body = await node.maintenance.sync.tree_level(ident.name, msg.depth, msg.indices)
    await session.send(Reply(rid=msg.rid, body=body))


async def _leaf_diff(node: Node, session: WireSession, ident: Identity, msg: LeafDiff,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    body = await node.maintenance.sync.leaf_diff(ident.name, msg.leaves)
    await session.send(Reply(rid=msg.rid, body=body))


async def maintenance(node: Node, session: WireSession, ident: Identity,
                      msg: MaintenanceRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """The operator: start a repair or a scrub on this node now."""
    await session.send(Reply(rid=msg.rid, body=node.maintenance.start(msg.task)))


def _mode_body(mode: Any) -> dict[str, Any]:
    return {"mode": mode.mode, "reason": mode.reason, "by": mode.by, "since": mode.since}


async def _audit_ship(node: Node, session: WireSession, ident: Identity, msg: AuditShip,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """Keep a batch of another node's audit records (see :mod:`hdsd.audit._copies`)."""
    if msg.origin != ident.name:
        raise PermissionDenied(f"node {ident.name} may ship only its own audit log, "
                               f"not {msg.origin}'s")
    seq, digest = await node.audit_copies.receive(msg.origin, msg.verify_key, msg.prev_seq,
                                                  msg.prev_hash, msg.records)
    await session.send(Reply(rid=msg.rid, body={"seq": seq, "hash": digest}))


PEER_ROUTES: dict[type[Message], Route] = {
    LayoutPush: Route(layout_push),
    **{cls: Route(handler, same_layout=True) for cls, handler in (
        (Replicate, _replicate),
        (FetchVersions, _fetch_versions),
        (FetchChunk, _fetch_chunk),
        (FetchChunks, _fetch_chunks),
        (PeerStatusRequest, _peer_status),
        (ListPeer, _list_peer),
        (TreeLevel, _tree_level),
        (LeafDiff, _leaf_diff),
        (AuditShip, _audit_ship),
        (ListBucketsPeer, _list_buckets_peer),
    )},
}
