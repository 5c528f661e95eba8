"""Live layout changes on one node: the layout record it keeps, adopting newer versions, driving
a migration through its phases, and reclaiming the space of keys that moved away.

The theory (phases, the two-layout write rule) is in :mod:`hdsd.cluster._record`. Here:

* **Keeping.** ``layout.json`` in the data directory holds the highest version this node has
  adopted (written before the node acts on it, atomically); without it the version is 0, the
  ``[[sites]]`` of node.toml. A version is adopted live: the peer pool dials nodes that joined
  (and closes links to nodes that left), the write coordinator places keys on the union,
  anti-entropy rebuilds its trees over the keys each pair shares and compares with every peer.
* **Learning.** The operator pushes a version to every node it reaches (``LayoutPush``); a node
  pushes its own record to every node of both layouts while a migration runs (the reply carries
  the receiver's, so each push also learns); a peer message under a layout id this node does
  not accept makes it ask the sender for its record.
* **Driving.** Any node may publish the next phase once its condition holds (every node runs
  the version; then every node compared with each peer since the sync phase began): the next
  record is a pure function of the current one, so two nodes publishing it publish the same.
* **Reclaiming.** Once stable, a node holding versions of keys it is no longer a replica of
  asks every replica of each such key whether it holds every one of those versions; only then
  it forgets them (:meth:`hdsd.store.Store.forget_keys`) and compaction frees their segments.
  Keys whose replicas did not all confirm are asked again later, never assumed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._atomic import atomic_write
from .._errors import ConfigError, HdsdError, InvalidRequest
from ..cluster import LayoutRecord
from ..peers import to_thread
from ..wire import UNSENT, FetchVersions, LayoutPush, LayoutState

if TYPE_CHECKING:
    from ._config import NodeConfig
    from ._server import Node

__all__ = ["LAYOUT_FILE", "LayoutKeeper", "load_record", "save_record"]

log = logging.getLogger("hdsd.node")

LAYOUT_FILE = "layout.json"
_RECLAIMED_FILE = "layout-reclaimed"
_DRIVE_EVERY_S = 1.0
_RECLAIM_RETRY_S = 5.0
_RECLAIM_BATCH = 512
_ASK_CONCURRENCY = 8


def load_record(config: NodeConfig) -> LayoutRecord:
    """The layout version this node runs: ``layout.json`` if present, else version 0 made of
    node.toml's ``[[sites]]``."""
    base = LayoutRecord(cluster_id=config.cluster_id, version=0, layout=config.layout())
    path = config.data_dir / LAYOUT_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        record = LayoutRecord.from_wire(raw)
    except FileNotFoundError:
        return base
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a layout record ({exc}); restore it from another node "
                          "(hdsd layout show --json) or remove it to start from [[sites]]") \
            from None
    if record.cluster_id != config.cluster_id:
        raise ConfigError(f"{path} is a layout of cluster {record.cluster_id!r}, this node is "
                          f"in {config.cluster_id!r}")
    return record


def save_record(path: Path, record: LayoutRecord) -> None:
    atomic_write(path, json.dumps(record.to_wire(), sort_keys=True, indent=1).encode() + b"\n",
                 0o600)


class LayoutKeeper:
    def __init__(self, node: Node, record: LayoutRecord) -> None:
        self.node = node
        self.record = record
        self.path = node.config.data_dir / LAYOUT_FILE
        self._adopting = trio.Lock()
        self._settling = trio.Lock()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._learning: set[str] = set()
        # When this node's trees were ready for the current version (None: not yet): a round
        # counts towards the sync phase only if it began after that.
        self.ready_at: float | None = None
        self.adopted_at = time.time()
        self.conflict = ""
        self.peers_behind: dict[str, Any] = {}
        self.reclaim: dict[str, Any] = {"state": "idle"}
        self.history: list[dict[str, Any]] = []
        self._moved_at: dict[str, int] = {}

    # -- reading -------------------------------------------------------------------------------
    def synced(self) -> bool:
        """Syncing phase: a clean round with every peer sharing keys began after this node's
        trees were ready for the version (so it compared everything written under the union)."""
        if self.record.phase != "syncing" or self.ready_at is None:
            return False
        clean = self.node.doubts.clean_round
        return all(clean.get(p, 0.0) >= self.ready_at
                   for p in self.node.maintenance.trees.peers
                   if p not in self.record.gone)

    def _peers_synced(self) -> tuple[int, int]:
        if self.ready_at is None:
            return 0, 0
        peers = [p for p in self.node.maintenance.trees.peers if p not in self.record.gone]
        clean = self.node.doubts.clean_round
        return sum(1 for p in peers if clean.get(p, 0.0) >= self.ready_at), len(peers)

    def reply(self) -> dict[str, Any]:
        return {"node": self.node.config.name, "version": self.record.version,
                "phase": self.record.phase, "digest": self.record.digest,
                "synced": self.synced(), "record": self.record.to_wire()}

    def describe(self) -> dict[str, Any]:
        r = self.record
        done, total = self._peers_synced()
        return {"version": r.version, "phase": r.phase, "change": r.change,
                "id": r.layout.layout_id,
                "previous_id": r.previous.layout_id if r.previous is not None else None,
                "nodes": [n.name for n in r.layout.nodes], "leaving": r.leaving(),
                "gone": list(r.gone), "adopted_at": self.adopted_at,
                "trees_ready": self.ready_at is not None,
                "peers_compared": done, "peers_to_compare": total,
                "waiting_for": dict(self.peers_behind), "conflict": self.conflict or None,
                "in_layout": any(n.name == self.node.config.name for n in r.layout.nodes),
                "reclaim": dict(self.reclaim), "history": self.history[-5:],
                # What the rounds this node ran moved (pulled and pushed) since the last
                # change began: summed over the nodes, the data the change moved.
                "moved": {k: v - self._moved_at.get(k, 0)
                          for k, v in self.node.maintenance.moved.items()},
                "record": r.to_wire()}

    # -- adopting ------------------------------------------------------------------------------
    async def offer(self, record: LayoutRecord, source: str, *, operator: bool = False) -> bool:
        """Adopt *record* if it is newer than the current version; True if adopted. An
        operator's change is refused while another one migrates."""
        if record.cluster_id != self.node.config.cluster_id:
            raise InvalidRequest(f"layout record of cluster {record.cluster_id!r}, this is "
                                 f"{self.node.config.cluster_id!r}")
        async with self._adopting:
            cur = self.record
            if record.version == cur.version and record.digest != cur.digest:
                self.conflict = (f"{source} holds another layout version {record.version} "
                                 f"({record.change!r} vs {cur.change!r})")
                log.error("event=layout_conflict version=%d source=%s", record.version, source)
                if operator:
                    raise InvalidRequest(f"layout version {record.version} is already "
                                         f"{cur.change!r} here; run hdsd layout show and stage "
                                         "the change again")
                return False
            if record.version <= cur.version:
                return False
            if operator and cur.migrating and record.previous != cur.previous:
                raise InvalidRequest(f"layout version {cur.version} is still {cur.phase} "
                                     f"({cur.change}); wait until hdsd layout status says "
                                     "stable")
            await to_thread(save_record, self.path, record)
            self._switch(record, source)
            return True

    def _switch(self, record: LayoutRecord, source: str) -> None:
        previous = self.record
        node = self.node
        self.record = record
        self.adopted_at = time.time()
        self.ready_at = None
        self.conflict = ""
        self.peers_behind = {}
        node.layout = record.layout
        node.peers.set_nodes(record.all_nodes())
        node.replicator.set_record(record)
        node.audit_shipper.set_layout(record.layout)
        if record.has_node(node.config.name):
            node.role = record.node(node.config.name).role
        self.history.append({"version": record.version, "phase": record.phase,
                             "change": record.change, "from": source, "at": self.adopted_at})
        log.warning("event=layout_adopted node=%s version=%d phase=%s change=%r from=%s "
                    "layout=%s", node.config.name, record.version, record.phase, record.change,
                    source, record.layout.layout_id)
        if record.phase == "stable" and previous.migrating:
            self.reclaim = {"state": "pending", "after_version": record.version}
        if record.phase == "migrating" or not previous.migrating:
            # What anti-entropy brings here from now on is this change's data movement.
            self._moved_at = dict(node.maintenance.moved)
        self._changed.set()
        self._changed = trio.Event()
        if self._nursery is not None:
            self._nursery.start_soon(self._settle, record)

    async def _settle(self, record: LayoutRecord) -> None:
        """Trees for *record* (in the background: a large store takes a while)."""
        async with self._settling:
            if record is not self.record:
                return  # a newer version came meanwhile: its own settle follows
            await self.node.maintenance.set_record(record)
            if record is self.record:
                self.ready_at = time.time()
                log.info("event=layout_trees_ready node=%s version=%d", self.node.config.name,
                         record.version)

    def learn_from(self, peer: str) -> None:
        """A peer sent a layout id this node does not accept: ask it for its record (once at
        a time per peer, in the background)."""
        if self._nursery is None or peer in self._learning:
            return
        self._learning.add(peer)
        self._nursery.start_soon(self._learn, peer)

    async def _learn(self, peer: str) -> None:
        try:
            await self._push_to(peer, self.record)
        except HdsdError as exc:
            log.info("event=layout_learn_failed peer=%s error=%s", peer, exc)
        finally:
            self._learning.discard(peer)

    async def _push_to(self, peer: str, record: LayoutRecord) -> LayoutState:
        body = await self.node.peers.call(peer, LayoutPush(UNSENT, record.to_wire()))
        if body["version"] > self.record.version:
            try:
                await self.offer(LayoutRecord.from_wire(body["record"]), peer)
            except (ValueError, HdsdError) as exc:
                log.warning("event=layout_from_peer_refused peer=%s error=%s", peer, exc)
        return body

    # -- the service ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._settle, self.record)
            if self.record.phase == "stable" and self.record.version > 0 \
                    and self._reclaimed_version() < self.record.version:
                self.reclaim = {"state": "pending", "after_version": self.record.version}
            task_status.started()
            while True:
                try:
                    if self.record.migrating:
                        await self._drive_once()
                    elif self.reclaim.get("state") == "pending":
                        await self._reclaim_once()
                except HdsdError as exc:
                    log.info("event=layout_step_failed error=%s", exc)
                wait = _DRIVE_EVERY_S if self.record.migrating else (
                    _RECLAIM_RETRY_S if self.reclaim.get("state") == "pending" else 3600)
                with trio.move_on_after(wait):
                    await self._changed.wait()

    async def _drive_once(self) -> None:
        """Push this node's record to every node of both layouts; publish the next phase once
        its condition holds everywhere."""
        record = self.record
        me = self.node.config.name
        names = [n.name for n in record.all_nodes() if n.name != me and n.name not in record.gone]
        replies: dict[str, LayoutState] = {}
        behind: dict[str, Any] = {}

        async def ask(name: str) -> None:
            try:
                replies[name] = await self._push_to(name, record)
            except HdsdError as exc:
                behind[name] = f"unreachable: {exc}"

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(ask, name)
        if self.record is not record:
            return  # learnt a newer version meanwhile
        for name, body in replies.items():
            version = body["version"]
            if record.phase == "migrating" and version < record.version:
                behind[name] = f"runs layout version {version}"
            elif record.phase == "syncing" and version == record.version \
                    and not body["synced"]:
                behind[name] = "comparing with its peers"
            elif version < record.version:
                behind[name] = f"runs layout version {version}"
        if record.phase == "syncing" and not self.synced():
            behind[me] = "comparing with its peers"
        self.peers_behind = behind
        if behind:
            return
        following = record.next_phase()
        if following is not None:
            await self.offer(following, me)

    # -- reclaiming ------------------------------------------------------------------------------
    def _reclaimed_version(self) -> int:
        try:
            return int((self.node.config.data_dir / _RECLAIMED_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def _reclaim_once(self) -> None:
        """Forget the keys this node no longer holds, once each of their replicas confirmed
        holding every version of them this node has; then compact."""
        record = self.record
        node = self.node
        me = node.config.name
        if not any(n.name == me for n in record.layout.nodes):
            # This node left the layout: everything it holds is elsewhere now; the operator
            # stops it and wipes the disk (hdsd status says it may).
            self.reclaim = {"state": "left_layout", "version": record.version}
            return
        started = time.time()
        self.reclaim = {**self.reclaim, "state": "pending", "started": started,
                        "scanning": True}

        def foreign() -> dict[tuple[str, str, str], set[tuple[int, str]]]:
            keys: dict[tuple[str, str, str], set[tuple[int, str]]] = defaultdict(set)
            for v in node.store.iter_versions():
                placed = node.replicator.replicas_for(v.tenant, v.bucket, v.key)
                if not any(me in names for names in placed.values()):
                    keys[(v.tenant, v.bucket, v.key)].add(v.order)
            return keys

        keys: dict[tuple[str, str, str], set[tuple[int, str]]] = await to_thread(foreign)
        confirmed: list[tuple[str, str, str]] = []
        waiting: dict[str, str] = {}
        limit = trio.Semaphore(_ASK_CONCURRENCY)

        async def check(k: tuple[str, str, str]) -> None:
            tenant, bucket, key = k
            placed = node.replicator.replicas_for(tenant, bucket, key)
            holders = [n for names in placed.values() for n in names]
            async with limit:
                for holder in holders:
                    try:
                        body = await node.peers.call(
                            holder, FetchVersions(UNSENT, record.layout.layout_id, tenant,
                                                  bucket, key))
                    except HdsdError as exc:
                        waiting[f"{bucket}/{key}"] = f"{holder}: {exc}"
                        return
                    held = {(w.get("h"), w.get("n")) for w in body["versions"]}
                    if not keys[k] <= held:
                        waiting[f"{bucket}/{key}"] = f"{holder} lacks some of its versions"
                        return
            confirmed.append(k)

        async with trio.open_nursery() as nursery:
            for k in keys:
                nursery.start_soon(check, k)
        if self.record is not record:
            return
        versions = chunks = 0
        for i in range(0, len(confirmed), _RECLAIM_BATCH):
            v, c = await to_thread(node.store.forget_keys, confirmed[i:i + _RECLAIM_BATCH])
            versions += v
            chunks += c
        if confirmed:
            node.maintenance.request_compaction(everything=True)
        done = not waiting
        self.reclaim = {"state": "done" if done else "pending", "after_version": record.version,
                        "started": started, "finished": time.time(),
                        "keys_moved_away": len(keys), "keys_forgotten": len(confirmed),
                        "versions_forgotten": versions, "chunks_forgotten": chunks,
                        "keys_waiting": len(waiting),
                        "waiting_sample": dict(list(waiting.items())[:5])}
        log.warning("event=layout_reclaim node=%s version=%d keys_forgotten=%d versions=%d "
                    "chunks=%d keys_waiting=%d", me, record.version, len(confirmed), versions,
                    chunks, len(waiting))
        if done:
            await to_thread(atomic_write, node.config.data_dir / _RECLAIMED_FILE,
                            f"{record.version}\n".encode(), 0o600)
