"""Anti-entropy between two replicas: compare Merkle trees, reconcile the leaves that differ.

A round run by node X with peer Y:

1. both trees catch up with their index;
2. X asks Y for the root of Y's tree for the pair, then for the children of every node that
   differs, depth by depth (``TreeLevel``) — identical replicas exchange one 16-byte hash;
3. for differing leaves, X sends the digests of its versions there (``LeafDiff``) and Y answers
   with the versions X lacks and the digests Y lacks: the merge is a union of versions
   (tombstones included), so a deleted key stays deleted and nothing written is lost;
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
from typing import Any

import trio

from .._errors import HdsdError, IntegrityError, Unavailable
from ..peers import PeerLink, fetch_chunks, local_chunks, push_versions, to_thread
from ..store import ChunkRecord, Store, Version
from ..wire import LeafDiff, Message, Reply, TreeLevel, frame_size
from ._tree import DEPTH, children_of, leaf_of
from ._trees import PeerTrees

__all__ = ["AntiEntropy", "RepairReport"]

log = logging.getLogger("hdsd.repair")

_TREE_BATCH = 4096
_DIFF_LEAVES = 128
_DIFF_DIGESTS = 32_768
_COMMIT_BYTES = 4 << 20
_REST_RATIO = 1.0  # seconds of rest per second of reconciling
_REPLY_BYTES = 2 << 20  # versions per LeafDiff reply; more follow in the next one
_WIRE_OVERHEAD = 160  # a version map's names, hashes and numbers, roughly


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

    async def call(self, node: str, make: Callable[[int], Message], *,
                   timeout: float) -> dict[str, Any]:
        body = await self.peers.call(node, make, timeout=timeout)
        sent = frame_size(make(0))
        received = frame_size(Reply(0, body))
        self.report.bytes_sent += sent
        self.report.bytes_received += received
        await self.pace.spend(sent + received)
        return body


class AntiEntropy:
    """Both sides of Merkle anti-entropy for one node."""

    def __init__(self, *, name: str, layout_id: str, store: Store, peers: PeerLink,
                 trees: PeerTrees, observe_hlc: Callable[[int], None], rate_bytes_s: float,
                 timeout: float) -> None:
        self.name = name
        self.layout_id = layout_id
        self.store = store
        self.peers = peers
        self.trees = trees
        self.observe_hlc = observe_hlc
        self.rate_bytes_s = rate_bytes_s
        self.timeout = timeout

    # -- serving a peer's round --------------------------------------------------------------
    async def tree_level(self, peer: str, depth: int, indices: list[int]) -> dict[str, Any]:
        if peer not in self.trees.trees:
            raise IntegrityError(f"{peer} is not a peer of {self.name}")
        if depth == 0:
            await to_thread(self.trees.catch_up)
        return {"hashes": self.trees.hashes(peer, depth, indices),
                "count": self.trees.count(peer)}

    async def leaf_diff(self, peer: str, leaves: list[Any]) -> dict[str, Any]:
        if peer not in self.trees.trees:
            raise IntegrityError(f"{peer} is not a peer of {self.name}")

        def compute() -> dict[str, Any]:
            versions: list[Any] = []
            wanted: list[bytes] = []
            size = 0
            more = False
            for leaf, digests in leaves:
                mine = self.trees.leaf_members(peer, leaf)
                theirs = set(digests)
                wanted.extend(d for d in digests if d not in mine)
                for d, v in mine.items():
                    if d in theirs:
                        continue
                    if size >= _REPLY_BYTES:  # the rest in the next reply: frames are bounded
                        more = True
                        continue
                    versions.append(v.to_wire())
                    size += _WIRE_OVERHEAD + len(v.inline or b"") + 33 * len(v.chunks) + sum(
                        len(k) + len(x) for k, x in v.metadata.items())
            return {"versions": versions, "wanted": wanted, "more": more}
        return await to_thread(compute)  # type: ignore[no-any-return]

    # -- running a round ---------------------------------------------------------------------
    async def repair_with(self, peer: str,
                          progress: Callable[[RepairReport, int, int], None] | None = None
                          ) -> RepairReport:
        """One round with *peer*; never raises for the peer's failures (the report says)."""
        report = RepairReport(peer=peer)
        t0 = trio.current_time()
        link = _Metered(self.peers, report, _Pace(self.rate_bytes_s))
        try:
            await to_thread(self.trees.catch_up)
            report.versions_compared = self.trees.count(peer)
            leaves = await self._descend(peer, link)
            report.leaves_differing = len(leaves)
            if progress is not None:
                progress(report, 0, len(leaves))
            done = 0
            for batch in self._leaf_batches(peer, leaves):
                began = trio.current_time()
                await self._reconcile(peer, batch, link)
                # Both nodes spend CPU on a batch (this is Python on shared cores): rest as
                # long as the batch took, so client requests keep at least half the time.
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
                def level(rid: int, d: int = depth, p: list[int] = part) -> TreeLevel:
                    return TreeLevel(rid, self.layout_id, d, p)
                body = await link.call(peer, level, timeout=self.timeout)
                theirs = body["hashes"]
                mine = self.trees.hashes(peer, depth, part)
                if len(theirs) != len(part):
                    raise IntegrityError(f"{peer} answered {len(theirs)} hashes for {len(part)}")
                found.extend(i for i, a, b in zip(part, mine, theirs, strict=True) if a != b)
            differing = found
            if not differing:
                return []
        return differing

    def _leaf_batches(self, peer: str, leaves: list[int]) -> list[list[int]]:
        return [leaves[i:i + _DIFF_LEAVES] for i in range(0, len(leaves), _DIFF_LEAVES)]

    async def _reconcile(self, peer: str, leaves: list[int], link: _Metered) -> None:
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
                def diff(rid: int, g: list[Any] = group) -> LeafDiff:
                    return LeafDiff(rid, self.layout_id, g)
                body = await link.call(peer, diff, timeout=self.timeout)
                await self._take(peer, leaves, body.get("versions", []), link)
                by_digest = {d: v for leaf, _ in group for d, v in mine[leaf].items()}
                outgoing = []
                for digest in body.get("wanted", []):
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

    async def _push(self, peer: str, versions: list[Version], link: _Metered) -> None:
        """Send *versions* the peer lacks, many per request, reading chunks in bounded runs."""
        items: list[tuple[Version, list[ChunkRecord]]] = []
        size = 0
        for i, version in enumerate(versions):
            chunks = await local_chunks(self.store, to_thread, version)
            items.append((version, chunks))
            size += sum(len(c.payload) for c in chunks) + len(version.inline or b"")
            if size >= _COMMIT_BYTES or i == len(versions) - 1:
                sent = await push_versions(link, peer, self.layout_id, items,
                                           timeout=self.timeout, hint=False)
                link.report.versions_sent += len(items)
                link.report.payload_bytes_sent += sent
                items, size = [], 0

    def _members(self, peer: str, leaves: list[int]) -> dict[int, dict[bytes, Version]]:
        return {leaf: self.trees.leaf_members(peer, leaf) for leaf in leaves}

    def _absent_chunks(self, v: Version) -> list[bytes]:
        return [c for c in dict.fromkeys(v.chunks) if not self.store.has_chunk(v.tenant, c)]

    async def _take(self, peer: str, leaves: list[int], raw: list[Any], link: _Metered) -> None:
        """Store versions received from *peer* (with chunks fetched from it as needed)."""
        report = link.report
        allowed = set(leaves)
        records: list[ChunkRecord | Version] = []
        size = 0
        for item in raw:
            v = Version.from_wire(item)
            if (leaf_of(self.store.key_hash(v.tenant, v.bucket, v.key)) not in allowed
                    or not self.trees.shares(peer, v)):
                raise IntegrityError(f"{peer} sent a version outside the leaves compared")
            self.observe_hlc(v.hlc)
            if v.inline is None and v.chunks:
                absent = await to_thread(self._absent_chunks, v)
                fetched = await fetch_chunks(link, peer, self.layout_id, v.tenant, absent,
                                             timeout=self.timeout)
                for chunk in fetched:
                    report.chunks_fetched += 1
                    report.payload_bytes_received += len(chunk.payload)
                    records.append(chunk)
                    size += len(chunk.payload)
                    if size >= _COMMIT_BYTES:  # a huge version: commit its chunks as they come
                        await self.store.commit(records)
                        records, size = [], 0
            records.append(v)
            report.versions_received += 1
            if size >= _COMMIT_BYTES:
                await self.store.commit(records)
                records, size = [], 0
        if records:
            await self.store.commit(records)
