"""Node roles and tenant plans, as the request path sees them.

A **backup** node (``role = "backup"`` in its ``[[sites]]`` entry) holds the keys of tenants on
the **backup** plan, and only those: it accepts replication from the other nodes, serves reads
(restores) from its own store, and refuses to coordinate anything a client would change — puts,
deletes, catalog changes, site modes — with :class:`WrongRole`. A client holding stolen
credentials can therefore only write through a storage node, where retention locks and holds
apply, and cannot reach the backup copies' disks with a write of its own.

A storage node coordinates the writes of a backup-plan tenant (it is not one of the key's
replicas: the records go to the backup nodes of both sites) and forwards its reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import InvalidRequest, WrongRole
from ..cluster import Layout
from ..transport import Identity
from ..wire import (
    BucketCreate,
    DeleteRequest,
    HoldSet,
    Message,
    PutStart,
    S3KeyCreate,
    SiteModeRequest,
    TenantAbandon,
    TenantConfirm,
    TenantCreate,
    TenantShred,
)

if TYPE_CHECKING:
    from ._server import Node

__all__ = ["CLIENT_WRITES", "check_plan_possible", "check_role"]

# Client requests that change data or the catalog: a backup node coordinates none of them.
CLIENT_WRITES: frozenset[type[Message]] = frozenset({
    PutStart, DeleteRequest, TenantCreate, TenantShred, BucketCreate, HoldSet, SiteModeRequest,
    TenantConfirm, TenantAbandon, S3KeyCreate})


def check_role(node: Node, ident: Identity, msg: Message) -> None:
    """Refuse a client's write sent to a backup node, naming where to send it instead."""
    if node.role != "backup" or ident.kind == "node" or type(msg) not in CLIENT_WRITES:
        return
    site = node.config.site
    storage = ", ".join(f"{n.name} ({n.host}:{n.port})" for n in node.layout.plan_nodes(site))
    raise WrongRole(f"this node ({node.config.name}) is a backup node: it serves restores "
                    f"but coordinates no write; write through a storage node of site {site}: "
                    f"{storage}")


def check_plan_possible(layout: Layout, plan: str) -> None:
    """Refuse creating a tenant on *plan* when the layout cannot hold its keys."""
    missing = layout.sites_without_backup() if plan == "backup" else []
    if missing:
        raise InvalidRequest(
            f"the backup plan needs a backup node in both sites; {', '.join(missing)} has "
            "none (add a node with role = \"backup\" to [[sites]] on every node, or "
            "hdsd init --backup-nodes-per-site 1)")
