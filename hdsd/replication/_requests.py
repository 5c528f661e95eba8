"""Request ids: what one names, and how a retry is recognised.

A client gives every put and delete a 16-byte request id (random unless it chooses one) and
retries an ambiguous failure with the *same* id. The version an attempt stored carries that id,
so a retry finds it and must not write a second one. But an id names one request only: the
version found must be the very request being retried, or the "retry" is something else that
happens to reuse the id (a restarted job with deterministic ids, a bug), and answering it as a
replay would silently drop that other write. So the id is bound to:

* the tenant (the lookup is per tenant: ids never cross tenants),
* the operation (a put writes a version with content, a delete writes a tombstone, a purge a
  purge record naming the version it deletes for good — that version is bound too),
* the bucket and key,
* for a put, the body's size and keyed content hash (a delete's target is its key).

:func:`check_retry` compares a found version with the request in hand and raises
:class:`RequestIdConflict` on any difference, before anything is written. A put's content is
known only once its body arrived, so a put retry is checked twice: on what the start says
(operation, names, declared size), then on the received body's size and hash.

What a retry then promises is the subject of :meth:`Replicator.settle`: it is acknowledged only
once the write policy holds for the version found, exactly as a first attempt would be.
"""

from __future__ import annotations

from .._errors import RequestIdConflict
from ..store import Version

__all__ = ["check_retry"]


def check_retry(previous: Version, *, bucket: str, key: str, delete: bool,
                size: int | None = None, content_hash: bytes | None = None,
                purges: tuple[int, str] | None = None) -> None:
    """Raise :class:`RequestIdConflict` unless *previous* was written by this same request.

    *size* and *content_hash* are checked when given (a put's declared size before its body,
    the received size and hash after it); *purges* names the version a purge deletes (a
    delete with a version: the purge record found must name that same version)."""
    was = "a retention" if previous.retains is not None else _operation(previous.tombstone,
                                                                          previous.purges)
    now = _operation(delete and purges is None, purges)
    where = f"{previous.bucket}/{previous.key}"
    if was != now:
        _conflict(f"it named {was} of {where}, this is {now}")
    if (previous.bucket, previous.key) != (bucket, key):
        _conflict(f"it named {was} of {where}, this is {now} of {bucket}/{key}")
    if previous.purges != purges:
        _conflict(f"it named {was} of {where}, this is {now} of another version")
    if size is not None and size != previous.size:
        _conflict(f"it named a put of {previous.size} bytes to {where}, this one has {size}")
    if content_hash is not None and content_hash != previous.content_hash:
        _conflict(f"it named a put to {where} with other content (same size, other hash)")


def _operation(tombstone: bool, purges: tuple[int, str] | None) -> str:
    if purges is not None:
        return "a purge"
    return "a delete" if tombstone else "a put"


def _conflict(detail: str) -> None:
    raise RequestIdConflict(f"request id already used by another request: {detail}; nothing "
                            "was written (use a fresh request id for a new request)")
