"""One Merkle tree per peer, following the store's index as it grows.

Node X keeps, for each peer Y, the tree of the versions X holds of keys whose replicas include
Y (on Y, the tree for X holds Y's side of the same key set), so the two compare exactly what
both should hold — with several nodes per site, different pairs share different keys.

The trees follow the index by version id (vids only grow): :meth:`catch_up` reads the versions
indexed after the watermark and adds them, costing the write path nothing. A snapshot of the
leaves and the watermark (``merkle-trees.bin`` in the data directory) is written periodically
and at close, so a restart replays only what came after it. A layout change, a rebuilt index (a
new index instance id: row ids are not stable across rebuilds) or a missing or damaged snapshot
means building from the index again, off the event loop. A tree that drifts from the index
anyway (a version removed, a crash between snapshot and index) is corrected leaf
by leaf when a comparison recomputes that leaf (:meth:`leaf_members`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .._atomic import atomic_write
from .._packing import PackError, packb, unpackb
from ..cluster import Layout, placement_key
from ..store import Store, Version, khash_of
from ._tree import MerkleTree, leaf_of, leaf_range, version_digest

__all__ = ["PeerTrees"]

log = logging.getLogger("hdsd.repair")

_FORMAT = 2  # 2: digests of name ids (names sealed at rest), not of names
_PAGE = 20_000


class PeerTrees:
    """The per-peer trees of one node. Thread-safe: :meth:`catch_up` runs in worker threads
    while the event loop reads hashes."""

    def __init__(self, store: Store, layout: Layout, name: str, path: Path,
                 plan_of: Callable[[str], str] = lambda tenant: "standard") -> None:
        self.store = store
        self.layout = layout
        # While the layout migrates: the layout keys come from. A pair of nodes then compares
        # the keys placed on both under either layout, which is what moves them to their new
        # replicas (and keeps comparing them with the old ones until the migration is done).
        self.previous: Layout | None = None
        self.name = name
        self.path = path
        # Which node role holds a tenant's keys (the catalog's answer, injected by the node).
        self.plan_of = plan_of
        self._lock = threading.Lock()
        self._catching_up = threading.Lock()
        self.building = False  # rebuilt for a new layout version: not comparable meanwhile
        self._watermark = 0
        self._saved_watermark = -1
        # Keys go to every node when each site has exactly replicas_per_site nodes (the usual
        # 1+1) and none is a backup node: then one tree serves every peer and placement need
        # not be computed per key.
        self._everyone = not layout.has_backup_nodes() and all(
            len(layout.site_nodes(s)) == layout.replicas_per_site for s in layout.sites)
        self.peers = [n.name for n in layout.nodes if n.name != name]
        self.trees: dict[str, MerkleTree] = {}
        shared = MerkleTree()
        for peer in self.peers:
            self.trees[peer] = shared if self._everyone else MerkleTree()
        self._load()

    def set_layouts(self, layout: Layout, previous: Layout | None) -> None:
        """A new layout version (live): start the trees again from the index (blocking, run
        it in a thread; a comparison meanwhile sees trees still filling and finds differing
        leaves, which only costs a longer round)."""
        with self._catching_up, self._lock:
            self.layout = layout
            self.previous = previous
            self._everyone = previous is None and not layout.has_backup_nodes() and all(
                len(layout.site_nodes(s)) == layout.replicas_per_site for s in layout.sites)
            names = [n.name for n in layout.nodes]
            if previous is not None:
                names += [n.name for n in previous.nodes if n.name not in names]
            self.peers = [n for n in names if n != self.name]
            shared = MerkleTree()
            self.trees = {p: shared if self._everyone else MerkleTree() for p in self.peers}
            self._watermark = 0
            self._saved_watermark = -1

    # -- which peers share a key -------------------------------------------------------------
    def sharing(self, tenant: str, bucket: str, key: str) -> list[str]:
        """The peers that are replicas of the key along with this node (empty if this node
        is not a replica)."""
        if self._everyone:
            return self.peers
        pkey = placement_key(tenant, bucket, key)
        plan = self.plan_of(tenant)
        placed = self.layout.replicas(pkey, plan)
        names = [n.name for nodes in placed.values() for n in nodes]
        if self.previous is not None:
            before = self.previous.replicas(pkey, plan)
            names += [n.name for nodes in before.values() for n in nodes if n.name not in names]
        return [n for n in names if n != self.name] if self.name in names else []

    def shares(self, peer: str, v: Version) -> bool:
        return peer in self.sharing(v.tenant, v.bucket, v.key)

    # -- following the index -----------------------------------------------------------------
    @property
    def watermark(self) -> int:
        return self._watermark

    @property
    def saved(self) -> bool:
        """Whether the snapshot holds every version the trees do (a new layout's trees, or
        versions a round caught up with, wait for the next :meth:`save`)."""
        return self._watermark == self._saved_watermark

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Add every version indexed since the last call; returns how many. Blocking."""
        added = 0
        with self._catching_up:
            while True:
                # Placement needs the names (opened) unless every node holds every key.
                rows = self.store.version_names_since(self._watermark, _PAGE,
                                                      with_names=not self._everyone)
                if not rows:
                    return added
                updates = []
                for r in rows:
                    if self._everyone:
                        peers = self.peers
                    elif r.bucket is None or r.key is None:
                        continue  # no key here (shredded): garbage, compared by no one
                    else:
                        peers = self.sharing(r.tenant, r.bucket, r.key)
                    if peers:
                        updates.append((peers, leaf_of(r.khash),
                                        version_digest(r.tenant, r.name_id, r.hlc, r.node)))
                with self._lock:
                    for peers, leaf, digest in updates:
                        if self._everyone:
                            self.trees[self.peers[0]].toggle(leaf, digest)
                        else:
                            for peer in peers:
                                self.trees[peer].toggle(leaf, digest)
                    self._watermark = rows[-1].vid
                added += len(rows)
                if progress is not None:
                    progress(added)

    def hashes(self, peer: str, depth: int, indices: list[int]) -> list[bytes]:
        with self._lock:
            return self.trees[peer].hashes(depth, indices)

    def count(self, peer: str) -> int:
        with self._lock:
            return self.trees[peer].count

    def leaf_members(self, peer: str, leaf: int) -> dict[bytes, Version]:
        """The versions this node holds in *leaf* that *peer* should hold too, by digest.
        Blocking. Also corrects the tree's leaf if it drifted from the index."""
        return self.leaves_members(peer, [leaf])[leaf]

    def leaves_members(self, peer: str, leaves: list[int]) -> dict[int, dict[bytes, Version]]:
        """:meth:`leaf_members` of each of *leaves*, reading the index once per run of
        consecutive leaves rather than once per leaf: a rebuild compares every leaf (an empty
        node differs everywhere), 256 at a time, and one range query then replaces 256."""
        out: dict[int, dict[bytes, Version]] = {}
        wanted = sorted(set(leaves))
        start = 0
        while start < len(wanted):
            end = start + 1
            while end < len(wanted) and wanted[end] == wanted[end - 1] + 1:
                end += 1
            run = wanted[start:end]
            low, high = leaf_range(run[0])[0], leaf_range(run[-1])[1]
            rows: dict[int, list[tuple[int, bytes, Version]]] = {leaf: [] for leaf in run}
            for row in self.store.versions_by_key_hash(low, high):
                rows[leaf_of(khash_of(row[1]))].append(row)
            for leaf in run:
                out[leaf] = self._members_of(peer, leaf, rows[leaf])
            start = end
        return out

    def _members_of(self, peer: str, leaf: int, rows: list[tuple[int, bytes, Version]]
                    ) -> dict[bytes, Version]:
        members: dict[bytes, Version] = {}
        with self._lock:
            watermark = self._watermark
            actual = 0
            for vid, nid, v in rows:
                if not self.shares(peer, v):
                    continue
                digest = version_digest(v.tenant, nid, v.hlc, v.node)
                members[digest.to_bytes(16, "big")] = v
                if vid <= watermark:  # newer ones are not in the tree yet: catch_up adds them
                    actual ^= digest
            tree = self.trees[peer]
            if tree.leaf(leaf) != actual:
                log.info("event=merkle_leaf_corrected peer=%s leaf=%d", peer, leaf)
                tree.correct_leaf(leaf, actual)
        return members

    # -- snapshot ----------------------------------------------------------------------------
    def catch_up_and_save(self) -> int:
        """:meth:`catch_up`, then :meth:`save`; returns how many versions were added.
        Blocking."""
        added = self.catch_up()
        self.save()
        return added

    def save(self) -> None:
        """Write the snapshot (atomically) if anything changed since the last one. Blocking."""
        with self._lock:
            if self._watermark == self._saved_watermark:
                return
            watermark = self._watermark
            body = {"format": _FORMAT, "layout": self._layout_key(), "node": self.name,
                    "index": self.store.index_instance(), "watermark": watermark,
                    "trees": {p: [t.count, t.leaves_bytes()] for p, t in self._unique()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, packb(body))
        self._saved_watermark = watermark

    def _layout_key(self) -> str:
        prev = "" if self.previous is None else "+" + self.previous.layout_id
        return self.layout.layout_id + prev

    def _unique(self) -> list[tuple[str, MerkleTree]]:
        return [(self.peers[0], self.trees[self.peers[0]])] if self._everyone and self.peers \
            else list(self.trees.items())

    def _load(self) -> None:
        try:
            raw = unpackb(self.path.read_bytes())
            if (raw["format"] != _FORMAT or raw["layout"] != self._layout_key()
                    or raw["node"] != self.name or raw["index"] != self.store.index_instance()):
                log.info("event=merkle_snapshot_stale path=%s", self.path)
                return
            watermark = int(raw["watermark"])
            loaded = {p: MerkleTree.from_leaves(leaves, count)
                      for p, (count, leaves) in raw["trees"].items()}
            if self._everyone:
                shared = loaded[self.peers[0]] if self.peers else MerkleTree()
                self.trees = dict.fromkeys(self.peers, shared)
            else:
                self.trees = {p: loaded[p] for p in self.peers}
            self._watermark = self._saved_watermark = watermark
        except FileNotFoundError:
            return
        except (OSError, PackError, KeyError, TypeError, ValueError) as exc:
            log.warning("event=merkle_snapshot_unreadable path=%s error=%s", self.path, exc)
