"""The node's maintenance service: periodic and on-demand repair and scrub, and rebuild.

* Repair: every ``interval`` (jittered ±20 %, so nodes do not all start together) or when an
  operator asks, a round with each peer whose name sorts after this node's — every pair of
  nodes is compared once, by its lower-named member.
* Scrub: every ``scrub_interval`` or on demand, at its own rate.
* Reconciliation: as soon as a peer is in doubt (:class:`~hdsd.replication.PeerDoubts`: a
  broken link, an unanswered write, an unclean start, a site restored), a round with that peer
  runs — not at the next periodic round — and lifts the doubt when it finishes cleanly; a round
  that received versions puts the other peers in doubt (they may lack them too). This is what
  makes the live RPO drain by itself after a partition or a crash.
* Rebuild: a node that starts with an empty store while it has peers (a replaced disk, a wiped
  data directory), or whose log recovery set damaged ranges aside (``salvaged``), pulls
  everything it should hold from every peer before it counts as rebuilt; meanwhile its reads
  are forwarded (``rebuilding`` tells the read paths not to trust the local store alone). After
  a salvage a scrub follows, for chunks a surviving version names but the lost range held.
  An empty store is "checking" until its rounds show what kind of empty it is: it becomes a
  rebuild ("running") as soon as a round brings it a version written before it started (by
  HLC, less :data:`STARTED_SKEW_S`) — it should have held that one: wiped, or down while it
  was written. A new node of a new cluster only ever receives versions written since it
  started (clients wrote before its first round, the copies were in flight to it): it pulls
  them the same way, but is no rebuild, and operators see none.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from .._deadline import deadline
from .._errors import HdsdError, Unavailable
from ..cluster import HybridClock, Layout, LayoutRecord
from ..peers import PeerLink, to_thread
from ..replication import PeerDoubts
from ..store import Store, Version
from ..wire import UNSENT, TreeLevel
from ._scrub import ChunkOpener, Scrubber, ScrubReport
from ._sync import AntiEntropy, RepairReport
from ._trees import PeerTrees

__all__ = ["LINK_WAIT_S", "STARTED_SKEW_S", "Maintenance"]

log = logging.getLogger("hdsd.repair")

#: How long a repair an operator asked for waits for a peer's link before failing the pair.
LINK_WAIT_S = 30.0
_LINK_POLL_S = 0.25
_MIB = 1 << 20
#: A version an empty node lacks is "written before it started" (a rebuild) if its HLC's wall
#: time is older than the node's start by more than this: the nodes' clocks may differ by
#: that much (NTP keeps them within milliseconds). Erring low is safe: a new node whose peers'
#: clocks run behind is taken for a wiped one and rebuilds, as every empty node once did.
STARTED_SKEW_S = 1.0


class _Task:
    """One kind of maintenance: runs counted, one at a time, requests coalesced."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.wanted = trio.Event()
        self.running = False
        self.completed = 0
        self.requested = 0
        self.progress: dict[str, Any] = {}
        self.last: dict[str, Any] | None = None
        self.live: ScrubReport | None = None  # a scrub's report while it runs

    def request(self) -> int:
        """Ask for a run; returns the run number that will include the request."""
        self.requested = self.completed + (2 if self.running else 1)
        self.wanted.set()
        return self.requested

    async def next_due(self) -> None:
        if self.interval_s <= 0:
            await self.wanted.wait()
            return
        with trio.move_on_after(self.interval_s * random.uniform(0.8, 1.2)):
            await self.wanted.wait()

    def describe(self) -> dict[str, Any]:
        return {"running": self.running, "runs_completed": self.completed,
                "runs_requested": self.requested,
                "progress": self.live.as_dict() if self.live else dict(self.progress),
                "last": self.last}


class Maintenance:
    def __init__(self, *, name: str, layout: Layout, store: Store, peers: PeerLink,
                 snapshot: Path, observe_hlc: Callable[[int], None], open_chunk: ChunkOpener,
                 repair_interval_s: float, repair_rate_mib_s: float, scrub_interval_s: float,
                 scrub_rate_mib_s: float, rebuild_rate_mib_s: float = 0.0,
                 salvaged: tuple[str, ...] = (),
                 plan_of: Callable[[str], str] = lambda tenant: "standard",
                 dead_tenants: Callable[[], frozenset[str]] = frozenset,
                 doubts: PeerDoubts | None = None, purge_grace_s: float = 192 * 3600.0,
                 snapshot_s: float = 30.0) -> None:
        self.name = name
        self.snapshot_s = snapshot_s
        self.doubts = doubts if doubts is not None else PeerDoubts(
            n.name for n in layout.nodes if n.name != name)
        # One round at a time per node: periodic, reconciling and rebuilding rounds share it.
        self._round_lock = trio.Lock()
        self.salvaged = salvaged
        self.dead_tenants = dead_tenants
        self.layout = layout
        self.store = store
        self.peers = peers
        self.trees = PeerTrees(store, layout, name, snapshot, plan_of)
        self.sync = AntiEntropy(name=name, layout_id=layout.layout_id, store=store, peers=peers,
                                trees=self.trees, observe_hlc=observe_hlc,
                                rate_bytes_s=repair_rate_mib_s * _MIB,
                                bulk_rate_bytes_s=rebuild_rate_mib_s * _MIB)
        self.sync.on_receive = self._received
        here = [n.name for n in layout.nodes if n.site == layout.node(name).site]
        sources = sorted((n.name for n in layout.nodes if n.name != name),
                         key=lambda n: (n not in here, n))
        self.scrubber = Scrubber(store=store, peers=peers, layout_id=layout.layout_id,
                                 sources=sources, open_chunk=open_chunk,
                                 rate_bytes_s=scrub_rate_mib_s * _MIB)
        self.repair = _Task(repair_interval_s)
        self.scrub = _Task(scrub_interval_s)
        # After a tenant is shredded, and every 6 h for what was sealed since (the head
        # segment is never compacted, so a shredded tenant's last records wait for it).
        self.compaction = _Task(6 * 3600)
        self._compacted: tuple[frozenset[str], int] = (frozenset(), 0)
        self._purges_seen = 0
        self.purge_grace_s = purge_grace_s
        self.rebuild: dict[str, Any] | None = None
        # What the rounds this node ran moved, either way, since start (a layout migration
        # reports its share: each transfer is counted once, by the node that ran the round).
        self.moved = {"versions_received": 0, "versions_sent": 0, "payload_bytes_received": 0,
                      "payload_bytes_sent": 0}
        self.ready = False  # trees caught up with the index at least once

    @property
    def rebuilding(self) -> bool:
        """The local store is known to lack data its peers hold: merge every read with them."""
        return self.rebuild is not None and self.rebuild["state"] == "running"

    @property
    def checking(self) -> bool:
        """The store started empty and no round has told yet whether it was wiped or is new:
        a read the local store cannot answer asks the peers too (answering "not found" from a
        wiped disk would be wrong; a new cluster leaves this state once a round with every
        peer brought nothing written before this node started)."""
        return self.rebuild is not None and self.rebuild["state"] == "checking"

    async def set_record(self, record: LayoutRecord) -> None:
        """A new layout version (live): trees over the keys each pair shares under it (the
        union of both layouts while migrating), then a round with every peer at once — that
        is what moves keys to their new replicas (see hdsd.cluster.LayoutRecord)."""
        self.layout = record.layout
        self.sync.layout_id = record.layout.layout_id
        self.scrubber.layout_id = record.layout.layout_id
        peers = [n for n in record.all_nodes() if n.name != self.name]
        site = record.node(self.name).site if record.has_node(self.name) else ""
        self.scrubber.sources = [n.name for n in sorted(peers, key=lambda n: (n.site != site,
                                                                               n.name))]
        self.doubts.keep_only(n.name for n in peers)
        # No round while the trees are rebuilt (two half-built trees may agree on a leaf one
        # of the nodes holds versions in), and peers asking meanwhile are told to retry.
        async with self._round_lock:
            self.trees.building = True
            try:
                await to_thread(self.trees.set_layouts, record.layout, record.previous)
                await to_thread(self.trees.catch_up)
            finally:
                self.trees.building = False
        self.doubts.doubt(None, f"layout version {record.version} ({record.phase})")

    def start(self, task: str) -> dict[str, Any]:
        """Operator request: run *task* (``repair``, ``scrub`` or ``compact``) as soon as
        possible."""
        if task == "compact":
            run = self.request_compaction(everything=True)
            return {"node": self.name, "task": task, "run": run, **self.compaction.describe()}
        t = self.repair if task == "repair" else self.scrub
        run = t.request()
        return {"node": self.name, "task": task, "run": run, **t.describe()}

    def request_compaction(self, *, everything: bool = False) -> int:
        """Reclaim the log space of shredded tenants and purged versions (soon, in the
        background); *everything*: look at every sealed segment again (keys were forgotten
        after a layout change, so segments examined before hold garbage now). Returns the
        run that will include the request."""
        if everything:
            self._compacted = (self._compacted[0], 0)
        return self.compaction.request()

    def describe(self) -> dict[str, Any]:
        return {"repair": self.repair.describe(), "scrub": self.scrub.describe(),
                "compaction": self.compaction.describe(),
                "rebuild": self.rebuild, "merkle": {"ready": self.ready,
                                                    "indexed_through_vid": self.trees.watermark}}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        empty = not await to_thread(self.store.version_names_since, 0, 1)
        if self.trees.peers and (empty or self.salvaged):
            reason = ("the store was empty" if empty else
                      "log ranges were damaged and set aside: " + ", ".join(self.salvaged))
            # "checking" until a round with a peer shows what kind of empty this is: a new
            # node of a new cluster (nothing to pull: done) or a wiped one ("running").
            self.rebuild = {"state": "checking" if empty else "running", "reason": reason,
                            "started": time.time(),
                            "peers_total": len(self.trees.peers),
                            "peers_done": [], "versions_received": 0, "leaves_done": 0,
                            "leaves_total": 0, "bytes_received": 0, "rate_mib_s": 0.0,
                            "eta_s": None, "rate_limit_mib_s": self.sync.bulk_rate_bytes_s / _MIB}
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_index)
                if self.rebuild is not None:
                    nursery.start_soon(self._rebuild)
                nursery.start_soon(self._loop, self.repair, self._repair_round)
                nursery.start_soon(self._reconcile)
                nursery.start_soon(self._loop, self.scrub, self._scrub_run)
                nursery.start_soon(self._loop, self.compaction, self._compact_run)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await to_thread(self.trees.save)
                except OSError as exc:
                    log.warning("event=merkle_snapshot_failed error=%s", exc)

    async def _follow_index(self) -> None:
        """Keep the trees close to the index (so a round's catch-up is short) and snapshot
        them every ``[repair] snapshot_s``: one worker-thread hop for both, and the snapshot
        only when something was indexed since the last one (a node with nothing written
        rewrites nothing). Neither the hop nor the catch-up query while the store's
        generation has not moved and the trees hold nothing unsaved (a new layout's)."""
        followed = self.store.generation  # read before: a commit meanwhile moves it again
        await to_thread(self.trees.catch_up)
        self.ready = True
        await to_thread(self.trees.save)
        while True:
            await trio.sleep(self.snapshot_s)
            generation = self.store.generation
            if generation == followed and self.trees.saved:
                continue
            await to_thread(self.trees.catch_up_and_save)
            followed = generation

    async def _loop(self, task: _Task, body: Callable[[], Any]) -> None:
        while True:
            await task.next_due()
            task.wanted = trio.Event()
            task.running = True
            try:
                await body()
            finally:
                task.running = False
                task.completed += 1

    async def _round(self, peer: str,
                     progress: Callable[[RepairReport, int, int], None] | None = None,
                     *, bulk: bool = False) -> RepairReport:
        """One round with *peer*; lifts its doubt when clean, and doubts the other peers
        when it brought versions here (they may lack them as well)."""
        async with self._round_lock:
            began = time.time()
            if peer not in self.trees.trees:
                # It left the layout meanwhile (or shares no key with this node any more).
                self.doubts.verified(peer, began)
                return RepairReport(peer=peer)
            report = await self.sync.repair_with(peer, progress, bulk=bulk)
        self.moved["versions_received"] += report.versions_received
        self.moved["versions_sent"] += report.versions_sent
        self.moved["payload_bytes_received"] += report.payload_bytes_received
        self.moved["payload_bytes_sent"] += report.payload_bytes_sent
        if report.error is None:
            self.doubts.verified(peer, began)
            if report.versions_received:
                self.doubts.doubt([p for p in self.doubts.peers if p != peer],
                                  f"a round with {peer} received versions")
        return report

    async def _reconcile(self) -> None:
        """Compare with every peer in doubt, at once and until each doubt is lifted."""
        delay = 0.2
        while self.rebuild is not None and self.rebuild["state"] != "done":
            await trio.sleep(0.5)  # a rebuild compares with every peer anyway
        while True:
            pending = self.doubts.pending()
            if not pending:
                delay = 0.2
                await self.doubts.wait_changed()
                continue
            failures = 0
            for peer in sorted(pending, key=pending.__getitem__):
                if peer not in self.trees.peers:
                    # No key is placed on both of us: nothing to compare.
                    self.doubts.verified(peer, time.time())
                    continue
                report = await self._round(peer)
                failures += report.error is not None
            if failures:
                with trio.move_on_after(delay):
                    await self.doubts.wait_changed()
                delay = min(delay * 2, 5.0)

    async def _repair_round(self) -> None:
        peers = [p for p in self.trees.peers if p > self.name]
        reports: list[dict[str, Any]] = []
        started = time.time()
        # An operator is waiting for this round (hdsd repair): a peer restarted a moment ago
        # is still being reconnected (backoff up to 2 s); wait for its link rather than fail.
        asked = self.repair.requested > self.repair.completed
        for peer in peers:
            if asked:
                down = await self._await_link(peer, LINK_WAIT_S)
                if down is not None:
                    report = RepairReport(peer=peer, error=down)
                    log.warning("event=repair_failed peer=%s error=%s", peer, down)
                    reports.append(report.as_dict())
                    continue
            self.repair.progress = {"peer": peer, "leaves_done": 0, "leaves_total": 0}
            report = await self._round(peer, self._progress(self.repair.progress))
            reports.append(report.as_dict())
        self.repair.progress = {}
        self.repair.last = {"started": started, "finished": time.time(), "peers": reports}

    async def _await_link(self, peer: str, within: float) -> str | None:
        """Wait until *peer* answers a request (at most *within* seconds); None once it does,
        else why it stayed unreachable. Progress shows the wait (``hdsd repair --wait``)."""
        t0 = trio.current_time()
        while True:
            limit = max(0.5, within)
            try:
                with deadline(limit, f"peer {peer} did not answer within {limit:g} s"):
                    await self.peers.call(peer, TreeLevel(UNSENT, self.layout.layout_id, 0, [0]))
                return None
            except Unavailable as exc:
                last = str(exc)
            except HdsdError:
                return None  # it answered: the round itself reports what it said
            waited = trio.current_time() - t0
            if waited >= within:
                return (f"unavailable: peer {peer} still unreachable after waiting {within:g} s "
                        f"for its link ({last}); is it running? run the repair again once it is")
            self.repair.progress = {"peer": peer, "waiting_for_link": True,
                                    "waited_s": round(waited, 1), "link_error": last}
            await trio.sleep(_LINK_POLL_S)

    async def _scrub_run(self) -> None:
        report = ScrubReport()
        self.scrub.live = report
        try:
            await self.scrubber.run(report)
        finally:
            self.scrub.live = None
        self.scrub.last = {**report.as_dict(), "finished": time.time()}

    async def _compact_run(self) -> None:
        dead = self.dead_tenants()
        started = time.time()
        # Segments examined with the same dead set need not be read again — unless versions
        # were purged since: their records, anywhere in the log, are garbage now.
        done_dead, done_through = self._compacted
        purges = self.store.purges_applied
        after = done_through if dead == done_dead and purges == self._purges_seen else 0
        try:
            released = await to_thread(self.store.release_purged, self.purge_grace_s)
            report = await to_thread(
                lambda: self.store.compact(dead, after_segment=0 if released else after))
        except HdsdError as exc:
            self.compaction.last = {"started": started, "error": f"{exc.code}: {exc.message}"}
            log.error("event=compaction_failed node=%s error=%s", self.name, exc)
            return
        self._compacted = (dead, report.sealed_through)
        self._purges_seen = purges
        self.compaction.last = {"started": started, "finished": time.time(),
                                "dead_tenants": sorted(dead), "chunks_released": released,
                                **asdict(report)}
        log.warning("event=compaction_done node=%s dead_tenants=%s segments_removed=%d "
                    "bytes_freed=%d records_moved=%d", self.name, ",".join(sorted(dead)),
                    report.segments_removed, report.bytes_freed, report.records_moved)

    async def _rebuild(self) -> None:
        assert self.rebuild is not None
        pending = list(self.trees.peers)
        delay = 0.5
        log.info("event=rebuild_begin node=%s peers=%s", self.name, ",".join(pending))
        while pending:
            for peer in list(pending):
                progress = self.rebuild
                progress["peer"] = peer
                progress["peer_started"] = time.time()
                report = await self._round(peer, self._rebuild_progress(progress), bulk=True)
                progress["versions_received"] += report.versions_received
                progress["bytes_received"] += report.payload_bytes_received
                progress["last_error"] = report.error  # a failed round is retried
                progress["versions_received_this_peer"] = 0
                progress["bytes_received_this_peer"] = 0
                if report.error is None:
                    pending.remove(peer)
                    progress["peers_done"].append(peer)
            if pending:
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.rebuild["state"] = "done"
        self.rebuild["finished"] = time.time()
        self.rebuild["eta_s"] = 0.0
        took = self.rebuild["finished"] - self.rebuild["started"]
        self.rebuild["rate_mib_s"] = round(self.rebuild["bytes_received"] / _MIB
                                           / max(took, 1e-6), 1)
        if self.salvaged:
            self.scrub.request()
        log.info("event=rebuild_done node=%s versions=%d", self.name,
                 self.rebuild["versions_received"])

    def _rebuild_progress(self, into: dict[str, Any]
                          ) -> Callable[[RepairReport, int, int], None]:
        update = self._progress(into)

        def rebuild_update(report: RepairReport, done: int, total: int) -> None:
            # (Leaves differing do not make a rebuild: a new cluster's writes in flight differ
            # too. _received tells, from the versions a round brings.)
            update(report, done, total)
            into["bytes_received_this_peer"] = report.payload_bytes_received
            # Leaves are filled uniformly (keys hash evenly), so the share of leaves done is
            # the share of the peer's data moved: ETA = time so far x what is left / done.
            elapsed = max(time.time() - float(into.get("peer_started", into["started"])), 1e-6)
            into["rate_mib_s"] = round(report.payload_bytes_received / _MIB / elapsed, 1)
            if total and done:
                into["eta_s"] = round(elapsed * (total - done) / done, 1)
        return rebuild_update

    def _received(self, peer: str, versions: list[Version]) -> None:
        """A round is about to store *versions* from *peer* (none is stored yet). While the
        store is "checking", one written before this node started makes it a rebuild: reads
        are merged with the peers from now on, before the first of them is visible here."""
        rebuild = self.rebuild
        if rebuild is None or rebuild["state"] != "checking":
            return
        since_ms = int((rebuild["started"] - STARTED_SKEW_S) * 1000)
        older = sum(HybridClock.wall_ms(v.hlc) < since_ms for v in versions)
        if older:
            rebuild["state"] = "running"
            log.warning("event=rebuild_running node=%s peer=%s versions_written_before_start=%d",
                        self.name, peer, older)

    @staticmethod
    def _progress(into: dict[str, Any]) -> Callable[[RepairReport, int, int], None]:
        def update(report: RepairReport, done: int, total: int) -> None:
            into["leaves_done"] = done
            into["leaves_total"] = total
            into["versions_received_this_peer"] = report.versions_received
        return update
