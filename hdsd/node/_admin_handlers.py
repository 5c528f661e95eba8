"""Tenant administration requests (from clients) and catalog replication (from nodes).

Who may do what — the operator is an ``admin`` certificate of the cluster's operator tenant
(``[cluster] operator_tenant``, the tenant ``hdsd init`` issues its admin profile for):

* tenants (create, set quota, list, shred): the operator only;
* buckets (create, extend retention, list) and legal holds: the operator, or an ``admin`` of
  that tenant.

Every change is applied here and pushed to every other node of both sites; the reply names the
nodes that confirmed (``applied_on``) and those that will catch up by sync (``pending``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._errors import HdsdError, InvalidRequest, PermissionDenied
from ..catalog import Entry, entry_from_wire
from ..cluster import HybridClock
from ..transport import Identity, WireSession
from ..wire import (
    BucketCreate,
    BucketList,
    CatalogPush,
    CatalogSync,
    HoldList,
    HoldSet,
    Message,
    Reply,
    TenantCreate,
    TenantList,
    TenantShred,
)
from ._auth import check_bucket, check_key
from ._config import NAME_RE
from ._peer_handlers import check_layout
from ._roles import check_plan_possible

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["ADMIN_HANDLERS", "CATALOG_PEER_HANDLERS"]

_Inbox = trio.MemoryReceiveChannel[Message]


def _require_operator(node: Node, ident: Identity) -> None:
    if not node.tenancy.is_operator(ident.tenant, ident.role):
        raise PermissionDenied(
            f"only an admin of the operator tenant {node.tenancy.operator_tenant!r} manages "
            f"tenants (this is {ident.role!r} of {ident.tenant!r})")


def _check_tenant_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidRequest(f"tenant name {name!r} must match {NAME_RE.pattern}")


async def _tenant_create(node: Node, session: WireSession, ident: Identity, msg: TenantCreate,
                         inbox: _Inbox) -> None:
    _require_operator(node, ident)
    _check_tenant_name(msg.tenant)
    created = node.tenancy.catalog.tenant(msg.tenant) is None
    if created:
        check_plan_possible(node.layout, msg.plan or "standard")
    result = await node.tenancy.apply_and_push(
        node, node.tenancy.create_tenant(msg.tenant, msg.quota_bytes, msg.plan))
    await session.send(Reply(rid=msg.rid, body={"tenant": msg.tenant, "created": created,
                                                "quota_bytes": msg.quota_bytes,
                                                "plan": node.tenancy.plan(msg.tenant),
                                                **result}))


async def _tenant_list(node: Node, session: WireSession, ident: Identity, msg: TenantList,
                       inbox: _Inbox) -> None:
    _require_operator(node, ident)
    await node.tenancy.refresh_usage(node, force=True)
    catalog = node.tenancy.catalog
    # A bucket exists from its first put: `bucket create` only adds retention, so counting the
    # catalog alone showed 0 buckets for a tenant full of data. Count both, as the site sees.
    buckets = {t.name: {b.name for b in catalog.buckets(t.name)} for t in catalog.tenants()}
    incomplete: set[str] = set()

    async def with_data(tenant: str) -> None:
        try:
            buckets[tenant].update(await node.list_buckets_site(tenant))
        except HdsdError:  # a node of the site is down: what this node holds, flagged
            buckets[tenant].update(node.store.buckets(tenant))
            incomplete.add(tenant)

    async with trio.open_nursery() as nursery:
        for t in catalog.tenants():
            if not t.is_shredded:  # its data is unreadable and being reclaimed
                nursery.start_soon(with_data, t.name)
    tenants = [{"tenant": t.name, "state": "shredded" if t.is_shredded else "live",
                "quota_bytes": t.quota_bytes, "usage_bytes": node.tenancy.usage(t.name),
                "created_ms": HybridClock.wall_ms(t.created),
                "shredded_ms": HybridClock.wall_ms(t.shredded) if t.is_shredded else None,
                "buckets": len(buckets[t.name]), "buckets_incomplete": t.name in incomplete,
                "plan": t.plan}
               for t in catalog.tenants()]
    await session.send(Reply(rid=msg.rid, body={"tenants": tenants, "node": node.config.name}))


async def _tenant_shred(node: Node, session: WireSession, ident: Identity, msg: TenantShred,
                        inbox: _Inbox) -> None:
    _require_operator(node, ident)
    if msg.confirm != msg.tenant:
        raise InvalidRequest(f"--confirm must repeat the tenant name {msg.tenant!r} exactly")
    result = await node.tenancy.apply_and_push(node, node.tenancy.shred_tenant(msg.tenant))
    await session.send(Reply(rid=msg.rid, body={"tenant": msg.tenant, "shredded": True,
                                                **result}))


async def _bucket_create(node: Node, session: WireSession, ident: Identity, msg: BucketCreate,
                         inbox: _Inbox) -> None:
    node.tenancy.check_admin_of(ident.tenant, ident.role, msg.tenant)
    check_bucket(msg.bucket)
    result = await node.tenancy.apply_and_push(
        node, node.tenancy.create_bucket(msg.tenant, msg.bucket, msg.retention_days))
    bucket = node.tenancy.catalog.bucket(msg.tenant, msg.bucket)
    assert bucket is not None
    await session.send(Reply(rid=msg.rid, body={"tenant": msg.tenant, "bucket": msg.bucket,
                                                "retention_days": bucket.retention_days,
                                                **result}))


async def _bucket_list(node: Node, session: WireSession, ident: Identity, msg: BucketList,
                       inbox: _Inbox) -> None:
    if msg.tenant:
        node.tenancy.check_admin_of(ident.tenant, ident.role, msg.tenant)
    else:
        _require_operator(node, ident)
    catalog = node.tenancy.catalog
    holds = [h for h in catalog.holds(msg.tenant or None) if h.held]
    buckets = [{"tenant": b.tenant, "bucket": b.name, "retention_days": b.retention_days,
                "created_ms": HybridClock.wall_ms(b.created),
                "holds": sorted(h.key for h in holds
                                if h.tenant == b.tenant and h.bucket == b.name)}
               for b in catalog.buckets(msg.tenant or None)]
    await session.send(Reply(rid=msg.rid, body={"buckets": buckets}))


async def _hold_set(node: Node, session: WireSession, ident: Identity, msg: HoldSet,
                    inbox: _Inbox) -> None:
    node.tenancy.check_admin_of(ident.tenant, ident.role, msg.tenant)
    check_bucket(msg.bucket)
    check_key(msg.key)
    by = f"{ident.name}@{ident.tenant}"
    result = await node.tenancy.apply_and_push(
        node, node.tenancy.set_hold(msg.tenant, msg.bucket, msg.key, msg.held, by))
    await session.send(Reply(rid=msg.rid, body={"tenant": msg.tenant, "bucket": msg.bucket,
                                                "key": msg.key, "held": msg.held, "by": by,
                                                **result}))


async def _hold_list(node: Node, session: WireSession, ident: Identity, msg: HoldList,
                     inbox: _Inbox) -> None:
    if msg.tenant:
        node.tenancy.check_admin_of(ident.tenant, ident.role, msg.tenant)
    else:
        _require_operator(node, ident)
    holds = sorted((h for h in node.tenancy.catalog.holds(msg.tenant or None)
                    if h.held and (not msg.bucket or h.bucket == msg.bucket)),
                   key=lambda h: (h.tenant, h.bucket, h.key))
    await session.send(Reply(rid=msg.rid, body={"holds": [
        {"tenant": h.tenant, "bucket": h.bucket, "key": h.key, "by": h.by,
         "set_ms": HybridClock.wall_ms(h.hlc)} for h in holds]}))


# -- node ↔ node -------------------------------------------------------------------------------
def _entries(raw: list[Any]) -> list[Entry]:
    return [entry_from_wire(e) for e in raw]


async def _catalog_push(node: Node, session: WireSession, ident: Identity, msg: CatalogPush,
                        inbox: _Inbox) -> None:
    check_layout(node, msg.layout, ident)
    changed = await node.tenancy.apply(_entries(msg.entries))
    await session.send(Reply(rid=msg.rid, body={"changed": len(changed)}))


async def _catalog_sync(node: Node, session: WireSession, ident: Identity, msg: CatalogSync,
                        inbox: _Inbox) -> None:
    check_layout(node, msg.layout, ident)
    digest = node.tenancy.catalog.digest()
    entries = [] if digest == msg.digest else [e.to_wire()
                                               for e in node.tenancy.catalog.entries()]
    await session.send(Reply(rid=msg.rid, body={"digest": digest, "entries": entries,
                                                "usage": node.tenancy.local_usage()}))


ADMIN_HANDLERS: dict[type, Any] = {
    TenantCreate: _tenant_create,
    TenantList: _tenant_list,
    TenantShred: _tenant_shred,
    BucketCreate: _bucket_create,
    BucketList: _bucket_list,
    HoldSet: _hold_set,
    HoldList: _hold_list,
}
CATALOG_PEER_HANDLERS: dict[type, Any] = {
    CatalogPush: _catalog_push,
    CatalogSync: _catalog_sync,
}
