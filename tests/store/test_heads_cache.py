"""The index's cache of keys' heads (``Index.current``, a small get's lookup): a read after a
write never finds the head that write replaced — a newer version, an older one that still
becomes the head (replication, repair), a delete marker, a purge, keys or tenants forgotten —
nor one read before a write indexed while it was read; what it serves is what the index holds;
and it stays within its bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hdsd import PermissionDenied
from hdsd.store import Store, Version
from hdsd.store import _index as index_module
from hdsd.store._sealed import open_version
from tests.helpers.sealing import TestSealing

from ._util import chunked_put, inline_version, tombstone
from .test_purge import purge


def _uncached(store: Store, tenant: str, bucket: str, key: str) -> Version | None:
    """The head as SQL gives it (the cache emptied first)."""
    store._index._forget_heads(None)
    found = store.current(tenant, bucket, key)
    store._index._forget_heads(None)
    return found


def _cached(store: Store, tenant: str, bucket: str, key: str) -> bool:
    store._writer.wait_indexed()  # what was acknowledged is in the index (and its cache)
    return (tenant, bucket, key) in store._index._heads


def test_a_head_replaced_by_any_write_is_never_served_again(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=TestSealing()) as store:
        # A version far ahead elsewhere: the writes of "k" below are not newer than every
        # indexed version, so the writer must drop the cached head, not replace it.
        store.commit_sync([inline_version("t", "b", "other", 1000, "n", b"far")])
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        store.commit_sync([v1])
        assert store.current("t", "b", "k") == v1
        assert _cached(store, "t", "b", "k")

        v2 = inline_version("t", "b", "k", 20, "n2", b"two")  # replicated late, still newer
        store.commit_sync([v2])
        assert store.current("t", "b", "k") == v2

        stale = inline_version("t", "b", "k", 15, "n3", b"older")  # not the head: no change
        store.commit_sync([stale])
        assert store.current("t", "b", "k") == v2

        gone = tombstone("t", "b", "k", 30, "n")
        store.commit_sync([gone])
        assert store.current("t", "b", "k") == gone

        store.commit_sync([purge(gone, 40)])  # the head goes back to v2
        assert store.current("t", "b", "k") == v2
        assert store.current("t", "b", "k") == _uncached(store, "t", "b", "k")

        assert store.current("t", "b", "k") == v2 and _cached(store, "t", "b", "k")
        assert store.forget_keys([("t", "b", "k")]) == (4, 0)  # v1, v2, stale, the purge
        assert store.current("t", "b", "k") is None


def test_a_new_version_is_cached_by_its_write_as_the_index_would_read_it(
        tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=TestSealing()) as store:
        records: list[Any] = chunked_put("t", "b", "big", 5, "n", [b"a" * 100, b"b" * 100])
        big = records[-1]
        meta = {"content-type": "text/plain"}
        with_meta = Version("t", "b", "meta", 6, "n", size=1, content_hash=bytes(32),
                            chunks=(bytes(32),), inline=b"x", metadata=meta)
        store.commit_sync([*records, with_meta, inline_version("t", "b", "small", 7, "n",
                                                                b"s")])
        assert all(_cached(store, "t", "b", k) for k in ("big", "meta", "small"))  # no read yet
        meta["content-type"] = "changed by the caller"  # the cache holds its own copy
        kept = store.current("t", "b", "meta")
        assert kept is not None and kept.metadata == {"content-type": "text/plain"}
        for key in ("big", "meta", "small"):
            assert store.current("t", "b", key) == _uncached(store, "t", "b", key)
        assert store.current("t", "b", "big") == big


def test_a_version_purged_in_its_own_batch_is_not_cached_as_the_head(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=TestSealing()) as store:
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        v2 = inline_version("t", "b", "k", 20, "n", b"two")
        store.commit_sync([v1])
        store.commit_sync([v2, purge(v2, 30)])  # one batch: v2 is new, and purged
        assert store.current("t", "b", "k") == v1


def test_a_head_read_while_a_write_is_indexed_is_not_kept(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    with Store.open(tmp_path, sealing=TestSealing()) as store:
        store.commit_sync([inline_version("t", "b", "other", 1000, "n", b"far")])
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        v2 = inline_version("t", "b", "k", 20, "n", b"two")
        store.commit_sync([v1])
        store._writer.wait_indexed()
        store._index._forget_heads(None)  # the next read of "k" reads its row
        opened = open_version
        armed = [True]

        def open_then_write(body: bytes, seal: Any) -> Version:
            # The row of v1 was read; before the reader keeps it, v2 is written and indexed.
            if armed[0]:
                armed[0] = False
                store.commit_sync([v2])
                store._writer.wait_indexed()
            return opened(body, seal)

        monkeypatch.setattr(index_module, "open_version", open_then_write)
        assert store.current("t", "b", "k") == v1  # what it read: the write came after
        assert not armed[0]
        assert store.current("t", "b", "k") == v2


def test_a_shredded_tenants_cached_heads_are_refused_then_forgotten(tmp_path: Path) -> None:
    sealing = TestSealing()
    with Store.open(tmp_path, sealing=sealing) as store:
        store.commit_sync([inline_version("gone", "b", "k", 10, "n", b"x"),
                           inline_version("kept", "b", "k", 11, "n", b"y")])
        assert _cached(store, "gone", "b", "k")
        sealing.shred("gone")
        with pytest.raises(PermissionDenied):
            store.current("gone", "b", "k")
        store._index.forget_tenants(["gone"])
        assert not _cached(store, "gone", "b", "k")
        assert _cached(store, "kept", "b", "k")


def test_the_cache_stays_within_its_bytes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(index_module, "HEAD_CACHE_BYTES", 64 << 10)
    with Store.open(tmp_path, sealing=TestSealing()) as store:
        store.commit_sync([inline_version("t", "b", f"k{i}", 10 + i, "n", bytes(100))
                           for i in range(200)])
        index = store._index
        store._writer.wait_indexed()
        assert 0 < index._heads_bytes <= 64 << 10
        assert len(index._heads) == len(index._head_keys) < 200
        assert not _cached(store, "t", "b", "k0") and _cached(store, "t", "b", "k199")
        # Over a 64th of the whole: never kept.
        store.commit_sync([inline_version("t", "b", "huge", 5000, "n", bytes(2000))])
        assert not _cached(store, "t", "b", "huge")
        assert store.current("t", "b", "huge") is not None
        assert not _cached(store, "t", "b", "huge")
        for i in range(200):
            assert store.current("t", "b", f"k{i}") == inline_version(
                "t", "b", f"k{i}", 10 + i, "n", bytes(100))
        assert index._heads_bytes <= 64 << 10
