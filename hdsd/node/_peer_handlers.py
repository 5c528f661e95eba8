"""Requests from the other nodes (replication, repair reads) and the site-mode admin request.

Peer requests are accepted only from node certificates of this cluster's layout, and only when
the sender's layout id equals ours: two nodes that place data differently must not mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._errors import IntegrityError, InvalidRequest, LayoutMismatch, PermissionDenied
from ..cluster import LayoutRecord
from ..store import ChunkRecord, Version
from ..transport import Identity, WireSession
from ..wire import (
    AuditShip,
    FetchChunk,
    FetchVersions,
    LayoutPush,
    LeafDiff,
    ListBucketsPeer,
    ListPeer,
    MaintenanceRequest,
    Message,
    PeerStatusRequest,
    Replicate,
    Reply,
    SiteModeRequest,
    TreeLevel,
)

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["PEER_HANDLERS", "check_layout", "layout_push", "maintenance", "require_operator",
           "site_mode"]


def _check_layout(node: Node, layout: str, ident: Identity) -> None:
    record = node.layouts.record
    if record.accepts(layout):
        return
    # Maybe the sender runs a newer layout version this node has not heard of: ask it.
    node.layouts.learn_from(ident.name)
    raise LayoutMismatch(f"node {ident.name} has layout {layout}, this node "
                         f"{node.config.name} has {node.layout.layout_id} (layout version "
                         f"{record.version}); a layout change is propagating (retry), or the "
                         "nodes were deployed with different [[sites]] or replicas_per_site")


async def layout_push(node: Node, session: WireSession, ident: Identity, msg: LayoutPush,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """A layout version from the operator (``hdsd layout apply``) or a peer: adopt it if newer;
    the reply is this node's record and migration state either way."""
    operator = ident.kind != "node"
    if operator:
        require_operator(node, ident, "changes the cluster layout")
    try:
        record = LayoutRecord.from_wire(msg.record)
    except ValueError as exc:
        raise InvalidRequest(f"malformed layout record: {exc}") from None
    adopted = await node.layouts.offer(record, ident.name, operator=operator)
    await session.send(Reply(rid=msg.rid, body={**node.layouts.reply(), "adopted": adopted}))


def require_operator(node: Node, ident: Identity, what: str) -> None:
    """Cluster-wide actions belong to the operator: an admin certificate of ``[cluster]
    operator_tenant``. A tenant's own admin manages its buckets and holds, never the cluster."""
    if not node.tenancy.is_operator(ident.tenant, ident.role):
        raise PermissionDenied(
            f"only an admin of the operator tenant {node.tenancy.operator_tenant!r} {what} "
            f"(this is {ident.role!r} of {ident.tenant!r})")


async def _replicate(node: Node, session: WireSession, ident: Identity, msg: Replicate,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    try:
        chunks = [ChunkRecord(tenant=t, chunk_id=c, payload=p) for t, c, p in msg.chunks]
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"malformed chunk record from {ident.name}: {exc}") from None
    versions = [Version.from_wire(v) for v in msg.versions]
    for v in versions:
        node.clock.observe(v.hlc)
    # Chunks first, then the versions naming them, in one batch: one fdatasync, all or nothing.
    await node.store.commit([*chunks, *versions])
    await session.send(Reply(rid=msg.rid, body={}))


async def _fetch_versions(node: Node, session: WireSession, ident: Identity, msg: FetchVersions,
                          inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    found = node.store.versions(msg.tenant, msg.bucket, msg.key)
    await session.send(Reply(rid=msg.rid, body={"versions": [v.to_wire() for v in found]}))


async def _fetch_chunk(node: Node, session: WireSession, ident: Identity, msg: FetchChunk,
                       inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    payload = await node.read_payload(msg.tenant, msg.chunk_id)
    await session.send(Reply(rid=msg.rid, body={"payload": payload}))


async def _list_peer(node: Node, session: WireSession, ident: Identity, msg: ListPeer,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    part = node.list_local(msg.tenant, msg.bucket, msg.prefix, msg.after, msg.limit,
                           msg.versions)
    await session.send(Reply(rid=msg.rid, body={"versions": [v.to_wire() for v in part.versions],
                                                "more": part.more}))


async def _list_buckets_peer(node: Node, session: WireSession, ident: Identity,
                             msg: ListBucketsPeer,
                             inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    part = node.list_buckets_local(msg.tenant, msg.after)
    await session.send(Reply(rid=msg.rid, body={"buckets": part.buckets, "more": part.more}))


async def _peer_status(node: Node, session: WireSession, ident: Identity,
                       msg: PeerStatusRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    await session.send(Reply(rid=msg.rid, body=node.status()))


async def site_mode(node: Node, session: WireSession, ident: Identity, msg: SiteModeRequest,
                    inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """The operator: degrade or restore this node's site."""
    require_operator(node, ident, "changes a site's mode")
    if msg.site != node.config.site:
        raise InvalidRequest(f"this node is in site {node.config.site}, not {msg.site}")
    if msg.mode == "degraded" and not msg.reason.strip():
        raise InvalidRequest("say why the site is degraded (--reason)")
    by = f"{ident.name}@{ident.tenant}"
    mode = node.mode.set(msg.mode, reason=msg.reason or "restored by an operator", by=by)
    if msg.mode == "normal":
        # Writes accepted alone must now be compared with the other site, at once.
        node.doubts.doubt(None, "the site was restored to normal")
    await session.send(Reply(rid=msg.rid, body={"node": node.config.name,
                                                "write_policy": node.replicator.effective_policy(),
                                                **_mode_body(mode)}))


async def _tree_level(node: Node, session: WireSession, ident: Identity, msg: TreeLevel,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    body = await node.maintenance.sync.tree_level(ident.name, msg.depth, msg.indices)
    await session.send(Reply(rid=msg.rid, body=body))


async def _leaf_diff(node: Node, session: WireSession, ident: Identity, msg: LeafDiff,
                     inbox: trio.MemoryReceiveChannel[Message]) -> None:
    _check_layout(node, msg.layout, ident)
    body = await node.maintenance.sync.leaf_diff(ident.name, msg.leaves)
    await session.send(Reply(rid=msg.rid, body=body))


async def maintenance(node: Node, session: WireSession, ident: Identity,
                      msg: MaintenanceRequest, inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """The operator: start a repair or a scrub on this node now."""
    require_operator(node, ident, f"starts a {msg.task}")
    await session.send(Reply(rid=msg.rid, body=node.maintenance.start(msg.task)))


def _mode_body(mode: Any) -> dict[str, Any]:
    return {"mode": mode.mode, "reason": mode.reason, "by": mode.by, "since": mode.since}


async def _audit_ship(node: Node, session: WireSession, ident: Identity, msg: AuditShip,
                      inbox: trio.MemoryReceiveChannel[Message]) -> None:
    """Keep a batch of another node's audit records (see :mod:`hdsd.audit._copies`)."""
    _check_layout(node, msg.layout, ident)
    if msg.origin != ident.name:
        raise PermissionDenied(f"node {ident.name} may ship only its own audit log, "
                               f"not {msg.origin}'s")
    seq, digest = await node.audit_copies.receive(msg.origin, msg.verify_key, msg.prev_seq,
                                                  msg.prev_hash, msg.records)
    await session.send(Reply(rid=msg.rid, body={"seq": seq, "hash": digest}))


PEER_HANDLERS: dict[type, Any] = {
    Replicate: _replicate,
    FetchVersions: _fetch_versions,
    FetchChunk: _fetch_chunk,
    PeerStatusRequest: _peer_status,
    ListPeer: _list_peer,
    TreeLevel: _tree_level,
    LeafDiff: _leaf_diff,
    AuditShip: _audit_ship,
    ListBucketsPeer: _list_buckets_peer,
    LayoutPush: layout_push,
}

check_layout = _check_layout  # for the catalog's peer handlers (._admin_handlers)
