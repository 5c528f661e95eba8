"""Per-peer trees follow the index, survive a restart through their snapshot, and start over
when the index they followed was rebuilt."""

from __future__ import annotations

from pathlib import Path

from hdsd.repair import PeerTrees
from hdsd.repair._tree import DEPTH, LEAF_BITS, leaf_of, leaf_range, version_digest
from hdsd.store import Store
from tests.helpers.sealing import SEALING
from tests.repair.test_sync import _layout, _version


async def _store_with(path: Path, n: int) -> Store:
    store = Store.open(path, segment_bytes=1 << 20, sealing=SEALING)
    for i in range(n):
        v, chunks = _version(f"k{i}", 1 + i, "a0", 1)
        await store.commit([*chunks, v])
    return store


async def test_snapshot_is_reused_and_only_newer_versions_are_added(tmp_path: Path) -> None:
    layout = _layout(1)
    store = await _store_with(tmp_path / "s", 50)
    try:
        trees = PeerTrees(store, layout, "a0", tmp_path / "t.bin")
        assert trees.catch_up() == 50
        trees.save()
        v, _ = _version("late", 999, "a0", 1)
        await store.commit([v])
        again = PeerTrees(store, layout, "a0", tmp_path / "t.bin")
        assert again.watermark == trees.watermark
        assert again.catch_up() == 1  # only what came after the snapshot
        trees.catch_up()
        assert again.hashes("b0", 0, [0]) == trees.hashes("b0", 0, [0])
        assert again.count("b0") == 51
    finally:
        store.close()


async def test_a_rebuilt_index_invalidates_the_snapshot(tmp_path: Path) -> None:
    layout = _layout(1)
    store = await _store_with(tmp_path / "s", 20)
    trees = PeerTrees(store, layout, "a0", tmp_path / "t.bin")
    trees.catch_up()
    trees.save()
    store.close()
    for p in (tmp_path / "s").glob("index.sqlite3*"):
        p.unlink()
    store = Store.open(tmp_path / "s", segment_bytes=1 << 20, sealing=SEALING)  # replays the log
    try:
        fresh = PeerTrees(store, layout, "a0", tmp_path / "t.bin")
        assert fresh.watermark == 0 and fresh.count("b0") == 0
        assert fresh.catch_up() == 20
        assert fresh.hashes("b0", 0, [0]) == trees.hashes("b0", 0, [0])
    finally:
        store.close()


async def test_members_of_many_leaves_read_by_runs_match_leaf_by_leaf(tmp_path: Path) -> None:
    # A rebuild asks for 256 consecutive leaves at once: one range query per run of
    # consecutive leaves must give each leaf exactly its own versions, and still correct a
    # leaf that drifted from the index.
    layout = _layout(1)
    store = await _store_with(tmp_path / "s", 300)
    try:
        trees = PeerTrees(store, layout, "a0", tmp_path / "t.bin")
        trees.catch_up()
        occupied = sorted({leaf_of(store.key_hash(v.tenant, v.bucket, v.key))
                           for _, _, v in store.versions_by_key_hash(0, (1 << 32) - 1)})
        assert len(occupied) > 100
        # Runs (neighbours of occupied leaves, empty ones included), gaps and single leaves.
        asked = sorted({x for leaf in occupied[::3] for x in (leaf - 1, leaf, leaf + 1)
                        if 0 <= x < (1 << LEAF_BITS)} | {0, (1 << LEAF_BITS) - 1})
        expected = {}
        for leaf in asked:
            low, high = leaf_range(leaf)
            expected[leaf] = {version_digest(v.tenant, nid, v.hlc, v.node).to_bytes(16, "big"): v
                              for _, nid, v in store.versions_by_key_hash(low, high)}
        before = trees.hashes("b0", DEPTH, asked)
        drifted = occupied[3]
        trees.trees["b0"].toggle(drifted, 12345)  # the tree no longer matches the index there
        got = trees.leaves_members("b0", asked)
        assert got == expected
        assert sum(len(m) for m in got.values()) > 90
        assert trees.hashes("b0", DEPTH, asked) == before  # the drifted leaf was corrected
    finally:
        store.close()
