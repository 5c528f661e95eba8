"""The Merkle tree anti-entropy compares: pure data, no I/O.

A version is summarised by a 128-bit digest of its identity ``(tenant, name id, hlc, node)``
— a version is immutable, so its identity names its content. The name id is the keyed hash of
``(bucket, key)`` under the tenant's key (names are sealed at rest; both sites hold the same
tenant keys, so both compute the same ids and their trees stay comparable, and nothing in a
tree or its snapshot can be tested against a guessed name). A key falls into one of ``LEAVES``
leaves by the top bits of its name id (:func:`~hdsd.store.khash_of`), so every version of a key
shares a leaf. A node's hash is the XOR of the digests below it: adding (or removing) a version
updates one node per level in O(depth), in any order, with no rebuild — the property that lets
the tree follow the write stream incrementally. XOR is a fine set hash here because the members
are unique (a version is indexed once) and come from authenticated peers, not an adversary
choosing collisions.

Levels: 0 is the root, level ``d`` has ``FANOUT**d`` nodes, the children of node ``i`` are
``i*FANOUT .. i*FANOUT+FANOUT-1``, and level ``DEPTH`` holds the leaves.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator

import blake3

from .._packing import packb

__all__ = ["DEPTH", "FANOUT", "LEAVES", "MerkleTree", "leaf_of", "leaf_range", "version_digest"]

FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
DEPTH = 4
LEAF_BITS = FANOUT_BITS * DEPTH  # 65,536 leaves: ~15 versions each at 1 M versions
LEAVES = 1 << LEAF_BITS
DIGEST_BYTES = 16
_KEY_HASH_BITS = 32


def version_digest(tenant: str, name_id: bytes, hlc: int, node: str) -> int:
    """The 128-bit digest of a version's identity, as an int (XOR-able)."""
    raw = blake3.blake3(packb((tenant, name_id, hlc, node))).digest(DIGEST_BYTES)
    return int.from_bytes(raw, "big")


def leaf_of(key_hash: int) -> int:
    return key_hash >> (_KEY_HASH_BITS - LEAF_BITS)


def leaf_range(leaf: int) -> tuple[int, int]:
    """The key hashes ``[low, high]`` that fall into *leaf*."""
    shift = _KEY_HASH_BITS - LEAF_BITS
    return leaf << shift, ((leaf + 1) << shift) - 1


def digest_bytes(value: int) -> bytes:
    return value.to_bytes(DIGEST_BYTES, "big")


_LOW = (1 << 64) - 1


class _Level:
    """One level's 128-bit hashes as two arrays of machine words (high and low halves).

    Not a list of Python ints: there every hash that moves off 0 becomes an object of its own,
    so a node's trees grew by ~2.5 MB of small objects over the first hundreds of thousands of
    writes (a soak's first 17 minutes). Two flat arrays are their full size (16 bytes a node,
    ~1.1 MB a tree) from the start and never allocate again."""

    __slots__ = ("high", "low")

    def __init__(self, size: int) -> None:
        self.high = array("Q", bytes(8 * size))
        self.low = array("Q", bytes(8 * size))

    def __len__(self) -> int:
        return len(self.low)

    def __getitem__(self, i: int) -> int:
        return (self.high[i] << 64) | self.low[i]

    def __iter__(self) -> Iterator[int]:
        return (h << 64 | lo for h, lo in zip(self.high, self.low, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Level) and self.high == other.high and self.low == other.low

    __hash__ = None  # type: ignore[assignment]  # mutable

    def xor(self, i: int, value: int) -> None:
        self.high[i] ^= value >> 64
        self.low[i] ^= value & _LOW


class MerkleTree:
    """Every level of XOR hashes, in flat arrays (about 1.1 MB, allocated whole at once)."""

    __slots__ = ("count", "levels")

    def __init__(self) -> None:
        self.levels: list[_Level] = [_Level(FANOUT ** d) for d in range(DEPTH + 1)]
        self.count = 0  # versions added minus removed

    def toggle(self, leaf: int, digest: int, *, added: bool = True) -> None:
        """Add (or, with ``added=False``, remove) a version digest under *leaf*."""
        high, low = digest >> 64, digest & _LOW
        for depth in range(DEPTH, -1, -1):
            level = self.levels[depth]
            i = leaf >> (FANOUT_BITS * (DEPTH - depth))
            level.high[i] ^= high
            level.low[i] ^= low
        self.count += 1 if added else -1

    def root(self) -> int:
        return self.levels[0][0]

    def hashes(self, depth: int, indices: Iterable[int]) -> list[bytes]:
        level = self.levels[depth]
        return [digest_bytes(level[i]) for i in indices]

    def leaf(self, leaf: int) -> int:
        return self.levels[DEPTH][leaf]

    def correct_leaf(self, leaf: int, actual: int) -> None:
        """Make *leaf* hash to *actual* (its recomputed value), fixing every ancestor."""
        delta = self.levels[DEPTH][leaf] ^ actual
        if delta:
            for depth in range(DEPTH, -1, -1):
                self.levels[depth].xor(leaf >> (FANOUT_BITS * (DEPTH - depth)), delta)

    # -- persistence: only the leaves are stored; the levels above are recomputed ------------
    def leaves_bytes(self) -> bytes:
        """Every leaf's 16-byte big-endian hash, in leaf order: each leaf's high word then its
        low word, interleaved and byte-swapped by the array module. Per leaf in Python (an int
        built and converted 65,536 times) it was ~160 M instructions per snapshot, the bulk of
        the repair service's periodic work (callgrind)."""
        level = self.levels[DEPTH]
        words = array("Q", bytes(DIGEST_BYTES * len(level)))
        words[0::2] = level.high
        words[1::2] = level.low
        if sys.byteorder == "little":
            words.byteswap()
        return words.tobytes()

    @classmethod
    def from_leaves(cls, data: bytes, count: int) -> MerkleTree:
        if len(data) != LEAVES * DIGEST_BYTES:
            raise ValueError("wrong size for a Merkle tree's leaves")
        tree = cls()
        words = array("Q", data)
        if sys.byteorder == "little":
            words.byteswap()
        leaves = tree.levels[DEPTH]
        leaves.high = words[0::2]
        leaves.low = words[1::2]
        for depth in range(DEPTH - 1, -1, -1):
            below = tree.levels[depth + 1]
            level = tree.levels[depth]
            for i in range(len(level)):
                acc = 0
                for child in range(i * FANOUT, (i + 1) * FANOUT):
                    acc ^= below[child]
                level.xor(i, acc)
        tree.count = count
        return tree


def children_of(parents: Iterable[int]) -> list[int]:
    return [p * FANOUT + c for p in parents for c in range(FANOUT)]
