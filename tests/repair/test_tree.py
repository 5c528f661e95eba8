"""The Merkle tree: XOR levels stay consistent under any order of adds and removes, survive a
snapshot, and a comparison finds exactly the leaves that differ."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from hdsd.repair import MerkleTree
from hdsd.repair._tree import DEPTH, FANOUT, LEAVES, children_of, leaf_of, leaf_range


def _version(leaf: int, n: int) -> tuple[int, int]:
    """A (leaf, digest) pair as the trees see them: the digest is 128 pseudo-random bits
    naming one version of one key, so it lives in exactly one leaf. (Small or repeated
    digests, which hypothesis would shrink towards, XOR-cancel across leaves; real ones never
    do.)"""
    seed = leaf.to_bytes(4, "big") + n.to_bytes(4, "big")
    return leaf, int.from_bytes(hashlib.blake2b(seed, digest_size=16).digest(), "big")


members = st.lists(st.builds(_version, st.integers(0, LEAVES - 1), st.integers(0, 7)),
                   max_size=40, unique=True)


def _tree(items: list[tuple[int, int]]) -> MerkleTree:
    t = MerkleTree()
    for leaf, digest in items:
        t.toggle(leaf, digest)
    return t


@given(members, st.randoms())
def test_order_does_not_matter_and_levels_agree(items: list[tuple[int, int]], rnd) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    a, b = _tree(items), _tree(shuffled)
    assert a.levels == b.levels and a.count == b.count == len(items)
    for depth in range(DEPTH):  # each node is the XOR of its children
        for i, value in enumerate(a.levels[depth]):
            if value or depth < 2:
                acc = 0
                for child in list(a.levels[depth + 1])[i * FANOUT:(i + 1) * FANOUT]:
                    acc ^= child
                assert acc == value


@given(members, members)
def test_removing_what_was_added_gives_the_empty_tree(base: list[tuple[int, int]],
                                                      extra: list[tuple[int, int]]) -> None:
    extra = [e for e in extra if e not in base]
    t = _tree(base + extra)
    for leaf, digest in extra:
        t.toggle(leaf, digest, added=False)
    assert t.levels == _tree(base).levels and t.count == len(base)


@given(members)
def test_snapshot_round_trip(items: list[tuple[int, int]]) -> None:
    t = _tree(items)
    back = MerkleTree.from_leaves(t.leaves_bytes(), t.count)
    assert back.levels == t.levels and back.count == t.count


@settings(max_examples=10)  # each example converts all 65,536 leaves one by one
@given(members)
def test_a_snapshot_holds_each_leaf_as_16_big_endian_bytes(items: list[tuple[int, int]]) -> None:
    # The snapshot's format (merkle-trees.bin, read back by every node version since): leaf i
    # at bytes 16i..16i+15, its 128-bit hash big-endian — however the leaves are held.
    t = _tree(items)
    raw = t.leaves_bytes()
    assert len(raw) == LEAVES * 16
    for leaf, _ in [*items, (0, 0), (LEAVES - 1, 0)]:
        assert raw[16 * leaf:16 * leaf + 16] == t.leaf(leaf).to_bytes(16, "big")
    assert raw == b"".join(t.leaf(i).to_bytes(16, "big") for i in range(LEAVES))


@given(members, members)
def test_descent_finds_exactly_the_differing_leaves(a_items: list[tuple[int, int]],
                                                    b_items: list[tuple[int, int]]) -> None:
    a, b = _tree(a_items), _tree(b_items)
    differing = [0] if a.root() != b.root() else []
    for depth in range(1, DEPTH + 1):
        indices = children_of(differing)
        differing = [i for i, x, y in zip(indices, a.hashes(depth, indices),
                                          b.hashes(depth, indices), strict=True) if x != y]
    expected = sorted(i for i in range(LEAVES) if a.leaf(i) != b.leaf(i))
    assert differing == expected


def test_correct_leaf_fixes_every_ancestor() -> None:
    t = _tree([(7, 1), (7, 2), (40_000, 5)])
    t.correct_leaf(7, 1)  # as if the version with digest 2 had been removed
    assert t.levels == _tree([(7, 1), (40_000, 5)]).levels


def test_a_key_hash_falls_in_its_leaf_range() -> None:
    for h in (0, 1, 0xFFFF, 0x10000, 0x12345678, 0xFFFFFFFF):
        low, high = leaf_range(leaf_of(h))
        assert low <= h <= high


def test_a_filling_tree_keeps_no_new_memory() -> None:
    """The tree is its full size from the start: filling its leaves keeps no new objects (a
    list of Python ints kept one per leaf moved off 0 — ~2.5 MB grown over a soak's first
    17 minutes, what made its RSS climb after minute 5)."""
    rng = random.Random(1)
    digests = [(rng.randrange(LEAVES), rng.getrandbits(128)) for _ in range(20_000)]
    t = MerkleTree()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for leaf, digest in digests:
            t.toggle(leaf, digest)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert t.count == 20_000 and t.root() != 0
    assert grown < 16 << 10, grown  # a list of ints: ~20,000 objects of 44 bytes and more
