"""Cluster layout: two sites, their nodes, and where each key lives.

Placement is rendezvous (highest-random-weight) hashing per site: every node of a site gets a
score for the key, weighted, and the ``replicas_per_site`` best hold it. Adding or removing a
node moves only the keys it wins or held. A key's chunks live with its version records (same
placement key), so a replica can serve a whole read from its own disk.

The layout id is a hash of everything that decides placement (sites, node names, weights,
replicas per site — not addresses, which may differ per node behind NAT or a proxy); it travels
in every replication message, and nodes with different ids refuse to mix (``LayoutMismatch``)
instead of writing to the wrong places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import xxhash

__all__ = ["Layout", "NodeInfo", "placement_key"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    site: str
    host: str
    port: int
    weight: float = 1.0


def placement_key(tenant: str, bucket: str, key: str) -> bytes:
    return b"\x00".join((tenant.encode(), bucket.encode(), key.encode()))


@dataclass(frozen=True, slots=True)
class Layout:
    sites: tuple[str, ...]
    nodes: tuple[NodeInfo, ...]
    replicas_per_site: int = 1

    def __post_init__(self) -> None:
        if len(self.sites) != 2 or len(set(self.sites)) != 2:
            raise ValueError("a cluster has exactly two sites")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        for site in self.sites:
            count = sum(1 for n in self.nodes if n.site == site)
            if count < self.replicas_per_site:
                raise ValueError(f"site {site} has {count} node(s), fewer than "
                                 f"replicas_per_site = {self.replicas_per_site}")
        if any(n.site not in self.sites for n in self.nodes):
            raise ValueError("every node belongs to one of the two sites")

    @property
    def layout_id(self) -> str:
        h = xxhash.xxh3_64()
        h.update(f"r={self.replicas_per_site};".encode())
        for n in sorted(self.nodes, key=lambda n: n.name):
            h.update(f"{n.name}@{n.site}*{n.weight};".encode())
        return h.hexdigest()

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def site_nodes(self, site: str) -> list[NodeInfo]:
        return [n for n in self.nodes if n.site == site]

    def other_site(self, site: str) -> str:
        return self.sites[1] if site == self.sites[0] else self.sites[0]

    def replicas(self, pkey: bytes) -> dict[str, list[NodeInfo]]:
        """The nodes holding *pkey*, per site, best first."""
        out: dict[str, list[NodeInfo]] = {}
        for site in self.sites:
            ranked = sorted(self.site_nodes(site), key=lambda n: _score(n, pkey), reverse=True)
            out[site] = ranked[: self.replicas_per_site]
        return out


def _score(node: NodeInfo, pkey: bytes) -> float:
    # Weighted rendezvous: -w / ln(u), u uniform in (0, 1) from the hash of (node, key).
    h = xxhash.xxh3_64_intdigest(node.name.encode() + b"\x00" + pkey)
    u = (h + 1) / (2**64 + 1)
    return -node.weight / math.log(u)
