"""A whole cluster in one process, on trio's MockClock: the real :class:`Replicator` (write
fan-out, policies, hints, replay, retries settled under the policy, site modes) and the real
:class:`PeerDoubts` over a fault-injecting in-memory network and in-memory stores that lose
unsynced writes when their node crashes.

Anti-entropy is played by a stand-in (:meth:`SimNode._round`: the union of the versions both
nodes should hold, exchanged over the simulated links), driven exactly as the node drives the
real one: a round with each peer in doubt, lifting the doubt when it finishes cleanly, doubting
the other peers when it received versions.

Everything is deterministic: time is the mock clock, randomness comes from one seeded
``random.Random``, and blocking work runs inline (no threads).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from hdsd import ConnectionLost, HdsdError, NotFound, RequestTimeout, StoreFailedError
from hdsd.cluster import HybridClock, Layout, NodeInfo
from hdsd.replication import HintStore, ModeState, PeerDoubts, Replicator
from hdsd.store import ChunkRecord, EncodedCommit, Version
from hdsd.store._records import encode_record
from hdsd.wire import FetchChunk, FetchVersions, Message, PeerStatusRequest, Replicate, Request
from tests.helpers.sealing import SEALING

R = TypeVar("R")

FSYNC_S = 0.0005


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class MemStore:
    """Durable state of one node; a commit is durable only after its simulated fsync."""

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, bytes], bytes] = {}
        self.versions: dict[tuple[str, str, str, int, str], Version] = {}
        self.epoch = 0  # bumped by a crash: commits in flight across it are lost
        self.failed = False
        self.fail_next_fsync = False
        self.fsyncs = 0
        self.fsync_s = FSYNC_S  # how long a commit takes to become durable

    async def commit(self, records: Sequence[ChunkRecord | Version]) -> None:
        await self.start_commit(records).wait()

    def _sync(self, records: Sequence[ChunkRecord | Version], epoch: int) -> None:
        if epoch != self.epoch:
            raise ConnectionLost("node crashed before its fsync")
        if self.fail_next_fsync:
            self.fail_next_fsync, self.failed = False, True
            raise StoreFailedError("injected fdatasync failure")
        self.fsyncs += 1
        for r in records:
            if isinstance(r, ChunkRecord):
                self.chunks.setdefault((r.tenant, r.chunk_id), r.payload)
            else:
                self.versions.setdefault((r.tenant, r.bucket, r.key, r.hlc, r.node), r)

    def start_commit(self, records: Sequence[ChunkRecord | Version]) -> _MemCommit:
        """Queue now, durable ``fsync_s`` later (like the real log writer, it runs while the
        caller does other I/O)."""
        if self.failed:
            raise StoreFailedError("store stopped after an fsync failure")
        return _MemCommit(self, list(records), self.epoch, trio.current_time() + self.fsync_s)

    def encode_commit(self, records: Sequence[ChunkRecord | Version]) -> EncodedCommit:
        """Sealed as the real store seals them, so the coordinator sends its versions sealed
        (``EncodedCommit.wire_versions``) and the simulated replicas, which read each map's
        clear fields only, stand for nodes that predate sealed replication."""
        if self.failed:
            raise StoreFailedError("store stopped after an fsync failure")
        return EncodedCommit([encode_record(r, SEALING) for r in records])

    def start_encoded(self, commit: EncodedCommit,
                      chunks: Sequence[ChunkRecord] = ()) -> _MemCommit:
        return self.start_commit([*chunks, *(e.record if e.clear is None else e.clear
                                             for e in commit.records)])

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None:
        return self.versions.get((tenant, bucket, key, hlc, node))

    def is_purged(self, tenant: str, bucket: str, key: str, hlc: int, node: str) -> bool:
        return False  # the simulation writes no purge records (tests/store and e2e do)

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes:
        try:
            return self.chunks[(tenant, chunk_id)]
        except KeyError:
            raise NotFound("no such chunk") from None

    def find_request(self, tenant: str, request_id: bytes) -> Version | None:
        if not request_id:
            return None
        return next((v for v in self.versions.values()
                     if v.tenant == tenant and v.request_id == request_id), None)

    def of_key(self, tenant: str, bucket: str, key: str) -> list[Version]:
        return sorted((v for k, v in self.versions.items() if k[:3] == (tenant, bucket, key)),
                      key=lambda v: v.order)


class _MemCommit:
    def __init__(self, store: MemStore, records: list[ChunkRecord | Version], epoch: int,
                 durable_at: float) -> None:
        self.store = store
        self.records = records
        self.epoch = epoch
        self.durable_at = durable_at
        self.done = False

    async def wait(self) -> None:
        await trio.sleep_until(self.durable_at)
        if not self.done:
            self.done = True
            self.store._sync(self.records, self.epoch)

    def abandon(self) -> None:
        # Nobody waits, but a real log writer still makes the records durable (unless the node
        # crashed or its store failed): so does this one, a little early.
        if not self.done:
            self.done = True
            try:
                self.store._sync(self.records, self.epoch)
            except HdsdError:
                pass


class SimNode:
    def __init__(self, net: SimNet, info: NodeInfo, workdir: Path) -> None:
        self.net = net
        self.info = info
        self.store = MemStore()
        workdir.mkdir(parents=True, exist_ok=True)
        self.hints = HintStore(workdir / "hints.sqlite", SEALING)
        self.mode = ModeState(workdir / "mode.json", site=info.site)
        self.clock = HybridClock(wall_ms=lambda: int(trio.current_time() * 1000))
        # Kept across crashes like the node's file; a restart doubts every peer (the node does
        # so when its clean-stop marker is missing).
        self.doubts = PeerDoubts((n.name for n in net.layout.nodes if n.name != info.name),
                                 clock=trio.current_time)
        self.rounds = 0
        self.replicated_from: set[str] = set()  # coordinators whose Replicate it served
        self.alive = False
        self.replicator: Replicator | None = None
        self.requests: trio.Nursery | None = None  # client requests coordinated here
        self._scope: trio.CancelScope | None = None

    @property
    def name(self) -> str:
        return self.info.name

    async def start(self, nursery: trio.Nursery) -> None:
        self.store.failed = False  # a restart runs recovery: what was durable is there
        if self.replicator is not None:
            self.doubts.doubt(None, "restarted after a crash")
        self.replicator = Replicator(
            name=self.name, site=self.info.site, layout=self.net.layout, store=self.store,
            peers=SimLink(self.net, self.name), hints=self.hints, mode=self.mode,
            policy="each-site", on_peer_site_loss="refuse", timeout=self.net.timeout,
            offload=inline, doubts=self.doubts)
        self._scope = trio.CancelScope()
        self.alive = True
        await nursery.start(self._run, self._scope, self.replicator)

    async def _run(self, scope: trio.CancelScope, replicator: Replicator,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                self.requests = nursery
                await nursery.start(replicator.run)
                nursery.start_soon(self._reconcile)
                task_status.started()

    async def _reconcile(self) -> None:
        """Like ``Maintenance._reconcile``: a round with every peer in doubt, at once."""
        while True:
            pending = self.doubts.pending()
            if not pending:
                await self.doubts.wait_changed()
                continue
            failed = False
            for peer in sorted(pending):
                began = trio.current_time()
                try:
                    received = await self._round(peer)
                except HdsdError:
                    failed = True
                    continue
                self.doubts.verified(peer, began)
                if received:
                    self.doubts.doubt([p for p in self.doubts.peers if p != peer],
                                      f"a round with {peer} received versions")
            if failed:
                with trio.move_on_after(1.0):
                    await self.doubts.wait_changed()

    def _shared(self, peer: str, v: Version) -> bool:
        assert self.replicator is not None
        placed = self.replicator.replicas_for(v.tenant, v.bucket, v.key)
        names = {n for nodes in placed.values() for n in nodes}
        return self.name in names and peer in names

    async def _round(self, peer: str) -> int:
        """The stand-in for an anti-entropy round: both nodes end with the union of the
        versions (and their chunks) placed on both. Returns how many this node received."""
        other = self.net.nodes[peer]
        # One exchange each way over the simulated links (they may be cut, lossy or slow).
        ping = PeerStatusRequest(0, self.net.layout.layout_id)
        await self.net.call(self.name, peer, ping)
        mine = {k: v for k, v in self.store.versions.items() if self._shared(peer, v)}
        theirs = {k: v for k, v in other.store.versions.items() if self._shared(peer, v)}
        await self.net.call(peer, self.name, ping)

        def records(src: MemStore, versions: list[Version]) -> list[ChunkRecord | Version]:
            out: list[ChunkRecord | Version] = []
            for v in versions:
                if v.inline is None:
                    out += [ChunkRecord(v.tenant, c, src.chunks[(v.tenant, c)])
                            for c in v.chunks if (v.tenant, c) in src.chunks]
                out.append(v)
            return out
        give = [v for k, v in mine.items() if k not in theirs]
        take = [v for k, v in theirs.items() if k not in mine]
        if give:
            await other.store.commit(records(self.store, give))
        if take:
            await self.store.commit(records(other.store, take))
        self.rounds += 1
        return len(take)

    def crash(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self.alive = False
        self.store.epoch += 1
        # Its sessions end: each node it replicated writes to doubts every peer, as the node
        # does when such a session ends (Connections._coordinator_gone).
        for other in self.net.nodes.values():
            if self.name in other.replicated_from:
                other.replicated_from.discard(self.name)
                other.doubts.doubt(None, f"the session of {self.name} ended")

    async def handle(self, msg: Message) -> dict[str, Any]:
        if isinstance(msg, Replicate):
            chunks = [ChunkRecord(t, c, p) for t, c, p in msg.chunks]
            versions = [Version.from_wire(v) for v in msg.versions]
            for v in versions:
                self.clock.observe(v.hlc)
            await self.store.commit([*chunks, *versions])
            return {}
        if isinstance(msg, FetchVersions):
            return {"versions": [v.to_wire() for v in self.store.of_key(msg.tenant, msg.bucket,
                                                                         msg.key)]}
        if isinstance(msg, FetchChunk):
            return {"payload": self.store.read_chunk(msg.tenant, msg.chunk_id)}
        if isinstance(msg, PeerStatusRequest):
            return {}
        raise HdsdError(f"unexpected {type(msg).__name__}")


class SimNet:
    """Directed links that can be cut, lossy and slow; nodes that crash and restart."""

    def __init__(self, layout: Layout, workdir: Path, rng: random.Random, *,
                 timeout: float = 2.0) -> None:
        self.layout = layout
        self.rng = rng
        self.timeout = timeout
        self.cut: set[tuple[str, str]] = set()
        self.drop = 0.0
        self.max_delay = 0.002
        self.nodes = {n.name: SimNode(self, n, workdir / n.name) for n in layout.nodes}

    def heal(self) -> None:
        self.cut.clear()
        self.drop = 0.0

    def _lost(self, src: str, dst: str) -> bool:
        return (src, dst) in self.cut or self.rng.random() < self.drop

    async def call(self, src: str, dst: str, msg: Message) -> dict[str, Any]:
        """One request, bounded like the real link (the net's per-request *timeout*)."""
        target = self.nodes[dst]
        timeout = self.timeout
        with trio.move_on_after(timeout):
            if not target.alive:
                await trio.sleep(self.rng.uniform(0, self.max_delay))
                raise ConnectionLost(f"{dst} refused the connection")
            if self._lost(src, dst):
                await trio.sleep_forever()
            await trio.sleep(self.rng.uniform(0, self.max_delay))
            if not target.alive:
                raise ConnectionLost(f"{dst} reset the connection")
            if isinstance(msg, Replicate):
                target.replicated_from.add(src)
            body = await self._served(target, msg)
            if self._lost(dst, src) or not target.alive:
                await trio.sleep_forever()
            await trio.sleep(self.rng.uniform(0, self.max_delay))
            return body
        raise RequestTimeout(f"{dst} did not answer in {timeout:g} s")


    @staticmethod
    async def _served(target: SimNode, msg: Message) -> dict[str, Any]:
        """*msg* handled by *target* in a task of its own, as a real node serves a request:
        a caller that stops waiting for the answer (a timeout, or ``local``'s grace) does not
        stop the handling; the target's crash does (its answer then never comes)."""
        assert target.requests is not None
        outcome: list[dict[str, Any] | HdsdError] = []
        done = trio.Event()

        async def serve() -> None:
            try:
                outcome.append(await target.handle(msg))
            except HdsdError as exc:
                outcome.append(exc)
            finally:
                done.set()

        target.requests.start_soon(serve)
        await done.wait()
        if not outcome:
            raise ConnectionLost(f"{target.name} crashed while serving the request")
        if isinstance(outcome[0], HdsdError):
            raise outcome[0]
        return outcome[0]


class SimLink:
    def __init__(self, net: SimNet, name: str) -> None:
        self.net = net
        self.name = name
        self._rid = 0

    async def call(self, node: str, request: Request[R], *,
                   sent: Callable[[], None] | None = None, shielded: bool = False,
                   slot_wait: float | None = None) -> R:
        if not self.net.nodes[self.name].alive:
            # A crashed node sends nothing (its write path may run on, shielded, in here).
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(f"{self.name} crashed")
        self._rid += 1
        stamped = request.with_rid(self._rid)
        if sent is not None:
            sent()  # on its way: the net delivers it (or loses it) from here
        return stamped.decode_reply(await self.net.call(self.name, node, stamped))

    def reachable(self, node: str) -> bool:
        return self.net.nodes[node].alive and (self.name, node) not in self.net.cut


def make_layout(nodes_per_site: int, replicas_per_site: int) -> Layout:
    nodes = tuple(NodeInfo(f"{site}-n{i}", site, "127.0.0.1", 1)
                  for site in ("a", "b") for i in range(1, nodes_per_site + 1))
    return Layout(sites=("a", "b"), nodes=nodes, replicas_per_site=replicas_per_site)
