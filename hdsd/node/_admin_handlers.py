"""Tenant administration requests (from clients) and catalog replication (from nodes).

Who may do what — the operator is an ``admin`` certificate of the cluster's operator tenant
(``[cluster] operator_tenant``, the tenant ``hdsd init`` issues its admin profile for):

* tenants (create, set quota, list, shred): the operator only;
* buckets (create, extend retention, list) and legal holds: the operator, or an ``admin`` of
  that tenant;
* certificates (revoke, list revoked): the operator for any certificate (node certificates, a
  bare serial, any tenant's); an ``admin`` of a tenant for its own tenant's client
  certificates, proven by the certificate itself (signed by the cluster CA);
* S3 access keys (create, list, revoke): the operator, or an ``admin`` of the key's tenant
  (a key acts with any of the certificate roles, ``admin`` included: as a certificate
  would, since that admin could issue one).

Every change is applied here and pushed to every other node of both sites; the reply names the
nodes that confirmed (``applied_on``) and those that will catch up by sync (``pending``). A
tenant *creation* is more: it is voted on by every node before the tenant serves anything
(``TenantCreate`` stages it and runs a first round, ``TenantConfirm`` another; ``TenantVote``
is a node's vote; see :mod:`hdsd.catalog._confirm`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._errors import (
    AuthenticationFailed,
    HdsdError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from ..catalog import Entry, RevokedEntry, S3KeyEntry, TenantEntry, entry_from_wire
from ..cluster import HybridClock
from ..transport import Identity, IssuedCert, WireSession, verify_issued
from ..wire import (
    BucketCreate,
    BucketList,
    CatalogPush,
    CatalogSync,
    CertList,
    CertRevoke,
    HoldList,
    HoldSet,
    Message,
    Reply,
    S3KeyCreate,
    S3KeyList,
    S3KeyRevoke,
    TenantAbandon,
    TenantConfirm,
    TenantCreate,
    TenantList,
    TenantShred,
    TenantVote,
)
from ._auth import check_bucket, check_key
from ._config import NAME_RE
from ._roles import check_plan_possible
from ._route import Route, require_operator

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["ADMIN_ROUTES", "CATALOG_PEER_ROUTES"]

_Inbox = trio.MemoryReceiveChannel[Message]


_MANAGES_TENANTS = "manages tenants"


def _require_operator(node: Node, ident: Identity) -> None:
    require_operator(node, ident, _MANAGES_TENANTS)


def _may_list(node: Node, ident: Identity, tenant: str) -> None:
    """A listing of *tenant*'s entries (buckets, holds, revoked certificates, S3 keys) is for
    its admin or the operator; of every tenant's (``""``), for the operator alone."""
    if tenant:
        node.tenancy.check_admin_of(ident.tenant, ident.role, tenant)
    else:
        _require_operator(node, ident)


def _check_tenant_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidRequest(f"tenant name {name!r} must match {NAME_RE.pattern}")


async def _tenant_create(node: Node, session: WireSession, ident: Identity, msg: TenantCreate,
                         inbox: _Inbox) -> None:
    _check_tenant_name(msg.tenant)
    old = node.tenancy.catalog.tenant(msg.tenant)
    entries = node.tenancy.create_tenant(msg.tenant, msg.quota_bytes, msg.plan,
                                         origin=node.config.name)
    if old is not None and old.is_confirmed:  # a new quota for a confirmed tenant
        result = await node.tenancy.apply_and_push(node, entries)
        await session.send(Reply(rid=msg.rid, body={
            "tenant": msg.tenant, "created": False, "quota_bytes": msg.quota_bytes,
            "plan": node.tenancy.plan(msg.tenant), "state": old.state, **result}))
        return
    check_plan_possible(node.layout, msg.plan or "standard")
    # Staged pending here, then voted on by every node: the reply says whether it is
    # confirmed yet, and if not, which nodes it waits for (TenantConfirm goes on).
    (entry,) = entries
    assert isinstance(entry, TenantEntry)
    await node.tenancy.apply(entries)
    result = await node.tenancy.confirm(node, msg.tenant, entry.creation)
    await session.send(Reply(rid=msg.rid, body={**result, "created": True}))


async def _tenant_confirm(node: Node, session: WireSession, ident: Identity, msg: TenantConfirm,
                          inbox: _Inbox) -> None:
    result = await node.tenancy.confirm(node, msg.tenant, msg.creation)
    await session.send(Reply(rid=msg.rid, body={**result, "created": False}))


async def _tenant_abandon(node: Node, session: WireSession, ident: Identity, msg: TenantAbandon,
                          inbox: _Inbox) -> None:
    if msg.confirm != msg.tenant:
        raise InvalidRequest(f"--confirm must repeat the tenant name {msg.tenant!r} exactly")
    result = await node.tenancy.abandon(node, msg.tenant)
    await session.send(Reply(rid=msg.rid, body=result))


async def _tenant_list(node: Node, session: WireSession, ident: Identity, msg: TenantList,
                       inbox: _Inbox) -> None:
    await node.tenancy.refresh_usage(node, force=True)
    catalog = node.tenancy.catalog
    # A bucket exists from its first put: `bucket create` only adds retention, so counting the
    # catalog alone showed 0 buckets for a tenant full of data. Count both, as the site sees.
    # Abandoned creations are not tenants (they never held data): not listed.
    listed = [t for t in catalog.tenants() if t.has_keys or t.is_shredded]
    buckets = {t.name: {name for _, name in node.tenancy.open_buckets(t.name)} for t in listed}
    incomplete: set[str] = set()

    async def with_data(tenant: str) -> None:
        try:
            buckets[tenant].update(await node.reads.buckets_site(tenant))
        except HdsdError:  # a node of the site is down: what this node holds, flagged
            buckets[tenant].update(node.store.buckets(tenant))
            incomplete.add(tenant)

    async with trio.open_nursery() as nursery:
        for t in listed:
            # A shredded tenant's data is unreadable and being reclaimed; a pending one has none.
            if t.is_confirmed and not t.is_shredded:
                nursery.start_soon(with_data, t.name)
    tenants = [{"tenant": t.name,
                "state": "shredded" if t.is_shredded else "live" if t.is_confirmed else t.state,
                "quota_bytes": t.quota_bytes, "usage_bytes": node.tenancy.usage(t.name),
                "created_ms": HybridClock.wall_ms(t.created),
                "shredded_ms": HybridClock.wall_ms(t.shredded) if t.is_shredded else None,
                "buckets": len(buckets[t.name]), "buckets_incomplete": t.name in incomplete,
                "plan": t.plan, "creation": t.creation.hex(), "origin": t.origin}
               for t in listed]
    await session.send(Reply(rid=msg.rid, body={"tenants": tenants, "node": node.config.name}))


async def _tenant_shred(node: Node, session: WireSession, ident: Identity, msg: TenantShred,
                        inbox: _Inbox) -> None:
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
    bucket = node.tenancy.bucket_entry(msg.tenant, msg.bucket)
    assert bucket is not None
    await session.send(Reply(rid=msg.rid, body={"tenant": msg.tenant, "bucket": msg.bucket,
                                                "retention_days": bucket.retention_days,
                                                **result}))


async def _bucket_list(node: Node, session: WireSession, ident: Identity, msg: BucketList,
                       inbox: _Inbox) -> None:
    _may_list(node, ident, msg.tenant)
    holds = [(h, key) for h, _, key in node.tenancy.open_holds(msg.tenant or None) if h.held]
    buckets = [{"tenant": b.tenant, "bucket": name, "retention_days": b.retention_days,
                "created_ms": HybridClock.wall_ms(b.created),
                "holds": sorted(key for h, key in holds
                                if h.tenant == b.tenant and h.bucket_id == b.bucket_id)}
               for b, name in sorted(node.tenancy.open_buckets(msg.tenant or None),
                                     key=lambda bn: (bn[0].tenant, bn[1]))]
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
    _may_list(node, ident, msg.tenant)
    holds = sorted(((h, bucket, key) for h, bucket, key in node.tenancy.open_holds(
                        msg.tenant or None) if h.held and (not msg.bucket or bucket == msg.bucket)),
                   key=lambda hbk: (hbk[0].tenant, hbk[1], hbk[2]))
    await session.send(Reply(rid=msg.rid, body={"holds": [
        {"tenant": h.tenant, "bucket": bucket, "key": key, "by": h.by,
         "set_ms": HybridClock.wall_ms(h.hlc)} for h, bucket, key in holds]}))


async def _cert_revoke(node: Node, session: WireSession, ident: Identity, msg: CertRevoke,
                       inbox: _Inbox) -> None:
    operator = node.tenancy.is_operator(ident.tenant, ident.role)
    cert: IssuedCert | None = None
    if msg.certificate:
        ca_pem = await trio.to_thread.run_sync(node.config.ca.read_bytes)
        try:
            cert = verify_issued(ca_pem, msg.certificate)
        except AuthenticationFailed as exc:
            raise InvalidRequest(f"cannot revoke that certificate: {exc.message}") from None
        if msg.serial and msg.serial != cert.serial:
            raise InvalidRequest(f"serial {msg.serial} is not the certificate's "
                                 f"({cert.serial})")
        if cert.identity.cluster_id != node.config.cluster_id:
            raise InvalidRequest(f"the certificate is for cluster {cert.identity.cluster_id!r}")
    if not operator:
        # A tenant's admin revokes its own tenant's client certificates, and must prove the
        # certificate is one: a bare serial could be anybody's (a node's, another tenant's).
        if ident.role != "admin":
            raise PermissionDenied(f"role {ident.role!r} may not revoke certificates")
        if cert is None:
            raise PermissionDenied("only the operator revokes a bare serial; a tenant admin "
                                   "gives the certificate itself (--cert FILE)")
        if cert.identity.kind != "client" or cert.identity.tenant != ident.tenant:
            what = (f"node {cert.identity.name!r}" if cert.identity.kind == "node"
                    else f"a client of tenant {cert.identity.tenant!r}")
            raise PermissionDenied(f"an admin of tenant {ident.tenant!r} may not revoke the "
                                   f"certificate of {what}; only the operator may")
    serial = cert.serial if cert is not None else msg.serial
    already = node.tenancy.catalog.is_revoked(serial)
    who = cert.identity if cert is not None else None
    entries = node.tenancy.revoke(
        serial, by=f"{ident.name}@{ident.tenant}", reason=msg.reason,
        kind=who.kind if who else "", tenant=(who.tenant or "") if who else "",
        name=who.name if who else "", role=(who.role or "") if who else "",
        not_after_ms=int(cert.not_after.timestamp() * 1000) if cert is not None else 0)
    result = await node.tenancy.apply_and_push(node, entries)
    await session.send(Reply(rid=msg.rid, body={
        "serial": serial, "kind": who.kind if who else "", "name": who.name if who else "",
        "tenant": (who.tenant or "") if who else "", "already_revoked": already, **result}))


def _revoked_row(e: RevokedEntry) -> dict[str, Any]:
    return {"serial": e.serial, "kind": e.kind, "tenant": e.tenant, "name": e.name,
            "role": e.role, "not_after_ms": e.not_after or None,
            "revoked_ms": HybridClock.wall_ms(e.hlc), "by": e.by, "reason": e.reason}


async def _cert_list(node: Node, session: WireSession, ident: Identity, msg: CertList,
                     inbox: _Inbox) -> None:
    _may_list(node, ident, msg.tenant)
    rows = [_revoked_row(e) for e in node.tenancy.catalog.revoked(msg.tenant or None)]
    await session.send(Reply(rid=msg.rid, body={"revoked": rows, "node": node.config.name}))


async def _s3_key_create(node: Node, session: WireSession, ident: Identity, msg: S3KeyCreate,
                         inbox: _Inbox) -> None:
    node.tenancy.check_admin_of(ident.tenant, ident.role, msg.tenant)
    tenant = node.tenancy.catalog.tenant(msg.tenant)
    if tenant is None or not tenant.has_keys:
        raise PermissionDenied(f"tenant {msg.tenant!r} has no keys in this cluster; create it "
                               "with `hdsd tenant create`")
    node.tenancy.check_live(msg.tenant)  # shredded, or a creation not yet confirmed
    entry, secret, replayed = node.s3_credentials.create(
        msg.tenant, msg.role, by=f"{ident.name}@{ident.tenant}", request_id=msg.request_id)
    # A retry pushes the entry again: the first attempt may have stopped before its push.
    result = await node.tenancy.apply_and_push(node, [entry])
    # The only time the secret leaves the node: the catalog has it wrapped, nothing logs it,
    # and the audit record of this request names the key id alone (audit._hook).
    await session.send(Reply(rid=msg.rid, body={
        "access_key_id": entry.access_key_id, "secret_access_key": secret,
        "tenant": entry.tenant, "role": entry.role, "replayed": replayed, **result}))


def _s3_key_row(e: S3KeyEntry) -> dict[str, Any]:
    return {"access_key_id": e.access_key_id, "tenant": e.tenant, "role": e.role,
            "state": "revoked" if e.is_revoked else "active",
            "created_ms": HybridClock.wall_ms(e.created), "by": e.by,
            "revoked_ms": HybridClock.wall_ms(e.revoked) if e.is_revoked else None,
            "revoked_by": e.revoked_by or None}


async def _s3_key_list(node: Node, session: WireSession, ident: Identity, msg: S3KeyList,
                       inbox: _Inbox) -> None:
    _may_list(node, ident, msg.tenant)
    rows = [_s3_key_row(e) for e in node.tenancy.catalog.s3_keys(msg.tenant or None)]
    await session.send(Reply(rid=msg.rid, body={"keys": rows, "node": node.config.name}))


async def _s3_key_revoke(node: Node, session: WireSession, ident: Identity, msg: S3KeyRevoke,
                         inbox: _Inbox) -> None:
    known = node.tenancy.catalog.s3_key(msg.access_key_id)
    if known is None:
        raise NotFound(f"no S3 access key {msg.access_key_id} in this cluster")
    node.tenancy.check_admin_of(ident.tenant, ident.role, known.tenant)
    entry, already = node.s3_credentials.revoke(msg.access_key_id,
                                                by=f"{ident.name}@{ident.tenant}")
    result = await node.tenancy.apply_and_push(node, [entry])
    await session.send(Reply(rid=msg.rid, body={
        "access_key_id": entry.access_key_id, "tenant": entry.tenant,
        "already_revoked": already, **result}))


# -- node ↔ node -------------------------------------------------------------------------------
def _entries(raw: list[Any]) -> list[Entry]:
    return [entry_from_wire(e) for e in raw]


async def _catalog_push(node: Node, session: WireSession, ident: Identity, msg: CatalogPush,
                        inbox: _Inbox) -> None:
    changed = await node.tenancy.apply(_entries(msg.entries))
    await session.send(Reply(rid=msg.rid, body={"changed": len(changed)}))


async def _tenant_vote(node: Node, session: WireSession, ident: Identity, msg: TenantVote,
                       inbox: _Inbox) -> None:
    entry = entry_from_wire(msg.entry)
    if not isinstance(entry, TenantEntry):
        raise InvalidRequest("a tenant vote carries a tenant entry")
    held = await node.tenancy.vote(entry, msg.vote)
    await session.send(Reply(rid=msg.rid, body={"state": held.state}))


async def _catalog_sync(node: Node, session: WireSession, ident: Identity, msg: CatalogSync,
                        inbox: _Inbox) -> None:
    digest = node.tenancy.catalog.digest()
    entries = [] if digest == msg.digest else [e.to_wire()
                                               for e in node.tenancy.catalog.entries()]
    await session.send(Reply(rid=msg.rid, body={"digest": digest, "entries": entries,
                                                "usage": node.tenancy.local_usage()}))


ADMIN_ROUTES: dict[type[Message], Route] = {
    TenantCreate: Route(_tenant_create, operator=_MANAGES_TENANTS),
    TenantList: Route(_tenant_list, operator=_MANAGES_TENANTS),
    TenantShred: Route(_tenant_shred, operator=_MANAGES_TENANTS),
    TenantConfirm: Route(_tenant_confirm, operator=_MANAGES_TENANTS),
    TenantAbandon: Route(_tenant_abandon, operator=_MANAGES_TENANTS),
    # A tenant's admin manages its own buckets, holds and certificates: checked in the handler.
    BucketCreate: Route(_bucket_create),
    BucketList: Route(_bucket_list),
    HoldSet: Route(_hold_set),
    HoldList: Route(_hold_list),
    CertRevoke: Route(_cert_revoke),
    CertList: Route(_cert_list),
    # S3 access keys: the operator, or an admin of the key's tenant (checked in the handler).
    S3KeyCreate: Route(_s3_key_create),
    S3KeyList: Route(_s3_key_list),
    S3KeyRevoke: Route(_s3_key_revoke),
}
CATALOG_PEER_ROUTES: dict[type[Message], Route] = {
    CatalogPush: Route(_catalog_push, same_layout=True),
    CatalogSync: Route(_catalog_sync, same_layout=True),
    TenantVote: Route(_tenant_vote, same_layout=True),
}
