"""Catalog entries and their merge rules: what makes the catalog converge in any delivery order.

The catalog is a set of entries keyed by identity (a tenant by name, a bucket by tenant and name,
a hold by tenant, bucket and key). Two entries with the same identity merge with :func:`merge`,
which is commutative, associative and idempotent (a join-semilattice), so nodes that receive the
same updates in any order, any number of times, hold the same catalog:

* **tenant** — one *creation* (key set, plan, creating node) wins the name by a total order
  (:func:`creation_order`): the highest ``epoch`` (a new epoch starts only after the previous
  one was abandoned everywhere), then the highest confirmation ``state`` rank (``pending`` <
  ``abandoning`` < ``confirmed`` < ``abandoned``), then the earliest ``(created, creation id)``:
  every node picks the same keys. Whether a creation may be *used* is decided by the
  confirmation protocol of :mod:`._confirm`, not by this merge: the merge only guarantees that a
  confirmed creation is never replaced (see there). *Shredding is terminal*: once either side
  is shredded the merge is shredded (at the earliest shredding HLC) and holds no key bytes at
  all, so a shredded tenant never comes back; an abandoned creation holds no key bytes either.
  The quota is last-writer-wins on ``(quota_hlc, quota_bytes)``. The *plan* (``standard`` or
  ``backup``: which node role holds the tenant's keys) is the winning creation's, like the
  keys, so it never changes once the creation is confirmed.
* **bucket** — retention only grows (max); created is the earliest. Identified by the
  bucket's keyed id, its name sealed (see :class:`BucketEntry`).
* **hold** — last-writer-wins on ``(hlc, by, held)``. Identified by the keyed id of
  (bucket, key), the names sealed.
* Buckets and holds of a **shredded** tenant are dropped by the catalog (``Catalog.apply``):
  their ids and sealed names were made with the destroyed key, and nothing may be left that
  a former copy of it opens. Since shredding is terminal, "drop them once the tenant is known
  shredded" converges too.
* **revoked** — a certificate serial that no node accepts any more. *Revocation is terminal*,
  like shredding: the entries form a grow-only set keyed by serial, and nothing un-revokes.
  Two revocations of one serial merge to the earliest ``(hlc, by, reason)`` (when and by whom
  it was first revoked) and to the most the revokers knew of the certificate (its kind,
  tenant, name, role, expiry: empty or 0 when revoked by bare serial).
* **s3key** — an S3 access key: its id, tenant, role and secret (wrapped under the master key,
  like tenant keys). The creation is immutable (two copies of one id merge to the earliest
  creation, the wrapped bytes last as for tenants: each node may have rewrapped its copy at
  master key rotation). *Revocation is terminal*: the earliest ``(revoked, revoked_by)`` wins,
  and a revoked key holds no secret at all (the wrapped bytes are dropped), so it can never
  sign again and the entry stays only to say so.

Wrapped keys are opaque here (wrapping lives in :mod:`._keys`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from .._errors import IntegrityError
from ..cluster import PLANS
from ..pipeline import NAME_ID_BYTES

__all__ = ["BucketEntry", "Entry", "HoldEntry", "RevokedEntry", "S3KeyEntry", "TenantEntry",
           "creation_order", "entry_from_wire", "merge"]

# Confirmation states of a tenant creation, by rank (see hdsd.catalog._confirm).
PENDING = "pending"
ABANDONING = "abandoning"
CONFIRMED = "confirmed"
ABANDONED = "abandoned"
STATE_RANK = {PENDING: 0, ABANDONING: 1, CONFIRMED: 2, ABANDONED: 3}


@dataclass(frozen=True, slots=True)
class TenantEntry:
    name: str
    wrapped: bytes = field(repr=False)  # b"" once shredded
    created: int = 0  # HLC
    quota_bytes: int = 0  # 0: no quota
    quota_hlc: int = 0
    key_generation: int = 1
    shredded: int = 0  # HLC of the shredding, 0: live
    plan: str = "standard"  # or "backup": its keys live on backup nodes only
    # The creation (see hdsd.catalog._confirm). Defaults describe a tenant created before
    # creations were confirmed: confirmed, no id (the migration).
    epoch: int = 0  # how many creations of this name were abandoned before this one
    creation: bytes = b""  # random id of the key set (16 bytes); b"" for older tenants
    state: str = CONFIRMED
    origin: str = ""  # the node that made the creation ("keyring": a seed, see _tenancy)

    @property
    def ident(self) -> tuple[str, ...]:
        return ("tenant", self.name)

    @property
    def is_shredded(self) -> bool:
        return self.shredded != 0

    @property
    def is_confirmed(self) -> bool:
        return self.state == CONFIRMED

    @property
    def has_keys(self) -> bool:
        return not self.is_shredded and self.state != ABANDONED

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "tenant", "name": self.name, "wrapped": self.wrapped,
                "created": self.created, "quota_bytes": self.quota_bytes,
                "quota_hlc": self.quota_hlc, "key_generation": self.key_generation,
                "shredded": self.shredded,
                # Only when not the default: a standard tenant's map (and the catalog digest)
                # stays what it was before plans existed.
                **({"plan": self.plan} if self.plan != "standard" else {}),
                # Same for the creation fields: an older tenant's map is unchanged.
                **({"epoch": self.epoch} if self.epoch else {}),
                **({"creation": self.creation} if self.creation else {}),
                **({"state": self.state} if self.state != CONFIRMED else {}),
                **({"origin": self.origin} if self.origin else {})}


@dataclass(frozen=True, slots=True)
class BucketEntry:
    """A bucket's retention lock. Its name may identify a patient: the entry holds only the
    bucket's keyed id (``hdsd.pipeline.NameSeal.bucket_id``, the store's too) and the name
    sealed deterministically under the tenant's key (:mod:`._names`), so every node that makes
    or receives it holds the same bytes."""

    tenant: str
    bucket_id: bytes
    sealed: bytes = field(repr=False)
    retention_days: int = 0
    created: int = 0

    @property
    def ident(self) -> tuple[str, ...]:
        return ("bucket", self.tenant, self.bucket_id.hex())

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "bucket", "tenant": self.tenant, "id": self.bucket_id,
                "sealed": self.sealed, "retention_days": self.retention_days,
                "created": self.created}


@dataclass(frozen=True, slots=True)
class HoldEntry:
    """A legal hold on a key: identified by the keyed id of (bucket, key) (the store's name
    id), with its bucket's id (to list a bucket's holds) and both names sealed like a
    :class:`BucketEntry`'s."""

    tenant: str
    bucket_id: bytes
    name_id: bytes
    sealed: bytes = field(repr=False)
    held: bool = False
    by: str = ""
    hlc: int = 0

    @property
    def ident(self) -> tuple[str, ...]:
        return ("hold", self.tenant, self.name_id.hex())

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "hold", "tenant": self.tenant, "bucket_id": self.bucket_id,
                "id": self.name_id, "sealed": self.sealed, "held": self.held, "by": self.by,
                "hlc": self.hlc}


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """A revoked certificate: ``serial`` is its serial in lowercase hex (the key); the rest
    describes it for listings and audits, as far as the revoker knew (``kind`` ``""``: a bare
    serial). ``not_after`` is the certificate's expiry in Unix ms (0: unknown)."""

    serial: str
    hlc: int
    by: str
    reason: str = ""
    kind: str = ""  # "client", "node" or "" (unknown)
    tenant: str = ""
    name: str = ""
    role: str = ""
    not_after: int = 0

    @property
    def ident(self) -> tuple[str, ...]:
        return ("revoked", self.serial)

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "revoked", "serial": self.serial, "hlc": self.hlc, "by": self.by,
                "reason": self.reason, "cert_kind": self.kind, "tenant": self.tenant,
                "name": self.name, "role": self.role, "not_after": self.not_after}


@dataclass(frozen=True, slots=True)
class S3KeyEntry:
    """An S3 access key of ``tenant`` acting with ``role``; ``wrapped`` is its secret under
    the master key (``b""`` once revoked). ``created``/``revoked`` are HLCs (0: live)."""

    access_key_id: str
    tenant: str
    role: str
    wrapped: bytes = field(repr=False)
    created: int
    by: str
    revoked: int = 0
    revoked_by: str = ""

    @property
    def ident(self) -> tuple[str, ...]:
        return ("s3key", self.access_key_id)

    @property
    def is_revoked(self) -> bool:
        return self.revoked != 0

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "s3key", "access_key_id": self.access_key_id, "tenant": self.tenant,
                "role": self.role, "wrapped": self.wrapped, "created": self.created,
                "by": self.by, "revoked": self.revoked, "revoked_by": self.revoked_by}


Entry: TypeAlias = TenantEntry | BucketEntry | HoldEntry | RevokedEntry | S3KeyEntry


def _merge_s3key(a: S3KeyEntry, b: S3KeyEntry) -> S3KeyEntry:
    # Two joins — the earliest creation (wrapped bytes last), the earliest revocation — then
    # the secret dropped if revoked: commutative, associative and idempotent like the tenant's.
    win = min(a, b, key=lambda e: (e.created, e.by, e.tenant, e.role, e.wrapped))
    revoked, revoked_by = min(((x.revoked, x.revoked_by) for x in (a, b) if x.is_revoked),
                              default=(0, ""))
    return replace(win, revoked=revoked, revoked_by=revoked_by,
                   wrapped=b"" if revoked else win.wrapped)


def _merge_revoked(a: RevokedEntry, b: RevokedEntry) -> RevokedEntry:
    # Each half is a join on its own (min of one tuple, max of another), so their product is.
    hlc, by, reason = min((a.hlc, a.by, a.reason), (b.hlc, b.by, b.reason))
    kind, tenant, name, role, not_after = max(
        (a.kind, a.tenant, a.name, a.role, a.not_after),
        (b.kind, b.tenant, b.name, b.role, b.not_after))
    return RevokedEntry(serial=a.serial, hlc=hlc, by=by, reason=reason, kind=kind,
                        tenant=tenant, name=name, role=role, not_after=not_after)


def creation_order(e: TenantEntry) -> tuple[int, int, int, bytes, int, str, str, bytes]:
    """The merge keeps the entry with the *smallest* key: latest epoch, then highest state
    rank, then earliest creation (HLC, then id). The rest only makes the choice total, so the
    merge does not depend on argument order (entries from before creation ids may differ in
    plan alone). The wrapped bytes come last, after every field the winner contributes: the
    same creation may carry different wraps of the same keys (each node rewraps on its own at
    master key rotation), and a shredded entry has none — which must not change the winner."""
    return (-e.epoch, -STATE_RANK.get(e.state, 0), e.created, e.creation, e.key_generation,
            e.plan, e.origin, e.wrapped)


def _merge_tenant(a: TenantEntry, b: TenantEntry) -> TenantEntry:
    # Three independent joins (winning creation, quota LWW, earliest shredding), so the merge
    # stays commutative, associative and idempotent.
    win = min(a, b, key=creation_order)
    quota_hlc, quota = max((a.quota_hlc, a.quota_bytes), (b.quota_hlc, b.quota_bytes))
    shredded = min((x.shredded for x in (a, b) if x.is_shredded), default=0)
    wrapped = win.wrapped if shredded == 0 and win.state != ABANDONED else b""
    return replace(win, wrapped=wrapped, quota_bytes=quota, quota_hlc=quota_hlc,
                   shredded=shredded)


def merge(a: Entry, b: Entry) -> Entry:
    """The join of two entries with the same identity (commutative, associative, idempotent)."""
    if a.ident != b.ident:
        raise ValueError(f"cannot merge {a.ident} with {b.ident}")
    if isinstance(a, TenantEntry) and isinstance(b, TenantEntry):
        return _merge_tenant(a, b)
    if isinstance(a, BucketEntry) and isinstance(b, BucketEntry):
        # The sealed names are equal whoever sealed them (deterministic); min only keeps the
        # merge a join if they ever were not.
        return replace(a, retention_days=max(a.retention_days, b.retention_days),
                       created=min(a.created, b.created), sealed=min(a.sealed, b.sealed))
    if isinstance(a, HoldEntry) and isinstance(b, HoldEntry):
        return max(a, b, key=lambda h: (h.hlc, h.by, h.held, h.sealed, h.bucket_id))
    if isinstance(a, RevokedEntry) and isinstance(b, RevokedEntry):
        return _merge_revoked(a, b)
    if isinstance(a, S3KeyEntry) and isinstance(b, S3KeyEntry):
        return _merge_s3key(a, b)
    raise ValueError(f"cannot merge {type(a).__name__} with {type(b).__name__}")


_U64 = (1 << 64) - 1


def _field_of(doc: dict[str, Any], name: str, kind: type, *, low: int = 0, high: int = _U64,
              empty: bool = False) -> Any:
    value: Any = doc.get(name)
    if type(value) is not kind:
        raise IntegrityError(f"catalog entry field {name!r}: expected {kind.__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
        raise IntegrityError(f"catalog entry field {name!r}: {value} out of range")
    if isinstance(value, str) and not (0 if empty else 1) <= len(value) <= 1024:
        raise IntegrityError(f"catalog entry field {name!r}: bad length")
    return value


SERIAL_RE = re.compile(r"[1-9a-f][0-9a-f]{0,39}")  # X.509: positive, at most 20 octets
ACCESS_KEY_ID_RE = re.compile(r"[A-Z0-9]{16,128}")
S3_ROLES = ("admin", "writer", "reader", "auditor")  # the certificate roles
CERT_KINDS = ("", "client", "node")


def _creation_of(doc: dict[str, Any]) -> bytes:
    value = doc.get("creation", b"")
    if type(value) is not bytes or len(value) > 32:
        raise IntegrityError("catalog entry field 'creation': expected at most 32 bytes")
    return value


_SEALED_MAX = 4096 + 64  # two names of at most 1024 UTF-8 bytes each, packed and sealed


def _name_id(doc: dict[str, Any], name: str) -> bytes:
    value = doc.get(name)
    if type(value) is not bytes or len(value) != NAME_ID_BYTES:
        raise IntegrityError(f"catalog entry field {name!r}: expected a {NAME_ID_BYTES}-byte id")
    return value


def _sealed_of(doc: dict[str, Any]) -> bytes:
    value = doc.get("sealed")
    if type(value) is not bytes or not 40 < len(value) <= _SEALED_MAX:
        raise IntegrityError("catalog entry field 'sealed': expected sealed names")
    return value


def entry_from_wire(doc: object) -> Entry:
    """An entry from its msgpack map; :class:`IntegrityError` if it is malformed."""
    if not isinstance(doc, dict):
        raise IntegrityError("catalog entry must be a map")
    kind = doc.get("kind")
    if kind == "tenant":
        wrapped = doc.get("wrapped")
        if type(wrapped) is not bytes or len(wrapped) > 256:
            raise IntegrityError("catalog entry field 'wrapped': expected at most 256 bytes")
        entry = TenantEntry(
            name=_field_of(doc, "name", str), wrapped=wrapped,
            created=_field_of(doc, "created", int),
            quota_bytes=_field_of(doc, "quota_bytes", int),
            quota_hlc=_field_of(doc, "quota_hlc", int),
            key_generation=_field_of(doc, "key_generation", int, low=1),
            shredded=_field_of(doc, "shredded", int),
            plan=doc.get("plan", "standard"),
            epoch=_field_of(doc, "epoch", int) if "epoch" in doc else 0,
            creation=_creation_of(doc),
            state=doc.get("state", CONFIRMED),
            origin=_field_of(doc, "origin", str) if "origin" in doc else "")
        if entry.plan not in PLANS:
            raise IntegrityError(f"catalog tenant entry: unknown plan {entry.plan!r}")
        if entry.state not in STATE_RANK:
            raise IntegrityError(f"catalog tenant entry: unknown state {entry.state!r}")
        if entry.has_keys != bool(wrapped):
            raise IntegrityError("catalog tenant entry: keys present iff neither shredded "
                                 "nor abandoned")
        return entry
    if kind in ("bucket", "hold") and "sealed" not in doc:
        raise IntegrityError(f"catalog {kind} entry with its names in clear (an hdsd older "
                             "than sealed catalog names): upgrade every node")
    if kind == "bucket":
        return BucketEntry(tenant=_field_of(doc, "tenant", str), bucket_id=_name_id(doc, "id"),
                           sealed=_sealed_of(doc),
                           retention_days=_field_of(doc, "retention_days", int, high=36500 * 10),
                           created=_field_of(doc, "created", int))
    if kind == "hold":
        return HoldEntry(tenant=_field_of(doc, "tenant", str),
                         bucket_id=_name_id(doc, "bucket_id"), name_id=_name_id(doc, "id"),
                         sealed=_sealed_of(doc), held=_field_of(doc, "held", bool),
                         by=_field_of(doc, "by", str), hlc=_field_of(doc, "hlc", int))
    if kind == "revoked":
        serial = _field_of(doc, "serial", str)
        if not SERIAL_RE.fullmatch(serial):
            raise IntegrityError("catalog revoked entry: serial must be lowercase hex")
        revoked = RevokedEntry(
            serial=serial, hlc=_field_of(doc, "hlc", int), by=_field_of(doc, "by", str),
            reason=_field_of(doc, "reason", str, empty=True),
            kind=_field_of(doc, "cert_kind", str, empty=True),
            tenant=_field_of(doc, "tenant", str, empty=True),
            name=_field_of(doc, "name", str, empty=True),
            role=_field_of(doc, "role", str, empty=True),
            not_after=_field_of(doc, "not_after", int))
        if revoked.kind not in CERT_KINDS:
            raise IntegrityError(f"catalog revoked entry: unknown kind {revoked.kind!r}")
        return revoked
    if kind == "s3key":
        akid = _field_of(doc, "access_key_id", str)
        wrapped = doc.get("wrapped")
        if type(wrapped) is not bytes or len(wrapped) > 256:
            raise IntegrityError("catalog entry field 'wrapped': expected at most 256 bytes")
        s3key = S3KeyEntry(
            access_key_id=akid, tenant=_field_of(doc, "tenant", str),
            role=_field_of(doc, "role", str), wrapped=wrapped,
            created=_field_of(doc, "created", int), by=_field_of(doc, "by", str, empty=True),
            revoked=_field_of(doc, "revoked", int),
            revoked_by=_field_of(doc, "revoked_by", str, empty=True))
        if not ACCESS_KEY_ID_RE.fullmatch(akid):
            raise IntegrityError("catalog s3key entry: access key id must be A-Z0-9")
        if s3key.role not in S3_ROLES:
            raise IntegrityError(f"catalog s3key entry: unknown role {s3key.role!r}")
        if s3key.is_revoked == bool(wrapped):
            raise IntegrityError("catalog s3key entry: a secret present iff not revoked")
        return s3key
    raise IntegrityError(f"unknown catalog entry kind {kind!r}")
