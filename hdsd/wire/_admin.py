"""Tenant administration requests (client → node) and catalog replication (node → node).

Client admin requests (codes 0x18-0x1F, 0x40-0x4F) are answered by ``Reply`` or ``ErrorReply``
like any request; the node checks who may send them (an operator for tenants, a tenant's admin
for its own buckets and holds). Catalog entries travel as the maps of ``Entry.to_wire()``; the
wire layer checks only their shape, the catalog checks their content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidRequest
from . import _constants as C
from . import _fields as F
from ._messages import Request
from ._replies import (
    BucketCreated,
    BucketsListed,
    CatalogPushed,
    CatalogState,
    CertRevoked,
    CertsRevoked,
    HoldSetReply,
    HoldsHeld,
    S3KeyCreated,
    S3KeyRevoked,
    S3KeysListed,
    TenantCreated,
    TenantCreation,
    TenantShredded,
    TenantsListed,
    TenantVoted,
)

__all__ = [
    "BucketCreate",
    "BucketList",
    "CatalogPush",
    "CatalogSync",
    "CertList",
    "CertRevoke",
    "HoldList",
    "HoldSet",
    "S3KeyCreate",
    "S3KeyList",
    "S3KeyRevoke",
    "TenantAbandon",
    "TenantConfirm",
    "TenantCreate",
    "TenantList",
    "TenantShred",
    "TenantVote",
]

_MAX_QUOTA = (1 << 63) - 1
MAX_RETENTION_DAYS = 36500
_MAX_ENTRIES = 100_000
_PLANS = ("", "standard", "backup")


def _tenant(value: object, field: str = "tenant") -> None:
    F.check_str(field, value, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)


@dataclass(frozen=True, slots=True)
class TenantCreate(Request[TenantCreated]):
    """Operator: create a tenant (fresh keys) or, if it exists, set its quota (0: none).
    ``plan`` (``standard`` or ``backup``; ``""``: standard, or unchanged for an existing tenant)
    is fixed at creation."""

    rid: int
    tenant: str
    quota_bytes: int
    plan: str = ""

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        F.check_int("quota_bytes", self.quota_bytes, 0, _MAX_QUOTA)
        if self.plan not in _PLANS:
            raise InvalidRequest(f"plan {self.plan!r} must be standard or backup")


@dataclass(frozen=True, slots=True)
class TenantList(Request[TenantsListed]):
    """Operator: every tenant with its quota, usage on this site, and state."""

    rid: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)


@dataclass(frozen=True, slots=True)
class TenantShred(Request[TenantShredded]):
    """Operator: destroy the tenant's keys in both sites; ``confirm`` must repeat the name."""

    rid: int
    tenant: str
    confirm: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        _tenant(self.confirm, "confirm")


@dataclass(frozen=True, slots=True)
class TenantConfirm(Request[TenantCreation]):
    """Operator: run one confirmation round of the tenant's pending creation (``hdsd tenant
    create`` repeats it until confirmed; ``--resume``). ``creation`` (16 bytes, or empty: the
    one the node holds) is the creation the caller expects: another one is ``tenant_conflict``.
    Reply as ``TenantCreate``'s: ``state``, ``acked``, ``waiting`` {node: why}."""

    rid: int
    tenant: str
    creation: bytes

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        F.check_bytes("creation", self.creation)
        if len(self.creation) not in (0, 16):
            raise InvalidRequest("creation: expected 16 bytes or none")


@dataclass(frozen=True, slots=True)
class TenantAbandon(Request[TenantCreation]):
    """Operator: abandon the tenant's unconfirmed creation in both sites (every node must
    agree); ``confirm`` must repeat the name. A confirmed tenant is refused (shred it)."""

    rid: int
    tenant: str
    confirm: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        _tenant(self.confirm, "confirm")


@dataclass(frozen=True, slots=True)
class BucketCreate(Request[BucketCreated]):
    """Create a bucket, or extend its retention (never shorten)."""

    rid: int
    tenant: str
    bucket: str
    retention_days: int

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        F.check_bucket(self.bucket)
        F.check_int("retention_days", self.retention_days, 0, MAX_RETENTION_DAYS)


@dataclass(frozen=True, slots=True)
class BucketList(Request[BucketsListed]):
    """Buckets of ``tenant`` (empty: every tenant, operator only) with retention and holds."""

    rid: int
    tenant: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES)


@dataclass(frozen=True, slots=True)
class HoldSet(Request[HoldSetReply]):
    """Set (``held``) or clear a legal hold on one key."""

    rid: int
    tenant: str
    bucket: str
    key: str
    held: bool

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        F.check_bucket(self.bucket)
        F.check_key(self.key)
        F.check_bool("held", self.held)


@dataclass(frozen=True, slots=True)
class HoldList(Request[HoldsHeld]):
    """Keys under legal hold: of ``tenant`` (empty: every tenant, operator only), of
    ``bucket`` (empty: every bucket of it)."""

    rid: int
    tenant: str
    bucket: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES)
        if self.bucket:
            if not self.tenant:
                raise InvalidRequest("a bucket needs its tenant (TENANT/BUCKET)")
            F.check_bucket(self.bucket)


_SERIAL_RE = re.compile(r"[1-9a-f][0-9a-f]{0,39}")
_MAX_CERT_BYTES = 16 << 10


@dataclass(frozen=True, slots=True)
class CertRevoke(Request[CertRevoked]):
    """Revoke a certificate, for good, on every node. ``certificate`` (DER, or empty) proves
    whose it is: the node checks the cluster CA signed it and lets a tenant's admin revoke its
    own tenant's certificates; a bare ``serial`` (lowercase hex, no certificate) is the
    operator's only. With a certificate, ``serial`` is empty or the certificate's."""

    rid: int
    serial: str
    certificate: bytes
    reason: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("serial", self.serial, max_chars=40)
        if self.serial and not _SERIAL_RE.fullmatch(self.serial):
            raise InvalidRequest(f"serial {self.serial!r} must be lowercase hex without "
                                 "leading zeros")
        F.check_bytes("certificate", self.certificate)
        if len(self.certificate) > _MAX_CERT_BYTES:
            raise InvalidRequest(f"certificate: more than {_MAX_CERT_BYTES} bytes")
        if not self.serial and not self.certificate:
            raise InvalidRequest("give a serial or a certificate to revoke")
        F.check_str("reason", self.reason, max_bytes=1024)


@dataclass(frozen=True, slots=True)
class CertList(Request[CertsRevoked]):
    """Revoked certificates of ``tenant`` (empty: every one, node certificates included,
    operator only)."""

    rid: int
    tenant: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES)


_ACCESS_KEY_ID_RE = re.compile(r"[A-Z0-9]{16,128}")
_S3_ROLES = ("admin", "writer", "reader", "auditor")


@dataclass(frozen=True, slots=True)
class S3KeyCreate(Request[S3KeyCreated]):
    """A new S3 access key for ``tenant`` acting with ``role`` (the operator, or an admin of
    the tenant). Reply body: ``access_key_id``, ``secret_access_key`` (sent only in replies to
    this request), ``tenant``, ``role``, ``replayed``, ``applied_on``, ``pending``. With a
    ``request_id``, a retry of the same request answers the same key (``replayed``)."""

    rid: int
    tenant: str
    role: str
    request_id: bytes = b""

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _tenant(self.tenant)
        if self.request_id != b"":
            F.check_request_id(self.request_id)
        if self.role not in _S3_ROLES:
            raise InvalidRequest(f"role {self.role!r} must be one of {', '.join(_S3_ROLES)}")


@dataclass(frozen=True, slots=True)
class S3KeyList(Request[S3KeysListed]):
    """S3 access keys of ``tenant`` (empty: every tenant, operator only), revoked ones
    included; never a secret."""

    rid: int
    tenant: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES)


@dataclass(frozen=True, slots=True)
class S3KeyRevoke(Request[S3KeyRevoked]):
    """Revoke an S3 access key on every node, for good (the operator, or an admin of its
    tenant)."""

    rid: int
    access_key_id: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("access_key_id", self.access_key_id, max_chars=128)
        if not _ACCESS_KEY_ID_RE.fullmatch(self.access_key_id):
            raise InvalidRequest(f"access key id {self.access_key_id!r} must be 16 to 128 "
                                 "characters A-Z, 0-9")


def _check_entries(value: object) -> None:
    if type(value) is not list or len(value) > _MAX_ENTRIES:
        raise InvalidRequest(f"entries: expected a list of at most {_MAX_ENTRIES} maps")
    for item in value:
        F.check_map("entries", item)


@dataclass(frozen=True, slots=True)
class CatalogPush(Request[CatalogPushed]):
    """Node → node: merge these catalog entries (an admin change, or a sync's missing part)."""

    rid: int
    layout: str
    entries: list[Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("layout", self.layout, max_chars=64, allow_empty=False)
        _check_entries(self.entries)


@dataclass(frozen=True, slots=True)
class TenantVote(Request[TenantVoted]):
    """Node → node: vote on a tenant creation (``vote`` ``create``: hold this pending creation;
    ``abandon``: hold its epoch abandoning). Reply ``{"state"}`` for yes, ``tenant_conflict``
    (naming what the node holds) for no."""

    rid: int
    layout: str
    entry: dict[str, Any]
    vote: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("layout", self.layout, max_chars=64, allow_empty=False)
        F.check_map("entry", self.entry)
        if self.vote not in ("create", "abandon"):
            raise InvalidRequest(f"vote {self.vote!r} must be create or abandon")


@dataclass(frozen=True, slots=True)
class CatalogSync(Request[CatalogState]):
    """Node → node: my catalog digest. Reply ``{"digest", "entries" (all, when the digests
    differ, else []), "usage": {tenant: bytes}}`` — usage of the answering node's store."""

    rid: int
    layout: str
    digest: bytes

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("layout", self.layout, max_chars=64, allow_empty=False)
        F.check_bytes("digest", self.digest, exact=32)
