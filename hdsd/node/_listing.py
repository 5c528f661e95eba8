"""Listing pages bounded by encoded bytes, and the exact merge of the parts of a site.

A node answers its part of a listing (``ListPeer``, ``ListBucketsPeer``) and a coordinator
answers the client (``ListRequest``, ``ListBucketsRequest``) with at most :data:`LIST_BYTES` of
encoded entries, whatever the key and metadata sizes (a 1 KiB key with 8 KiB of metadata is
~9.5 KiB; a count limit alone let 1,000 such entries, or small objects whose inline payload
rode along, overflow the frame limit). A part that stops early — for bytes or for the count —
says ``more``; it is then complete only up to its own last entry. So the merge of a site's
parts is exact up to the smallest last entry of the parts that have more, and the page ends
there (``next`` points at it) even when other parts went further.

Pure functions over :class:`~hdsd.store.Version` (no I/O): the handlers and the read paths
call them, and the tests drive them with hypothesis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._packing import packb
from ..store import Version
from ..wire import MAX_FRAME

__all__ = ["LIST_BYTES", "BucketPart", "Part", "lean", "merge_buckets", "merge_page",
           "take_buckets", "take_versions", "version_cursor"]

#: Encoded bytes of entries in one listing reply (a part or a page): a quarter of the frame
#: limit, so one more entry (≤ ~10 KiB) and the envelope always fit.
LIST_BYTES = 1 << 20
assert 4 * LIST_BYTES <= MAX_FRAME


@dataclass(frozen=True, slots=True)
class Part:
    """One node's part of a listing, in listing order; ``more``: it may hold entries after
    its last one (it stopped for bytes or for the count)."""

    versions: list[Version]
    more: bool


@dataclass(frozen=True, slots=True)
class BucketPart:
    buckets: list[str]
    more: bool


def lean(v: Version) -> Version:
    """The version without what a listing never shows (chunk ids, an inline payload)."""
    if not v.chunks and v.inline is None:
        return v
    return dataclasses.replace(v, chunks=(), inline=None)


def _size(obj: Any) -> int:
    return len(packb(obj))


def version_cursor(v: Version) -> str:
    """The ``next`` of a ``--versions`` listing that ends at *v* (``key NUL version-id``)."""
    return f"{v.key}\x00{v.version_id}"


def take_versions(fetch: Callable[[Version | None, int], Sequence[Version]], limit: int,
                  max_bytes: int = LIST_BYTES, batch: int = 256) -> Part:
    """A node's part: versions from *fetch(after, n)* (the next *n* in listing order after
    the version *after*, None = from the listing's start), lean, until *limit* entries or
    *max_bytes* of ``to_wire`` encoding (at least one entry)."""
    out: list[Version] = []
    used = 0
    after: Version | None = None
    while len(out) < limit:
        n = min(limit - len(out), batch)
        got = fetch(after, n)
        for v in got:
            v = lean(v)
            size = _size(v.to_wire())
            if out and used + size > max_bytes:
                return Part(out, more=True)
            out.append(v)
            used += size
        if len(got) < n:
            return Part(out, more=False)
        after = got[-1]
    return Part(out, more=True)


def merge_page(parts: Sequence[Part], *, versions: bool, limit: int,
               max_bytes: int = LIST_BYTES) -> tuple[list[dict[str, Any]], str | None]:
    """The client's page from the parts of every node of a site: ``(entries, next)``.

    Current-keys listings keep the greatest version of each key and drop deleted keys after
    the merge (they still count against *limit*, so a page may be short, even empty, with a
    ``next``); ``--versions`` listings keep every distinct version, delete markers included.
    """
    candidates: dict[Any, Version] = {}
    if versions:
        for part in parts:
            for v in part.versions:
                candidates[(v.key, v.hlc, v.node)] = v
    else:
        for part in parts:
            for v in part.versions:
                best = candidates.get(v.key)
                if best is None or v.order > best.order:
                    candidates[v.key] = v

    def sort_key(v: Version) -> Any:
        return (v.key, v.hlc, v.node) if versions else v.key

    def cursor(v: Version) -> str:
        return version_cursor(v) if versions else v.key

    # Exact only up to the smallest last entry of the parts that stopped early.
    ends = [sort_key(p.versions[-1]) for p in parts if p.more and p.versions]
    bound = min(ends) if ends else None
    ordered = sorted(k for k in candidates if bound is None or k <= bound)
    entries: list[dict[str, Any]] = []
    used = consumed = 0
    last: Version | None = None
    for k in ordered:
        v = candidates[k]
        if consumed == limit:
            assert last is not None
            return entries, cursor(last)
        if versions or not v.tombstone:
            info = v.public_info()
            size = _size(info)
            if entries and used + size > max_bytes:
                assert last is not None
                return entries, cursor(last)
            entries.append(info)
            used += size
        last = v
        consumed += 1
    if bound is not None:
        return entries, cursor(candidates[bound])
    return entries, None


def take_buckets(names: Sequence[str], max_bytes: int = LIST_BYTES) -> BucketPart:
    """A node's part of a bucket listing: *names* (ascending) up to *max_bytes*."""
    out: list[str] = []
    used = 0
    for name in names:
        size = _size(name)
        if out and used + size > max_bytes:
            return BucketPart(out, more=True)
        out.append(name)
        used += size
    return BucketPart(out, more=False)


def merge_buckets(parts: Sequence[BucketPart], max_bytes: int = LIST_BYTES
                  ) -> tuple[list[str], str | None]:
    """The client's page of bucket names: ``(names, next)``, exact as :func:`merge_page`."""
    ends = [p.buckets[-1] for p in parts if p.more and p.buckets]
    bound = min(ends) if ends else None
    names = sorted({b for p in parts for b in p.buckets if bound is None or b <= bound})
    page = take_buckets(names, max_bytes)
    if page.more:
        return page.buckets, page.buckets[-1]
    return page.buckets, bound
