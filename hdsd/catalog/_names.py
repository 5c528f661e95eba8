"""Bucket and key names in catalog entries, sealed under the tenant's key.

A retention lock names a bucket and a legal hold a bucket and a key — names that may identify a
patient (``patient-4242``). The replicated catalog holds them as the store's index does: keyed
ids (``NameSeal.bucket_id``, ``NameSeal.name_id``: the same on every node, since every node
holds the same tenant keys) identify the entries, and the names are sealed under the tenant's
key with the entry's identity as associated data, so a sealed name cannot be moved to another
entry or tenant.

The seal is deterministic (``NameSeal.seal_fixed``): the catalog converges by comparing and
merging entries, and two nodes that make the same entry independently (a retention extended
at each site) must hold the same bytes, or their digests would never agree.

After a shred the catalog drops the tenant's bucket and hold entries (``Catalog.apply``): the
ids could otherwise be tested against guessed names by anyone holding a copy of the former key.
"""

from __future__ import annotations

from .._errors import IntegrityError
from .._packing import PackError, packb, unpackb
from ..pipeline import NameSeal
from ._model import BucketEntry, HoldEntry

__all__ = ["bucket_name", "hold_names", "seal_bucket", "seal_hold"]

_AAD = b"hdsd-catalog-names-v1\x00"


def _aad(kind: str, tenant: str, ident: bytes) -> bytes:
    return _AAD + packb([kind, tenant, ident])


def seal_bucket(seal: NameSeal, tenant: str, bucket: str, retention_days: int,
                created: int) -> BucketEntry:
    bid = seal.bucket_id(bucket)
    sealed = seal.seal_fixed(packb([bucket]), _aad("bucket", tenant, bid))
    return BucketEntry(tenant=tenant, bucket_id=bid, sealed=sealed,
                       retention_days=retention_days, created=created)


def seal_hold(seal: NameSeal, tenant: str, bucket: str, key: str, held: bool, by: str,
              hlc: int) -> HoldEntry:
    nid = seal.name_id(bucket, key)
    sealed = seal.seal_fixed(packb([bucket, key]), _aad("hold", tenant, nid))
    return HoldEntry(tenant=tenant, bucket_id=seal.bucket_id(bucket), name_id=nid,
                     sealed=sealed, held=held, by=by, hlc=hlc)


def _open(seal: NameSeal, sealed: bytes, aad: bytes, count: int) -> list[str]:
    try:
        names = unpackb(seal.open(sealed, aad))
    except PackError as exc:
        raise IntegrityError(f"sealed catalog names are malformed: {exc}") from None
    if not isinstance(names, list) or len(names) != count \
            or not all(isinstance(n, str) for n in names):
        raise IntegrityError("sealed catalog names are malformed")
    return names


def bucket_name(seal: NameSeal, entry: BucketEntry) -> str:
    """The bucket's name; :class:`IntegrityError` if it does not open with *seal*."""
    (name,) = _open(seal, entry.sealed, _aad("bucket", entry.tenant, entry.bucket_id), 1)
    return name


def hold_names(seal: NameSeal, entry: HoldEntry) -> tuple[str, str]:
    """The held (bucket, key); :class:`IntegrityError` if they do not open with *seal*."""
    bucket, key = _open(seal, entry.sealed, _aad("hold", entry.tenant, entry.name_id), 2)
    return bucket, key
