"""The layout record: the cluster's layout as a numbered version, and its changes.

A running cluster changes its layout (a node added, removed, replaced, moved to another address,
given another weight) by *versions*. Every node keeps the highest version it has seen
(``layout.json`` in its data directory) and adopts a higher one as soon as it hears of it — from
the operator (``hdsd layout apply``), from a peer's push, or from a peer whose messages carry a
layout id it does not know (it then asks that peer for its record). No node restarts.

A change goes through three versions, each derived from the one before by a pure function, so
that whichever node publishes the next one, every node computes the very same record:

* ``migrating`` (the operator's version *v*): the new layout is the target, the old one is
  kept as ``previous``. Each key lives on the **union** of its replicas in both layouts: writes
  go to the union and are acknowledged only when the write policy holds in *each* layout
  (:class:`Placement`), reads ask the union. A node that has not heard of *v* yet writes to the
  old replicas only, which is why the next phase waits for every node.
* ``syncing`` (*v + 1*, published once every node of both layouts runs *v*): every node now
  writes to the union, so what anti-entropy rounds started from here on compare is complete.
  Each node compares with every peer it shares keys with (the union's), which copies to the new
  replicas what the old ones hold.
* ``stable`` (*v + 2*, published once every node reports a clean round with each such peer
  since it adopted *v + 1*): the old layout is dropped; writes go to the new replicas only, and
  nodes reclaim the space of keys they no longer hold — version by version, once every new
  replica of the key answered that it holds it.

The layout *id* (:attr:`Layout.layout_id`) travels in every peer message; a node accepts the id
of its target layout and, while migrating, of the previous one (:meth:`LayoutRecord.accepts`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import xxhash

from ._layout import NODE_ROLES, Layout, NodeInfo, placement_key

__all__ = ["PHASES", "LayoutRecord", "Placement", "check_removal", "layout_from_wire",
           "layout_to_wire", "placement_moves", "replacing_node", "with_changes", "with_node",
           "without_node"]

PHASES = ("stable", "migrating", "syncing")


class Placement(dict[str, list[str]]):
    """The replicas of a key per site (a plain ``{site: [node, ...]}``) and, while the layout
    migrates, the placement under each layout in ``parts``: a write policy must hold in every
    part (:func:`hdsd.replication.policy_met`)."""

    parts: tuple[Mapping[str, Sequence[str]], ...] = ()


def layout_to_wire(layout: Layout) -> dict[str, Any]:
    return {"sites": list(layout.sites), "replicas_per_site": layout.replicas_per_site,
            "nodes": [{"name": n.name, "site": n.site, "host": n.host, "port": n.port,
                       "weight": n.weight, "role": n.role} for n in layout.nodes]}


def layout_from_wire(doc: object) -> Layout:
    """A layout from its map; ValueError if malformed (the layout's own checks included)."""
    if not isinstance(doc, dict):
        raise ValueError("a layout is a map")
    sites = doc.get("sites")
    rps = doc.get("replicas_per_site")
    raw = doc.get("nodes")
    if (not isinstance(sites, list) or not all(isinstance(s, str) for s in sites)
            or type(rps) is not int or not 1 <= rps <= 16 or not isinstance(raw, list)):
        raise ValueError("a layout has sites, replicas_per_site and nodes")
    nodes = []
    for n in raw:
        if not isinstance(n, dict):
            raise ValueError("a layout node is a map")
        name, site, host, port = n.get("name"), n.get("site"), n.get("host"), n.get("port")
        weight, role = n.get("weight", 1.0), n.get("role", "storage")
        if not (isinstance(name, str) and name and isinstance(site, str)
                and isinstance(host, str) and host and type(port) is int
                and 0 < port < 65536 and isinstance(weight, int | float)
                and math.isfinite(weight) and weight > 0 and role in NODE_ROLES):
            raise ValueError(f"malformed layout node {n!r}")
        nodes.append(NodeInfo(name=name, site=site, host=host, port=port,
                              weight=float(weight), role=role))
    return Layout(sites=tuple(sites), nodes=tuple(nodes), replicas_per_site=rps)


@dataclass(frozen=True, slots=True)
class LayoutRecord:
    cluster_id: str
    version: int
    layout: Layout  # the target: where keys live once the migration is done
    previous: Layout | None = None  # while migrating or syncing: where they lived before
    phase: str = "stable"
    change: str = ""  # what the operator changed, for status and logs
    # Nodes of the previous layout that are gone for good (a dead machine being replaced or
    # removed): nobody waits for them, writes skip them, their keys come from other replicas.
    gone: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown layout phase {self.phase!r}")
        if (self.phase == "stable") != (self.previous is None):
            raise ValueError("a previous layout is kept exactly while migrating or syncing")
        if self.previous is not None and self.previous.sites != self.layout.sites:
            raise ValueError("a layout change keeps the two sites")
        if self.gone and (self.previous is None or any(
                g in {n.name for n in self.layout.nodes} for g in self.gone)):
            raise ValueError("only nodes leaving the layout can be gone")

    # -- identity ----------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """A hash of the whole record: two nodes holding the same version hold the same
        record (or one of them was handed a conflicting change, which status shows)."""
        return xxhash.xxh3_64_hexdigest(json.dumps(self.to_wire(), sort_keys=True).encode())

    def accepts(self, layout_id: str) -> bool:
        """Whether a peer message placed under *layout_id* may be served."""
        return layout_id == self.layout.layout_id or (
            self.previous is not None and layout_id == self.previous.layout_id)

    @property
    def migrating(self) -> bool:
        return self.previous is not None

    # -- nodes ---------------------------------------------------------------------------------
    def all_nodes(self) -> tuple[NodeInfo, ...]:
        """Every node of the target layout, then those only the previous one has (the target's
        address wins for a node in both)."""
        names = {n.name for n in self.layout.nodes}
        gone = () if self.previous is None else tuple(
            n for n in self.previous.nodes if n.name not in names)
        return self.layout.nodes + gone

    def node(self, name: str) -> NodeInfo:
        for n in self.all_nodes():
            if n.name == name:
                return n
        raise KeyError(name)

    def has_node(self, name: str) -> bool:
        return any(n.name == name for n in self.all_nodes())

    def leaving(self) -> list[str]:
        """Nodes of the previous layout that the target no longer has."""
        if self.previous is None:
            return []
        names = {n.name for n in self.layout.nodes}
        return [n.name for n in self.previous.nodes if n.name not in names]

    def placement(self, pkey: bytes, plan: str = "standard") -> Placement:
        """The replicas of *pkey*: the target's, or while migrating the union of both
        layouts' with each layout's placement in ``parts``."""
        new = {s: [n.name for n in nodes] for s, nodes in self.layout.replicas(pkey, plan).items()}
        out = Placement(new)
        if self.previous is None:
            return out
        # A gone node (dead, being replaced) holds nothing anyone can wait for: the old
        # layout's part is what its live replicas hold (a site left with none is not asked).
        old = {s: names for s, nodes in self.previous.replicas(pkey, plan).items()
               if (names := [n.name for n in nodes if n.name not in self.gone])}
        for site, names in old.items():
            out[site] = list(dict.fromkeys([*out.get(site, []), *names]))
        out.parts = (old, new)
        return out

    # -- the phases ----------------------------------------------------------------------------
    def next_phase(self) -> LayoutRecord | None:
        """The version that follows this one once its condition holds (see the module
        docstring); None for a stable record. Pure: every node derives the same record."""
        if self.phase == "migrating":
            return replace(self, version=self.version + 1, phase="syncing")
        if self.phase == "syncing":
            return replace(self, version=self.version + 1, previous=None, phase="stable",
                           gone=())
        return None

    def changed_to(self, layout: Layout, change: str, gone: tuple[str, ...] = ()
                   ) -> LayoutRecord:
        """The operator's change: *layout* becomes the target, this record's the previous."""
        if self.migrating:
            raise ValueError(f"layout version {self.version} is still {self.phase} "
                             f"({self.change}); wait until it is stable")
        if layout.sites != self.layout.sites:
            raise ValueError(f"the sites stay {', '.join(self.layout.sites)}")
        same_placement = layout.layout_id == self.layout.layout_id
        return LayoutRecord(cluster_id=self.cluster_id, version=self.version + 1, layout=layout,
                            # An address change moves no data: nothing to migrate.
                            previous=None if same_placement else self.layout,
                            phase="stable" if same_placement else "migrating", change=change,
                            gone=() if same_placement else gone)

    # -- wire ----------------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {"cluster": self.cluster_id, "version": self.version, "phase": self.phase,
                "change": self.change, "layout": layout_to_wire(self.layout),
                "previous": None if self.previous is None else layout_to_wire(self.previous),
                **({"gone": list(self.gone)} if self.gone else {})}

    @classmethod
    def from_wire(cls, doc: object) -> LayoutRecord:
        """A record from its map; ValueError if malformed."""
        if not isinstance(doc, dict):
            raise ValueError("a layout record is a map")
        cluster, version = doc.get("cluster"), doc.get("version")
        phase, change = doc.get("phase", "stable"), doc.get("change", "")
        if not isinstance(cluster, str) or type(version) is not int or version < 0 \
                or not isinstance(phase, str) or not isinstance(change, str):
            raise ValueError("a layout record has cluster, version, phase and change")
        prev = doc.get("previous")
        gone = doc.get("gone", [])
        if not isinstance(gone, list) or not all(isinstance(g, str) for g in gone):
            raise ValueError("gone: a list of node names")
        return cls(cluster_id=cluster, version=version, layout=layout_from_wire(doc.get("layout")),
                   previous=None if prev is None else layout_from_wire(prev), phase=phase,
                   change=change[:1024], gone=tuple(gone))


def check_removal(layout: Layout, name: str) -> None:
    """Refuse to remove *name* when the rest could not hold every key ``replicas_per_site``
    times in its site (a layout with too few storage nodes is refused by :class:`Layout`; this
    says so in the operator's words)."""
    node = layout.node(name)
    rest = [n for n in layout.nodes if n.name != name]
    left = sum(1 for n in rest if n.site == node.site and n.role == node.role)
    if node.role == "storage" and left < layout.replicas_per_site:
        raise ValueError(
            f"removing {name} would leave site {node.site} with {left} storage node(s) for "
            f"replicas_per_site = {layout.replicas_per_site}: its keys would be "
            "under-replicated; add a node first (or replace this one: hdsd layout replace-node)")
    if node.role == "backup" and left == 0 and any(n.role == "backup" for n in rest):
        raise ValueError(f"removing {name} would leave site {node.site} without a backup node "
                         "while the other site has one: backup-plan keys would be "
                         "under-replicated")


def with_node(layout: Layout, node: NodeInfo) -> Layout:
    if any(n.name == node.name for n in layout.nodes):
        raise ValueError(f"node {node.name} is already in the layout")
    if node.site not in layout.sites:
        raise ValueError(f"site {node.site!r} is not one of {', '.join(layout.sites)}")
    return replace(layout, nodes=(*layout.nodes, node))


def without_node(layout: Layout, name: str) -> Layout:
    layout.node(name)  # KeyError if unknown
    check_removal(layout, name)
    return replace(layout, nodes=tuple(n for n in layout.nodes if n.name != name))


def replacing_node(layout: Layout, old: str, new: NodeInfo) -> Layout:
    """*new* takes *old*'s place (its site, role and weight unless given otherwise)."""
    gone = layout.node(old)
    if any(n.name == new.name for n in layout.nodes):
        raise ValueError(f"node {new.name} is already in the layout")
    if new.site != gone.site:
        raise ValueError(f"{new.name} replaces {old} in site {gone.site}, not {new.site}")
    return replace(layout, nodes=tuple(new if n.name == old else n for n in layout.nodes))


def with_changes(layout: Layout, name: str, *, host: str | None = None,
                 port: int | None = None, weight: float | None = None) -> Layout:
    cur = layout.node(name)
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        raise ValueError("a weight is a positive number")
    new = replace(cur, host=host or cur.host, port=port or cur.port,
                  weight=cur.weight if weight is None else float(weight))
    return replace(layout, nodes=tuple(new if n.name == name else n for n in layout.nodes))


def placement_moves(old: Layout, new: Layout, keys: Sequence[tuple[str, str, str]],
                    plan: str = "standard") -> int:
    """How many (key, replica) copies a change must create: the ideal data movement for
    *keys*, to compare with what a migration actually moved."""
    moved = 0
    for tenant, bucket, key in keys:
        pk = placement_key(tenant, bucket, key)
        before = {n.name for nodes in old.replicas(pk, plan).values() for n in nodes}
        after = {n.name for nodes in new.replicas(pk, plan).values() for n in nodes}
        moved += len(after - before)
    return moved
