"""Bucket and key names in audit records, sealed under the tenant's key.

An audit record's ``bucket`` and ``key`` fields may name a patient (a key, a listing prefix).
They are stored sealed, in the same two text fields so the record format, its hash chain, its
signatures and shipping stay as they are:

* ``bucket`` = ``"sealed:" + base64url(nonce || AEAD(msgpack([bucket, key])))`` under the
  tenant's name-seal key (``hdsd.pipeline.NameSeal``), associated data
  ``b"hdsd-audit-names-v1\\0" || tenant``;
* ``key`` = ``"id:" + hex(name id)``: the keyed id of (bucket, key), the same on every node,
  so an auditor without the tenant's key can still tell that two records touch the same
  object, never which one.

What stays readable for every auditor: time, node, identity, role, tenant, operation,
version, bytes, outcome, client address. ``hdsd audit export --config NODE.toml`` opens the
names for the tenant's own export (HDS: the client sees the accesses to its data). After a
shred, the names in the tenant's records can no longer be opened; the traces remain.
Records of a request whose tenant has no key on the node (unknown, shredded) keep no names:
``bucket`` = ``"sealed:-"`` (nothing could seal them, and they may identify a patient).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from .._errors import IntegrityError
from .._packing import PackError, packb, unpackb
from ..store import TenantSeal

__all__ = ["SEALED_PREFIX", "AuditNames", "open_audit_names", "seal_audit_names"]

SEALED_PREFIX = "sealed:"
_ID_PREFIX = "id:"
_UNSEALABLE = SEALED_PREFIX + "-"
_AAD = b"hdsd-audit-names-v1\x00"
_URLSAFE = bytes.maketrans(b"+/", b"-_")

# (tenant, bucket, key) -> the (bucket, key) fields to record
AuditNames = Callable[[str, str, str], tuple[str, str]]


def seal_audit_names(seal: TenantSeal | None, tenant: str, bucket: str,
                     key: str) -> tuple[str, str]:
    if not bucket and not key:
        return "", ""
    if seal is None:
        return _UNSEALABLE, ""
    sealed = seal.seal(packb([bucket, key]), _AAD + tenant.encode())
    # base64.urlsafe_b64encode's bytes, without its two Python calls (every put's record).
    text = binascii.b2a_base64(sealed, newline=False).translate(_URLSAFE).decode("ascii")
    return SEALED_PREFIX + text, _ID_PREFIX + seal.name_id(bucket, key).hex()


def open_audit_names(seal: TenantSeal, tenant: str, bucket: str,
                     key: str) -> tuple[str, str]:
    """The clear (bucket, key) of a record's fields; fields not sealed are returned as they
    are; :class:`IntegrityError` if sealed names do not open with *seal*."""
    if not bucket.startswith(SEALED_PREFIX) or bucket == _UNSEALABLE:
        return bucket, key
    try:
        raw = base64.urlsafe_b64decode(bucket[len(SEALED_PREFIX):])
        names = unpackb(seal.open(raw, _AAD + tenant.encode()))
        clear_bucket, clear_key = names
        if not isinstance(clear_bucket, str) or not isinstance(clear_key, str):
            raise TypeError("names are not text")
    except (PackError, ValueError, TypeError) as exc:
        raise IntegrityError(f"sealed audit names are malformed: {exc}") from None
    return clear_bucket, clear_key
