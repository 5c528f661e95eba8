"""Anti-entropy between two real stores in one process, the peer link replaced by direct calls
(every request and reply still goes through the wire codec and msgpack)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hdsd._packing import packb, unpackb
from hdsd.cluster import Layout, NodeInfo
from hdsd.repair import AntiEntropy, PeerTrees, RepairReport
from hdsd.store import ChunkRecord, Store, Version
from hdsd.wire import (
    Data,
    FetchChunk,
    FetchChunks,
    GetStart,
    LeafDiff,
    Replicate,
    Request,
    TreeLevel,
)
from hdsd.wire._registry import decode_body, encode_body
from tests.helpers.sealing import SEALING

R = TypeVar("R")

TENANT = "t"


class Link:
    """The PeerLink of node *me*: delivers to the other side's handlers."""

    def __init__(self, me: str, sides: dict[str, tuple[AntiEntropy, Store]]) -> None:
        self.me = me
        self.sides = sides

    def reachable(self, node: str) -> bool:
        return True

    def downloads(self, node: str) -> bool:
        return True

    async def download(self, node: str, request: Request[R], on_start: Callable[[R], None],
                       on_data: Callable[[bytes], None]) -> None:
        """FetchChunks, as the node serves it: the sizes, then one Data frame per record."""
        msg, _ = decode_body(*encode_body(request.with_rid(1)))
        assert isinstance(msg, FetchChunks)
        _, store = self.sides[node]
        records = [store.read_chunk(t, c) for t, c in msg.chunks]
        start, _ = decode_body(*encode_body(GetStart(1, {"sizes": [len(r) for r in records]})))
        on_start(request.decode_reply(start.info))  # type: ignore[attr-defined]
        for record in records:
            data, _ = decode_body(*encode_body(Data(1, record)))
            on_data(data.data)  # type: ignore[attr-defined]
        await trio.lowlevel.checkpoint()

    async def call(self, node: str, request: Request[R]) -> R:
        msg, _ = decode_body(*encode_body(request.with_rid(1)))
        ae, store = self.sides[node]
        match msg:
            case TreeLevel():
                body = await ae.tree_level(self.me, msg.depth, msg.indices)
            case LeafDiff():
                body = await ae.leaf_diff(self.me, msg.leaves)
            case Replicate():
                await store.commit([*(ChunkRecord(*c) for c in msg.chunks),
                                    *(Version.from_wire(v) for v in msg.versions)])
                body = {}
            case FetchChunk():
                body = {"payload": store.read_chunk(msg.tenant, msg.chunk_id)}
            case _:
                raise AssertionError(msg)
        return request.decode_reply(unpackb(packb(body)))


def _layout(per_site: int) -> Layout:
    nodes = tuple(NodeInfo(f"{s}{i}", s, "127.0.0.1", 1) for s in ("a", "b")
                  for i in range(per_site))
    return Layout(sites=("a", "b"), nodes=nodes, replicas_per_site=1)


def _version(key: str, hlc: int, node: str, kind: int) -> tuple[Version, list[ChunkRecord]]:
    if kind == 0:
        return Version(TENANT, "bk", key, hlc, node, 0, b"", tombstone=True), []
    payload = f"{key}/{hlc}/{node}".encode() * kind
    cid = hashlib.blake2b(payload, digest_size=32).digest()
    h = hashlib.sha256(payload).digest()
    if kind == 1:
        return Version(TENANT, "bk", key, hlc, node, len(payload), h, (cid,), inline=payload), []
    return (Version(TENANT, "bk", key, hlc, node, len(payload), h, (cid,)),
            [ChunkRecord(TENANT, cid, payload)])


class Pair:
    def __init__(self, root: Path, layout: Layout, x: str, y: str) -> None:
        self.layout = layout
        self.sides: dict[str, tuple[AntiEntropy, Store]] = {}
        self.stores = {n: Store.open(root / n, segment_bytes=1 << 20, sealing=SEALING)
                       for n in (x, y)}
        self.names = (x, y)
        self.root = root

    def open(self) -> None:
        for n, store in self.stores.items():
            trees = PeerTrees(store, self.layout, n, self.root / f"{n}.trees")
            self.sides[n] = (AntiEntropy(name=n, layout_id=self.layout.layout_id, store=store,
                                         peers=Link(n, self.sides), trees=trees,
                                         observe_hlc=lambda h: None, rate_bytes_s=float("inf")),
                           store)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()

    def names_of(self, node: str) -> set[tuple[str, int, str]]:
        return {(v.key, v.hlc, v.node) for v in self.stores[node].iter_versions()}

    async def repair(self) -> RepairReport:
        x, y = self.names
        return await self.sides[x][0].repair_with(y)


universe = st.lists(st.tuples(st.sampled_from([f"k{i}" for i in range(30)]),
                              st.integers(1, 10**6), st.sampled_from(["a0", "b0"]),
                              st.integers(0, 3), st.sampled_from(["x", "y", "both"])),
                    max_size=40, unique_by=lambda t: t[:3])


@settings(max_examples=15)
@given(universe)
def test_a_round_leaves_both_sides_with_the_union(items: list[Any]) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            pair = Pair(Path(tmp), _layout(1), "a0", "b0")
            try:
                for key, hlc, node, kind, where in items:
                    v, chunks = _version(key, hlc, node, kind)
                    for side, n in (("x", "a0"), ("y", "b0")):
                        if where in (side, "both"):
                            await pair.stores[n].commit([*chunks, v])
                pair.open()
                everything = pair.names_of("a0") | pair.names_of("b0")
                report = await pair.repair()
                assert report.error is None
                assert pair.names_of("a0") == pair.names_of("b0") == everything
                for v in pair.stores["b0"].iter_versions():  # content came along
                    if v.chunks and v.inline is None:
                        assert pair.stores["b0"].read_chunk(TENANT, v.chunks[0])
                again = await pair.repair()
                assert again.leaves_differing == 0 and again.versions_received == 0
                assert again.versions_sent == 0 and again.bytes_received < 100
            finally:
                pair.close()
    trio.run(main)


async def test_with_two_nodes_per_site_a_pair_exchanges_only_the_keys_it_shares(
        tmp_path: Path) -> None:
    layout = _layout(2)
    pair = Pair(tmp_path, layout, "a0", "b0")
    try:
        for i in range(200):  # a0 holds every key (as if misplaced); b0 none
            v, chunks = _version(f"k{i}", 10 + i, "a0", 1)
            await pair.stores["a0"].commit([*chunks, v])
        pair.open()
        trees = pair.sides["a0"][0].trees
        shared = {f"k{i}" for i in range(200)
                  if trees.sharing(TENANT, "bk", f"k{i}") and "b0" in
                  trees.sharing(TENANT, "bk", f"k{i}")}
        assert 0 < len(shared) < 200
        report = await pair.repair()
        assert report.error is None and report.versions_sent == len(shared)
        assert {k for k, _, _ in pair.names_of("b0")} == shared
    finally:
        pair.close()


async def test_replies_are_bounded_and_the_rest_follows(tmp_path: Path, monkeypatch: Any
                                                        ) -> None:
    import hdsd.repair._sync as sync

    monkeypatch.setattr(sync, "_REPLY_BYTES", 2000)  # a few versions per LeafDiff reply
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        for i in range(300):  # b0 holds everything, a0 nothing: like a rebuild
            v, chunks = _version(f"k{i % 40}", 10 + i, "b0", 1 + i % 3)
            await pair.stores["b0"].commit([*chunks, v])
        pair.open()
        calls = 0
        link = pair.sides["a0"][0].peers
        original = link.call

        async def counting(node: str, request: Any) -> Any:
            nonlocal calls
            calls += isinstance(request, LeafDiff)
            return await original(node, request)
        monkeypatch.setattr(link, "call", counting)
        report = await pair.repair()
        assert report.error is None and report.versions_received == 300
        assert pair.names_of("a0") == pair.names_of("b0")
        assert calls > 10  # it took many bounded replies, not one huge one
    finally:
        pair.close()


@pytest.mark.parametrize("downloads", [True, False], ids=["FetchChunks", "FetchChunk"])
async def test_a_rebuild_round_fetches_chunks_several_at_a_time_and_syncs_by_window(
        tmp_path: Path, monkeypatch: Any, downloads: bool) -> None:
    import hdsd.repair._sync as sync

    monkeypatch.setattr(sync, "_WINDOW_BYTES", 64 << 10)  # several windows in this small set
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        for i in range(120):  # b0 holds everything, a0 nothing: a wiped node
            v, chunks = _version(f"k{i}", 10 + i, "b0", 2000 + i)
            await pair.stores["b0"].commit([*chunks, v])
        for i in range(600):  # and small inline ones: more differing leaves than a request
            v, chunks = _version(f"s{i}", 10 + i, "b0", 1)  # carries (the wire's limit)
            await pair.stores["b0"].commit([*chunks, v])
        pair.open()
        link = pair.sides["a0"][0].peers
        assert isinstance(link, Link)
        original, original_download = link.call, link.download
        mine = pair.stores["a0"]
        in_flight = most = fetches = 0
        early: list[str] = []

        async def watch(count: int) -> None:
            nonlocal in_flight, most, fetches
            # The write promise on a repair path: every version a0 shows has its content.
            for v in mine.iter_versions():
                if v.inline is None:
                    early.extend(v.key for c in v.chunks if not mine.has_chunk(v.tenant, c))
            in_flight += 1
            fetches += count
            most = max(most, in_flight)
            await trio.sleep(0.001)  # a round trip: the others may start meanwhile

        async def watching(node: str, request: Any) -> Any:
            nonlocal in_flight
            if not isinstance(request, FetchChunk):
                return await original(node, request)
            await watch(1)
            try:
                return await original(node, request)
            finally:
                in_flight -= 1

        async def watching_download(node: str, request: Any, on_start: Any, on_data: Any
                                    ) -> None:
            nonlocal in_flight
            await watch(len(request.chunks))
            try:
                await original_download(node, request, on_start, on_data)
            finally:
                in_flight -= 1
        monkeypatch.setattr(link, "call", watching)
        monkeypatch.setattr(link, "download", watching_download)
        monkeypatch.setattr(link, "downloads", lambda node: downloads)
        fsyncs = mine.statistics().fsyncs
        report = await pair.sides["a0"][0].repair_with("b0", bulk=True)
        assert report.error is None and report.versions_received == 720
        assert pair.names_of("a0") == pair.names_of("b0")
        for v in mine.iter_versions():
            assert v.inline is not None or all(mine.read_chunk(v.tenant, c) for c in v.chunks)
        assert early == []
        assert fetches == 120 and most > 1  # pipelined, not one round trip after another
        # ~2.4 MiB in 64 KiB windows: tens of batches, far fewer fsyncs than versions + chunks
        assert mine.statistics().fsyncs - fsyncs < 120
    finally:
        pair.close()


async def test_a_rebuild_of_a_dense_peer_asks_for_fewer_leaves_at_a_time(
        tmp_path: Path, monkeypatch: Any) -> None:
    # When a batch of leaves holds more than a reply, the peer answers in several replies and
    # each follow-up lists every digest taken so far (compared again by the peer): the bulk
    # round then asks for fewer leaves per request, so later batches fit one reply.
    import hdsd.repair._sync as sync

    monkeypatch.setattr(sync, "_REPLY_BYTES", 4000)
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        batch: list[Any] = []
        inline = 0
        for i in range(3600):  # b0 holds everything, a0 nothing: a wiped node
            v, chunks = _version(f"k{i // 3}", 10 + i, "b0", 1)
            batch += [*chunks, v]
            inline += len(v.inline or b"")
            if len(batch) >= 200:
                await pair.stores["b0"].commit(batch)
                batch = []
        await pair.stores["b0"].commit(batch)
        pair.open()
        link = pair.sides["a0"][0].peers
        original = link.call
        asked: list[int] = []  # leaves per LeafDiff
        more = 0

        async def counting(node: str, request: Any) -> Any:
            nonlocal more
            body = await original(node, request)
            if isinstance(request, LeafDiff):
                asked.append(len(request.leaves))
                more += bool(body.get("more"))
            return body
        monkeypatch.setattr(link, "call", counting)
        report = await pair.sides["a0"][0].repair_with("b0", bulk=True)
        assert report.error is None and report.versions_received == 3600
        assert report.payload_bytes_received == inline  # small objects move bytes too
        assert pair.names_of("a0") == pair.names_of("b0")
        assert asked[0] == sync.MAX_DIFF_LEAVES and min(asked) < 16
        # ~1,200 leaves, ~180 wire bytes per version: 256 leaves take ~35 replies; with every
        # batch that size the round would take ~170 follow-ups.
        assert more < 60, (more, len(asked))
    finally:
        pair.close()


def _purge(target: Version, hlc: int, node: str) -> Version:
    return Version(target.tenant, target.bucket, target.key, hlc, node, 0, b"",
                   purges=(target.hlc, target.node))


async def test_a_purge_reaches_the_other_replica_and_the_version_never_comes_back(
        tmp_path: Path) -> None:
    """a0 purged a version b0 still holds (b0 was away when the purge was written, its hint
    lost): a round takes the purge record to b0, which drops the version, and a0 does not
    take the version back from b0 in the same exchange. The trees, which still counted the
    version, are corrected by the comparison itself and agree a round later."""
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        victim, chunks = _version("k", 10, "a0", 3)
        kept, kept_chunks = _version("k", 5, "a0", 2)
        other, other_chunks = _version("z", 11, "b0", 1)
        for n in ("a0", "b0"):
            await pair.stores[n].commit([*chunks, victim, *kept_chunks, kept,
                                         *other_chunks, other])
        pair.open()
        for n in ("a0", "b0"):  # the trees count the victim (as they would in service)
            pair.sides[n][0].trees.catch_up()
        await pair.stores["a0"].commit([_purge(victim, 20, "a0")])
        report = await pair.repair()
        assert report.error is None and report.versions_sent == 1
        assert report.versions_received == 0  # the victim offered by b0 was not taken
        for n in ("a0", "b0"):
            assert pair.names_of(n) == {("k", 5, "a0"), ("k", 20, "a0"), ("z", 11, "b0")}
            assert pair.stores[n].is_purged(TENANT, "bk", "k", 10, "a0")
        again = await pair.repair()  # b0's tree still counted the victim: corrected here
        assert again.versions_received == again.versions_sent == 0
        assert (await pair.repair()).leaves_differing == 0
        # The other way round (b0 starts the rounds) nothing moves either.
        back = await pair.sides["b0"][0].repair_with("a0")
        assert back.versions_received == back.versions_sent == 0
        assert ("k", 10, "a0") not in pair.names_of("a0") | pair.names_of("b0")
    finally:
        pair.close()


async def test_a_replica_that_never_held_the_version_gets_only_the_purge(
        tmp_path: Path) -> None:
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        victim, chunks = _version("k", 10, "b0", 3)
        await pair.stores["b0"].commit([*chunks, victim])
        await pair.stores["a0"].commit([_purge(victim, 20, "a0")])  # the hint never came
        pair.open()
        report = await pair.repair()
        assert report.error is None and report.chunks_fetched == 0
        for n in ("a0", "b0"):
            assert pair.names_of(n) == {("k", 20, "a0")}
    finally:
        pair.close()


async def test_a_rebuild_keeps_to_the_operators_rate_limit(tmp_path: Path,
                                                           autojump_clock: Any) -> None:
    # [repair] rebuild_rate_mib_s: a bulk round's traffic is paced by it (a token bucket with
    # one second of burst). The clock is trio's virtual one: time passes only in the pacing
    # sleeps, so the round's duration is what the limit imposed, whatever the machine's load.
    pair = Pair(tmp_path, _layout(1), "a0", "b0")
    try:
        for i in range(40):
            v, chunks = _version(f"k{i}", 10 + i, "b0", 3000 + i)  # ~40 x 50 KiB
            await pair.stores["b0"].commit([*chunks, v])
        pair.open()
        ae, _ = pair.sides["a0"]
        rate = 256 << 10
        ae.bulk_rate_bytes_s = rate
        report = await ae.repair_with("b0", bulk=True)
        assert report.error is None and report.versions_received == 40
        assert pair.names_of("a0") == pair.names_of("b0")
        moved = report.bytes_sent + report.bytes_received
        assert moved > 3 * rate
        assert report.duration_s >= (moved - rate) / rate * 0.99  # the burst, then the rate
        # Unlimited (0, the default), the same round takes no virtual time at all.
        other = Pair(tmp_path / "again", _layout(1), "a0", "b0")
        try:
            for i in range(40):
                v, chunks = _version(f"k{i}", 10 + i, "b0", 3000 + i)
                await other.stores["b0"].commit([*chunks, v])
            other.open()
            fast = await other.sides["a0"][0].repair_with("b0", bulk=True)
            assert fast.versions_received == 40 and fast.duration_s < 1.0
        finally:
            other.close()
    finally:
        pair.close()
