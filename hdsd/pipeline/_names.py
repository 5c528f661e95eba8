"""Sealing names at rest: bucket names, key names and metadata under the tenant's key.

Two keys are derived from the tenant's data key with BLAKE3's key derivation (so shredding the
data key destroys both, with nothing else to forget):

* the *name-hash key* keys BLAKE3 over a bucket name, or a bucket and key name: the 16-byte ids
  the store's index and the anti-entropy trees use instead of the names. Every node of both
  sites holds the same tenant keys, so both sites compute the same ids (their Merkle trees stay
  comparable); without the key an id cannot be tested against a guessed name
  (``patient-4242``), unlike an unkeyed hash.
* the *seal key* encrypts (XChaCha20-Poly1305, random 24-byte nonce) the names themselves, with
  associated data chosen by the caller (the record's identity), so a sealed name cannot be
  moved to another record.
* the *nonce key* makes :meth:`NameSeal.seal_fixed` deterministic (a synthetic nonce: keyed
  BLAKE3 of the associated data and the plaintext), for the replicated catalog, whose entries
  must compare equal on every node that made or received them. Equal inputs give equal
  outputs — which reveals only what the entry's keyed id already does (the same name) — and
  distinct inputs never share a nonce.

Sealed format: ``nonce (24) || ciphertext || tag (16)``. Names are never compressed first:
compression would leak their length more finely and buys nothing on a few dozen bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import blake3
import nacl.bindings
import nacl.exceptions

from .._errors import IntegrityError
from ._aead import decrypt as _decrypt
from ._aead import encrypt as _encrypt
from ._keys import TenantKeys
from ._nonces import random_bytes

__all__ = ["NAME_ID_BYTES", "NameSeal", "TenantNameSealing"]

NAME_ID_BYTES = 16
_BUCKET_IDS_KEPT = 4096
# A put asks for its name's id three or four times on a coordinator (the hold check, the
# store's dedup check, the sealed record, the audit record) and twice on a replica: the ids of
# the names in flight are kept, a few thousand at most (~200 bytes each with usual names; a
# few MiB if every one were a longest key), dropped all at once. Names in clear stay in the
# node's memory no longer than this seal (dropped with the tenant's keys, e.g. at a shred).
_NAME_IDS_KEPT = 4096
_NONCE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_HASH_CONTEXT = "hdsd 2026-12 name ids v1"
_SEAL_CONTEXT = "hdsd 2026-12 sealed names v1"
_NONCE_CONTEXT = "hdsd 2026-12 catalog name nonces v1"


class NameSeal:
    """One tenant's name ids and name sealing (implements ``hdsd.store.TenantSeal``)."""

    __slots__ = ("_bucket_ids", "_hash_key", "_name_ids", "_nonce_key", "_seal_key", "keys")

    def __init__(self, keys: TenantKeys) -> None:
        self.keys = keys  # kept to notice a replaced (or shredded) key set
        self._hash_key = blake3.blake3(keys.data_key, derive_key_context=_HASH_CONTEXT).digest()
        self._seal_key = blake3.blake3(keys.data_key, derive_key_context=_SEAL_CONTEXT).digest()
        self._nonce_key = blake3.blake3(keys.data_key,
                                        derive_key_context=_NONCE_CONTEXT).digest()
        # A tenant has few buckets and every put needs its bucket's id: computed once each.
        self._bucket_ids: dict[str, bytes] = {}
        self._name_ids: dict[tuple[str, str], bytes] = {}

    def bucket_id(self, bucket: str) -> bytes:
        bid = self._bucket_ids.get(bucket)
        if bid is None:
            bid = blake3.blake3(b"b\x00" + bucket.encode("utf-8"),
                                key=self._hash_key).digest(NAME_ID_BYTES)
            if len(self._bucket_ids) >= _BUCKET_IDS_KEPT:
                self._bucket_ids.clear()
            self._bucket_ids[bucket] = bid
        return bid

    def name_id(self, bucket: str, key: str) -> bytes:
        names = (bucket, key)
        nid = self._name_ids.get(names)
        if nid is None:
            # Length-prefixed bucket: ("a", "b\0c") and ("a\0b", "c") get different ids.
            b = bucket.encode("utf-8")
            data = b"k\x00" + len(b).to_bytes(4, "big") + b + key.encode("utf-8")
            nid = blake3.blake3(data, key=self._hash_key).digest(NAME_ID_BYTES)
            # Any thread may call this (the index's): a dict's get, set and clear are each
            # atomic, and a lost entry only costs a recomputation.
            if len(self._name_ids) >= _NAME_IDS_KEPT:
                self._name_ids.clear()
            self._name_ids[names] = nid
        return nid

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = random_bytes(_NONCE)
        return nonce + _encrypt(plain, aad, nonce, self._seal_key)

    def seal_fixed(self, plain: bytes, aad: bytes) -> bytes:
        """Like :meth:`seal` (same format, opened by :meth:`open`), but the same *plain* and
        *aad* always give the same bytes: the nonce is a keyed hash of both (length-prefixed
        associated data, so no two inputs collide by concatenation)."""
        h = blake3.blake3(len(aad).to_bytes(4, "big") + aad + plain, key=self._nonce_key)
        nonce = h.digest(_NONCE)
        return nonce + _encrypt(plain, aad, nonce, self._seal_key)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        try:
            return _decrypt(sealed[_NONCE:], aad, sealed[:_NONCE], self._seal_key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise IntegrityError(
                f"sealed names of tenant {self.keys.tenant!r} do not open (damaged, moved, or "
                "sealed under another key)") from None


class TenantNameSealing:
    """The sealing capability a node gives its store: a tenant's :class:`NameSeal`, from a
    lookup of its keys (the node's keyring), or None when the tenant has no key (unknown or
    shredded). Looked up on every call, so a shredded tenant stops opening at once; the
    derived keys are cached per key set."""

    def __init__(self, lookup: Callable[[str], TenantKeys | None]) -> None:
        self._lookup = lookup
        # The seals made, by tenant: read without the lock (a dict's get is atomic) by a
        # caller that has the tenant's current keys at hand, to skip the lookup (a seal is
        # current only if ``seal.keys is keys``).
        self.seals: dict[str, NameSeal] = {}
        self._lock = threading.Lock()

    def seal_for(self, tenant: str) -> NameSeal | None:
        keys = self._lookup(tenant)
        if keys is None:
            with self._lock:
                self.seals.pop(tenant, None)
            return None
        seal = self.seals.get(tenant)
        if seal is None or seal.keys is not keys:
            seal = NameSeal(keys)
            with self._lock:
                self.seals[tenant] = seal
        return seal
