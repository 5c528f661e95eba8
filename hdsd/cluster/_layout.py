"""Cluster layout: two sites, their nodes, and where each key lives.

Placement is rendezvous (highest-random-weight) hashing per site: every node of a site gets a
score for the key, weighted, and the ``replicas_per_site`` best hold it. Adding or removing a
node moves only the keys it wins or held. A key's chunks live with its version records (same
placement key), so a replica can serve a whole read from its own disk.

The layout id is a hash of everything that decides placement (sites, node names, weights,
replicas per site — not addresses, which may differ per node behind NAT or a proxy); it travels
in every replication message, and nodes with different ids refuse to mix (``LayoutMismatch``)
instead of writing to the wrong places.

**Roles.** A node is a ``storage`` node (the default) or a ``backup`` node. Keys of a tenant on
the standard plan live on storage nodes only; keys of a tenant on the backup plan live on backup
nodes only (:meth:`Layout.replicas` with ``plan="backup"``). The layout id covers roles, so
nodes that disagree on who is a backup node refuse to mix; an all-storage layout keeps the id it
had before roles existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import xxhash

__all__ = ["NODE_ROLES", "PLANS", "Layout", "NodeInfo", "NodeRole", "Plan", "placement_key"]

NodeRole = Literal["storage", "backup"]
Plan = Literal["standard", "backup"]  # a tenant's plan: which role holds its keys
NODE_ROLES: tuple[NodeRole, ...] = get_args(NodeRole)
PLANS: tuple[Plan, ...] = get_args(Plan)
_ROLE_OF_PLAN = {"standard": "storage", "backup": "backup"}


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    site: str
    host: str
    port: int
    weight: float = 1.0
    role: NodeRole = "storage"


def placement_key(tenant: str, bucket: str, key: str) -> bytes:
    return b"\x00".join((tenant.encode(), bucket.encode(), key.encode()))


@dataclass(frozen=True, slots=True)
class Layout:
    sites: tuple[str, ...]
    nodes: tuple[NodeInfo, ...]
    replicas_per_site: int = 1
    # The id, computed once (the fields are frozen): every peer request is checked against
    # it, and hashing every node each time was among the replica's costliest calls per
    # replicated put (cProfile). Derived, so not compared.
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.sites) != 2 or len(set(self.sites)) != 2:
            raise ValueError("a cluster has exactly two sites")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        for n in self.nodes:
            if n.role not in NODE_ROLES:
                raise ValueError(f"node {n.name}: role {n.role!r} must be one of "
                                 f"{', '.join(NODE_ROLES)}")
        for site in self.sites:
            # Backup nodes are extra: they never hold standard keys, so they do not count.
            count = sum(1 for n in self.nodes if n.site == site and n.role == "storage")
            if count < self.replicas_per_site:
                raise ValueError(f"site {site} has {count} storage node(s), fewer than "
                                 f"replicas_per_site = {self.replicas_per_site}")
        if any(n.site not in self.sites for n in self.nodes):
            raise ValueError("every node belongs to one of the two sites")
        object.__setattr__(self, "_id", self._compute_id())

    @property
    def layout_id(self) -> str:
        return self._id

    def _compute_id(self) -> str:
        h = xxhash.xxh3_64()
        h.update(f"r={self.replicas_per_site};".encode())
        for n in sorted(self.nodes, key=lambda n: n.name):
            # The role is hashed only when it is not the default, so the ids of layouts written
            # before roles existed do not change (their Merkle snapshots stay valid).
            role = "" if n.role == "storage" else f"#{n.role}"
            h.update(f"{n.name}@{n.site}*{n.weight}{role};".encode())
        return h.hexdigest()

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def site_nodes(self, site: str) -> list[NodeInfo]:
        """Every node of *site*, whatever its role."""
        return [n for n in self.nodes if n.site == site]

    def plan_nodes(self, site: str, plan: str = "standard") -> list[NodeInfo]:
        """The nodes of *site* that may hold keys of a tenant on *plan*."""
        role = _role_of(plan)
        return [n for n in self.nodes if n.site == site and n.role == role]

    def has_backup_nodes(self) -> bool:
        return any(n.role == "backup" for n in self.nodes)

    def sites_without_backup(self) -> list[str]:
        """The sites with no backup node (a backup-plan tenant needs this to be empty)."""
        return [s for s in self.sites if not self.plan_nodes(s, "backup")]

    def fixed_replicas(self, plan: str = "standard") -> dict[str, list[NodeInfo]] | None:
        """The placement of every key of *plan* when it does not depend on the key (each site
        has at most one node of the plan's role), else None."""
        per_site = {s: self.plan_nodes(s, plan) for s in self.sites}
        if all(len(nodes) <= 1 for nodes in per_site.values()):
            return per_site
        return None

    def other_site(self, site: str) -> str:
        return self.sites[1] if site == self.sites[0] else self.sites[0]

    def replicas(self, pkey: bytes, plan: str = "standard") -> dict[str, list[NodeInfo]]:
        """The nodes holding *pkey*, per site, best first: ``replicas_per_site`` storage nodes
        of each site on the standard plan; on the backup plan, as many backup nodes of each
        site as it has, up to ``replicas_per_site`` (a site without one gets an empty list,
        and no write policy is met with it)."""
        out: dict[str, list[NodeInfo]] = {}
        for site in self.sites:
            ranked = sorted(self.plan_nodes(site, plan), key=lambda n: _score(n, pkey),
                            reverse=True)
            out[site] = ranked[: self.replicas_per_site]
        return out


def _role_of(plan: str) -> str:
    try:
        return _ROLE_OF_PLAN[plan]
    except KeyError:
        raise ValueError(f"unknown plan {plan!r} (known: {', '.join(PLANS)})") from None


def _score(node: NodeInfo, pkey: bytes) -> float:
    # Weighted rendezvous: -w / ln(u), u uniform in (0, 1) from the hash of (node, key).
    h = xxhash.xxh3_64_intdigest(node.name.encode() + b"\x00" + pkey)
    u = (h + 1) / (2**64 + 1)
    return -node.weight / math.log(u)
