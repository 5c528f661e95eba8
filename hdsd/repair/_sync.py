"""Anti-entropy between two replicas: compare Merkle trees, reconcile the leaves that differ.

A round run by node X with peer Y:

1. both trees catch up with their index;
2. X asks Y for the root of Y's tree for the pair, then for the children of every node that
   differs, depth by depth (``TreeLevel``) — identical replicas exchange one 16-byte hash;
3. for differing leaves, X sends the digests of its versions there (``LeafDiff``) and Y answers
   with the versions X lacks and the digests Y lacks: the merge is a union of versions
   (tombstones included), so a deleted key stays deleted and nothing written is lost; purge
   records are versions too, so a purge reaches every replica the same way, and a replica
   that holds one refuses the version it purged (``_take``: never fetched back);
4. X stores what it lacked (fetching chunks it does not hold from Y) and pushes what Y lacked.

Traffic is paced by a byte-rate budget so a repair never starves client writes, and every
byte of request and reply frames is counted for the report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import trio

from .._errors import HdsdError, IntegrityError, Unavailable
from .._groups import single_error
from ..peers import (
    DownloadLink,
    PeerLink,
    fetch_chunk_records,
    local_chunks,
    push_versions,
    to_thread,
)
from ..store import ChunkRecord, CommitTicket, Store, Version
from ..wire import (
    HEADER_SIZE,
    MAX_DIFF_LEAVES,
    UNSENT,
    GetStart,
    LeafDiff,
    LeafDiffReply,
    Reply,
    Request,
    TreeHashes,
    TreeLevel,
    frame_size,
)
from ._tree import DEPTH, children_of, leaf_of
from ._trees import PeerTrees

__all__ = ["AntiEntropy", "RepairReport"]

R = TypeVar("R")

log = logging.getLogger("hdsd.repair")

_TREE_BATCH = 4096
_DIFF_LEAVES = 128
_DIFF_DIGESTS = 32_768
_COMMIT_BYTES = 4 << 20
_REST_RATIO = 1.0  # seconds of rest per second of reconciling
_REPLY_BYTES = 2 << 20  # versions per LeafDiff reply; more follow in the next one
# Bulk transfer (a rebuild): as many leaves per LeafDiff as the wire takes (an empty node
# differs everywhere, and each request is a round trip), chunks fetched several at a time, and
# commits of a window of chunks and versions with one fsync each, the next window fetched
# while it syncs.
_BULK_LEAVES = MAX_DIFF_LEAVES
_BULK_BATCHES = 3
_FETCH_IN_FLIGHT = 4  # per batch: _BULK_BATCHES x this on the link
_WINDOW_BYTES = 8 << 20
# Windows fetched or being encoded at once, per batch of leaves: with the one syncing, the
# memory of a batch stays three windows, and a window is fetched while another is encoded and
# synced (the link no longer waits for them).
_WINDOWS_AHEAD = 2
_WIRE_OVERHEAD = 160  # a version map's names, hashes and numbers, roughly
# A Data frame's bytes besides its payload (header, msgpack array, rid, bin header: at most),
# and an End frame's: a download is counted without encoding its frames again.
_DATA_FRAME = HEADER_SIZE + 11
_END_FRAME = HEADER_SIZE + 6


@dataclass(slots=True)
class RepairReport:
    """What one round with one peer compared and moved."""

    peer: str
    started: float = field(default_factory=time.time)
    duration_s: float = 0.0
    versions_compared: int = 0  # versions this node holds that the peer should hold too
    leaves_differing: int = 0
    versions_received: int = 0
    versions_sent: int = 0
    chunks_fetched: int = 0
    payload_bytes_received: int = 0
    payload_bytes_sent: int = 0
    bytes_sent: int = 0  # every request frame of the round, headers included
    bytes_received: int = 0  # every reply frame of the round
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wire_size(wire: Any) -> int:
    """What a version map counts against a LeafDiff reply's :data:`_REPLY_BYTES` (both sides
    use it: the requester sizes its next batches by it)."""
    if not isinstance(wire, dict):
        return _WIRE_OVERHEAD  # refused by Version.from_wire later
    inline, chunks, meta = wire.get("i"), wire.get("m"), wire.get("d")
    return (_WIRE_OVERHEAD + (len(inline) if isinstance(inline, bytes) else 0)
            + 33 * (len(chunks) if isinstance(chunks, list) else 0)
            + (sum(len(k) + len(x) for k, x in meta.items()
                   if isinstance(k, str) and isinstance(x, str))
               if isinstance(meta, dict) else 0))


class _BulkSize:
    """Leaves per LeafDiff in a bulk round. An empty node differs in every leaf: asking for
    as many leaves as the wire takes (256) saves round trips while the peer's versions in them
    fit one reply (:data:`_REPLY_BYTES`). Past that (a dense store: 1 M small objects put
    ~4,000 versions, ~17 MiB, in 256 leaves), the peer answers in several replies and each
    follow-up request lists every digest taken so far, which the peer compares against all the
    leaves' versions again: quadratic. So the next batches take as many leaves as the last
    ones' replies say fill about half a reply (at least one leaf)."""

    def __init__(self) -> None:
        self.leaves = _BULK_LEAVES

    def observe(self, leaves: int, replied: int) -> None:
        per_leaf = replied / max(1, leaves)
        fit = int(_REPLY_BYTES / 2 / per_leaf) if per_leaf > 0 else _BULK_LEAVES
        self.leaves = max(1, min(_BULK_LEAVES, fit))


class _Pace:
    """Sleeps as needed to keep the bytes moved under a rate (a token bucket, 1 s burst)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = bytes_per_s
        self.allowance = bytes_per_s
        self.at = trio.current_time()

    async def spend(self, n: int) -> None:
        if self.rate <= 0 or math.isinf(self.rate):
            await trio.lowlevel.checkpoint()
            return
        now = trio.current_time()
        self.allowance = min(self.rate, self.allowance + (now - self.at) * self.rate) - n
        self.at = now
        if self.allowance < 0:
            await trio.sleep(-self.allowance / self.rate)
        else:
            await trio.lowlevel.checkpoint()


class _Metered:
    """The peer link of one round: counts every request and reply frame (headers included)
    and paces the round by those bytes."""

    def __init__(self, peers: PeerLink, report: RepairReport, pace: _Pace) -> None:
        self.peers = peers
        self.report = report
        self.pace = pace

    def reachable(self, node: str) -> bool:
        return self.peers.reachable(node)

    def downloads(self, node: str) -> bool:
        return isinstance(self.peers, DownloadLink) and self.peers.downloads(node)

    async def download(self, node: str, request: Request[R], on_start: Callable[[R], None],
                       on_data: Callable[[bytes], None]) -> None:
        assert isinstance(self.peers, DownloadLink)
        received = 0

        def count(data: bytes) -> None:
            nonlocal received
            received += _DATA_FRAME + len(data)
            on_data(data)

        def start(info: R) -> None:
            nonlocal received
            received += frame_size(GetStart(UNSENT, dict(info)))  # type: ignore[call-overload]
            on_start(info)

        try:
            await self.peers.download(node, request, start, count)
        finally:
            sent = frame_size(request)
            self.report.bytes_sent += sent
            self.report.bytes_received += received + _END_FRAME
        await self.pace.spend(sent + received)

    async def call(self, node: str, request: Request[R]) -> R:
        body = await self.peers.call(node, request)
        sent = frame_size(request)
        received = frame_size(Reply(UNSENT, dict(body)))  # type: ignore[call-overload]
        self.report.bytes_sent += sent
        self.report.bytes_received += received
        await self.pace.spend(sent + received)
        return body


class AntiEntropy:
    """Both sides of Merkle anti-entropy for one node."""

    def __init__(self, *, name: str, layout_id: str, store: Store, peers: PeerLink,
                 trees: PeerTrees, observe_hlc: Callable[[int], None], rate_bytes_s: float,
                 bulk_rate_bytes_s: float = 0.0) -> None:
        self.name = name
        self.layout_id = layout_id
        self.store = store
        self.peers = peers
        self.trees = trees
        self.observe_hlc = observe_hlc
        self.rate_bytes_s = rate_bytes_s
        # A rebuild's budget (0: none — the disk and the link set the pace).
        self.bulk_rate_bytes_s = bulk_rate_bytes_s
        # Told (peer, versions) when a round received versions, before any is stored: the
        # maintenance service tells there whether an empty node is new or was wiped.
        self.on_receive: Callable[[str, list[Version]], None] | None = None

    # -- serving a peer's round --------------------------------------------------------------
    def _check_comparable(self, peer: str) -> None:
        if self.trees.building:
            raise Unavailable(f"{self.name} is rebuilding its trees for a new layout version; "
                              "retry")
        if peer not in self.trees.trees:
            raise IntegrityError(f"{peer} is not a peer of {self.name}")

    async def tree_level(self, peer: str, depth: int, indices: list[int]) -> dict[str, Any]:
        self._check_comparable(peer)
        if peer not in self.trees.trees:
            raise IntegrityError(f"{peer} is not a peer of {self.name}")
        if depth == 0:
            await to_thread(self.trees.catch_up)
        return {"hashes": self.trees.hashes(peer, depth, indices),
                "count": self.trees.count(peer)}

    async def leaf_diff(self, peer: str, leaves: list[Any]) -> dict[str, Any]:
        self._check_comparable(peer)
        if peer not in self.trees.trees:
            raise IntegrityError(f"{peer} is not a peer of {self.name}")

        def compute() -> dict[str, Any]:
            versions: list[Any] = []
            wanted: list[bytes] = []
            size = 0
            more = False
            members = self.trees.leaves_members(peer, [leaf for leaf, _ in leaves])
            for leaf, digests in leaves:
                mine = members[leaf]
                theirs = set(digests)
                wanted.extend(d for d in digests if d not in mine)
                for d, v in mine.items():
                    if d in theirs:
                        continue
                    if size >= _REPLY_BYTES:  # the rest in the next reply: frames are bounded
                        more = True
                        continue
                    wire = v.to_wire()
                    versions.append(wire)
                    size += _wire_size(wire)
            return {"versions": versions, "wanted": wanted, "more": more}
        return await to_thread(compute)  # type: ignore[no-any-return]

    # -- running a round ---------------------------------------------------------------------
    async def repair_with(self, peer: str,
                          progress: Callable[[RepairReport, int, int], None] | None = None,
                          *, bulk: bool = False) -> RepairReport:
        """One round with *peer*; never raises for the peer's failures (the report says).

        *bulk* (a rebuild: this node lacks most of what the peer holds) moves data at the
        rebuild's rate instead of the repair's, many leaves per request, without resting
        between batches: the round is the node's recovery, not background upkeep."""
        report = RepairReport(peer=peer)
        t0 = trio.current_time()
        rate = self.bulk_rate_bytes_s if bulk else self.rate_bytes_s
        link = _Metered(self.peers, report, _Pace(rate if rate > 0 else math.inf))
        try:
            await to_thread(self.trees.catch_up)
            report.versions_compared = self.trees.count(peer)
            leaves = await self._descend(peer, link)
            report.leaves_differing = len(leaves)
            if progress is not None:
                progress(report, 0, len(leaves))
            if bulk:
                await self._reconcile_bulk(peer, leaves, link, progress)
            else:
                done = 0
                for batch in self._leaf_batches(peer, leaves, _DIFF_LEAVES):
                    began = trio.current_time()
                    await self._reconcile(peer, batch, link)
                    # Both nodes spend CPU on a batch (this is Python on shared cores): rest
                    # as long as the batch took, so client requests keep at least half the
                    # time. A rebuild does not: its rate limit is the operator's knob.
                    await trio.sleep((trio.current_time() - began) * _REST_RATIO)
                    done += len(batch)
                    if progress is not None:
                        progress(report, done, len(leaves))
        except HdsdError as exc:
            report.error = f"{exc.code}: {exc.message}"
            # An unreachable peer is reported by the peer pool (once, then a warning if it
            # lasts); a round retried every few seconds meanwhile would repeat it each time.
            quiet = isinstance(exc, Unavailable) and not self.peers.reachable(peer)
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "event=repair_failed peer=%s error=%s", peer, report.error)
        else:
            quiet = False
        report.duration_s = round(trio.current_time() - t0, 3)
        log.log(logging.DEBUG if quiet else logging.INFO,
                "event=repair_round peer=%s compared=%d leaves_differing=%d received=%d "
                "sent=%d bytes_out=%d bytes_in=%d seconds=%.3f", peer,
                report.versions_compared, report.leaves_differing, report.versions_received,
                report.versions_sent, report.bytes_sent, report.bytes_received,
                report.duration_s)
        return report


    async def _descend(self, peer: str, link: _Metered) -> list[int]:
        """The leaves whose hashes differ, found from the root down."""
        differing = [0]
        for depth in range(DEPTH + 1):
            indices = [0] if depth == 0 else children_of(differing)
            found: list[int] = []
            for start in range(0, len(indices), _TREE_BATCH):
                part = indices[start:start + _TREE_BATCH]
                body: TreeHashes = await link.call(
                    peer, TreeLevel(UNSENT, self.layout_id, depth, part))
                theirs = body["hashes"]
                mine = self.trees.hashes(peer, depth, part)
                if len(theirs) != len(part):
                    raise IntegrityError(f"{peer} answered {len(theirs)} hashes for {len(part)}")
                found.extend(i for i, a, b in zip(part, mine, theirs, strict=True) if a != b)
            differing = found
            if not differing:
                return []
        return differing

    async def _reconcile_bulk(self, peer: str, leaves: list[int], link: _Metered,
                              progress: Callable[[RepairReport, int, int], None] | None
                              ) -> None:
        """Reconcile batches of leaves :data:`_BULK_BATCHES` at a time: the batches' leaves
        are disjoint, so they are independent, and one batch's round trips, index lookups
        and fsync overlap the others' (their commits share the log writer's fsyncs)."""
        size = _BulkSize()
        taken = done = 0
        sized = trio.Event()  # the first batch's replies told how dense the peer's leaves are

        async def worker(first: bool) -> None:
            nonlocal taken, done
            if not first:
                await sized.wait()
            try:
                while taken < len(leaves):
                    batch = leaves[taken:taken + size.leaves]
                    taken += len(batch)
                    replied = await self._reconcile(peer, batch, link)
                    size.observe(len(batch), replied)
                    sized.set()
                    done += len(batch)
                    if progress is not None:
                        progress(link.report, done, len(leaves))
            finally:
                sized.set()  # nothing left (or a failure): never leave the others waiting

        with single_error():
            async with trio.open_nursery() as nursery:
                for i in range(_BULK_BATCHES):
                    nursery.start_soon(worker, i == 0)

    def _leaf_batches(self, peer: str, leaves: list[int], size: int) -> list[list[int]]:
        return [leaves[i:i + size] for i in range(0, len(leaves), size)]

    async def _reconcile(self, peer: str, leaves: list[int], link: _Metered) -> int:
        """Reconcile *leaves* with *peer*; returns the size estimate (as the peer counts it
        against :data:`_REPLY_BYTES`) of the versions it sent."""
        replied = 0
        mine: dict[int, dict[bytes, Version]] = await to_thread(self._members, peer, leaves)
        # Split so no request carries more digests than fit a frame.
        groups: list[list[Any]] = [[]]
        count = 0
        for leaf in leaves:
            digests = list(mine[leaf])
            if count + len(digests) > _DIFF_DIGESTS and groups[-1]:
                groups.append([])
                count = 0
            groups[-1].append([leaf, digests])
            count += len(digests)
        for group in groups:
            pushed: set[bytes] = set()
            while True:
                body: LeafDiffReply = await link.call(
                    peer, LeafDiff(UNSENT, self.layout_id, group))
                replied += sum(_wire_size(v) for v in body["versions"])
                await self._take(peer, leaves, body["versions"], link)
                by_digest = {d: v for leaf, _ in group for d, v in mine[leaf].items()}
                outgoing = []
                for digest in body["wanted"]:
                    version = by_digest.get(digest)
                    if version is None:
                        raise IntegrityError(f"{peer} wants a version this node did not offer")
                    if digest not in pushed:
                        pushed.add(digest)
                        outgoing.append(version)
                await self._push(peer, outgoing, link)
                if not body.get("more"):
                    break
                # The peer had more than one reply holds: ask again, now listing what we took.
                names = [leaf for leaf, _ in group]
                fresh = await to_thread(self._members, peer, names)
                mine.update(fresh)
                group = [[leaf, list(fresh[leaf])] for leaf in names]
        return replied

    async def _push(self, peer: str, versions: list[Version], link: _Metered) -> None:
        """Send *versions* the peer lacks, many per request, reading chunks in bounded runs."""
        items: list[tuple[Version, list[ChunkRecord]]] = []
        size = 0
        for i, version in enumerate(versions):
            chunks = await local_chunks(self.store, to_thread, version)
            items.append((version, chunks))
            size += sum(len(c.payload) for c in chunks) + len(version.inline or b"")
            if size >= _COMMIT_BYTES or i == len(versions) - 1:
                sent = await push_versions(link, peer, self.layout_id, items, hint=False)
                link.report.versions_sent += len(items)
                link.report.payload_bytes_sent += sent
                items, size = [], 0

    def _members(self, peer: str, leaves: list[int]) -> dict[int, dict[bytes, Version]]:
        return self.trees.leaves_members(peer, leaves)

    def _not_purged(self, versions: list[Version]) -> list[Version]:
        return [v for v in versions if v.purges is not None
                or not self.store.is_purged(v.tenant, v.bucket, v.key, v.hlc, v.node)]

    def _absent(self, versions: list[Version]) -> list[list[bytes]]:
        """For each version, the chunks neither held here nor named by an earlier one."""
        seen: set[tuple[str, bytes]] = set()
        out = []
        for v in versions:
            ids = []
            if v.inline is None:
                for c in dict.fromkeys(v.chunks):
                    if (v.tenant, c) not in seen and not self.store.has_chunk(v.tenant, c):
                        ids.append(c)
                    seen.add((v.tenant, c))
            out.append(ids)
        return out

    async def _take(self, peer: str, leaves: list[int], raw: list[Any], link: _Metered) -> None:
        """Store versions received from *peer*, with the chunks it must send as well.

        Chunks are fetched several at a time and committed by windows of about
        :data:`_WINDOW_BYTES` — the window's chunks and the versions they complete in one
        batch, one fsync — while the next windows are fetched (up to
        :data:`_WINDOWS_AHEAD` windows in memory). A version is only ever written
        in the batch holding its last missing chunk or after it: the batch is indexed after
        its fsync, so no version is visible before its content is durable (a chunk an earlier
        window brought is waited for before the next window is queued)."""
        report = link.report
        allowed = set(leaves)
        versions: list[Version] = []
        for item in raw:
            v = Version.from_wire(item)
            if (leaf_of(self.store.key_hash(v.tenant, v.bucket, v.key)) not in allowed
                    or not self.trees.shares(peer, v)):
                raise IntegrityError(f"{peer} sent a version outside the leaves compared")
            self.observe_hlc(v.hlc)
            versions.append(v)
        if not versions:
            return
        if self.on_receive is not None:
            self.on_receive(peer, versions)
        # A version purged here is not taken back from a peer that has not learnt of its
        # purge yet (the purge record goes to that peer in this same exchange): neither the
        # version nor its chunks are fetched. The store would refuse it anyway.
        versions = await to_thread(self._not_purged, versions)
        absent = await to_thread(self._absent, versions)
        windows = self._windows(versions, absent)
        fetched: list[list[ChunkRecord] | None] = [None] * len(windows)
        arrived = [trio.Event() for _ in windows]
        # Windows fetched ahead of the one being committed: the link stays busy while a
        # window is encoded and synced, instead of draining at each window's end.
        ahead = trio.Semaphore(_WINDOWS_AHEAD)

        async def fetch(k: int) -> None:
            start, end = windows[k]
            wanted = [(versions[i].tenant, c) for i in range(start, end) for c in absent[i]]
            records = await fetch_chunk_records(link, peer, self.layout_id, wanted,
                                                in_flight=_FETCH_IN_FLIGHT)
            report.chunks_fetched += len(records)
            report.payload_bytes_received += sum(len(c.payload) for c in records)
            fetched[k] = records
            arrived[k].set()

        async def fetch_all(nursery: trio.Nursery) -> None:
            for k in range(len(windows)):
                await ahead.acquire()
                nursery.start_soon(fetch, k)

        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch_all, nursery)
                await self._commit_windows(versions, windows, fetched, arrived, ahead, report)

    @staticmethod
    def _windows(versions: list[Version], absent: list[list[bytes]]) -> list[tuple[int, int]]:
        """``(start, end)`` ranges of *versions* whose missing chunks (and inline payloads)
        come to about :data:`_WINDOW_BYTES` each."""
        out = []
        start = 0
        while start < len(versions):
            end, estimate = start, 0
            while end < len(versions) and (end == start or estimate < _WINDOW_BYTES):
                v = versions[end]
                estimate += (v.size * len(absent[end]) // max(1, len(v.chunks))
                             + len(v.inline or b"") + _WIRE_OVERHEAD)
                end += 1
            out.append((start, end))
            start = end
        return out

    async def _commit_windows(self, versions: list[Version], windows: list[tuple[int, int]],
                              fetched: list[list[ChunkRecord] | None],
                              arrived: list[trio.Event], ahead: trio.Semaphore,
                              report: RepairReport) -> None:
        """Commit each window once its chunks arrived, in order, one queued at a time."""
        pending: CommitTicket | None = None
        # Counted as received once their window is durable (inline payloads as payload bytes:
        # a rebuild of small objects moves nothing else, and its rate would read 0 MiB/s).
        pending_versions = pending_inline = 0
        try:
            for k, (start, end) in enumerate(windows):
                await arrived[k].wait()
                chunks, fetched[k] = fetched[k], None
                assert chunks is not None
                records: list[ChunkRecord | Version] = [*chunks, *versions[start:end]]
                del chunks
                # Index lookups, sealing and checksums of a window (megabytes, or hundreds of
                # versions) in a worker thread: the event loop has the link's TLS to do.
                encoded = await to_thread(self.store.encode_commit, records)
                del records
                if pending is not None:
                    await pending.wait()  # the previous window is durable: one queued at a time
                    report.versions_received += pending_versions
                    report.payload_bytes_received += pending_inline
                pending = self.store.start_encoded(encoded)
                ahead.release()  # its bytes are the log writer's now
                pending_versions = end - start
                pending_inline = sum(len(v.inline or b"") for v in versions[start:end])
            ticket, pending = pending, None
            if ticket is not None:
                await ticket.wait()
                report.versions_received += pending_versions
                report.payload_bytes_received += pending_inline
        finally:
            if pending is not None:
                pending.abandon()
