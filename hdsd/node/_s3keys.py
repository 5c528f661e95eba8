"""S3 access keys on one node: creation, revocation, and the lookup the S3 gateway verifies
signatures with.

A key belongs to a tenant and acts with one of the certificate roles. Its secret exists in clear
only in this process's memory (and once, in the reply to ``hdsd s3 key create``): the catalog
holds it wrapped under the master key (:func:`hdsd.catalog.wrap_secret`, the tenant keys' AEAD,
with the key's id, tenant and role as associated data), and the catalog replicates it to every
node of both sites like any entry. Every node shares the cluster master key (the same key file
or passphrase and salt on every node, checked at start by ``[keys] master_key_check``), which is
why tenant keys travel wrapped in the catalog: the S3 secrets do the same, and master key
rotation rewraps both (:func:`hdsd.node._masterkey.rotate_master`).

**Revocation** is a catalog change too: terminal (it merges over any copy of the key), it drops
the wrapped secret, and it converges like a certificate revocation (pushed to every node at
once, caught up by sync). It takes effect on the next request: :class:`S3Keys` keeps unwrapped
secrets in a cache keyed by the catalog entry itself, so an entry replaced by a merge (revoked,
or rewrapped) is looked up afresh — no invalidation hook to forget.

**A retried creation** (the client's request id, sent again after a lost reply) makes the same
key, not a second one nobody has the secret of: with a request id, the key's id and secret are
derived from it under the master key (HMAC-SHA256; every node has the same master key, so a
retry reaching another node before the first entry was pushed there derives the same entry,
and the catalog's merge keeps one). The secret still exists only wrapped in the catalog and in
the reply; deriving it needs the master key, which opens the wrapped copies anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import HdsdError, InvalidRequest, NotFound, RequestIdConflict
from .._packing import packb
from ..catalog import S3_ROLES, Catalog, S3KeyEntry, unwrap_secret, wrap_secret
from ..cluster import HybridClock

__all__ = ["S3KeyRecord", "S3Keys", "new_access_key_id"]

log = logging.getLogger("hdsd.s3keys")

_ID_PREFIX = "HDSD"


@dataclass(frozen=True, slots=True)
class S3KeyRecord:
    """A live access key as the gateway needs it (it satisfies
    :class:`hdsd.s3.CredentialRecord`)."""

    access_key_id: str
    secret: str = field(repr=False)
    tenant: str
    role: str


def new_access_key_id() -> str:
    """20 characters A-Z 2-7 like AWS's (``HDSD`` + 80 random bits in base32): unguessable
    enough that an id says nothing, and the secret does the rest."""
    return _ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


def new_secret() -> str:
    """40 characters of base64 (240 bits), the shape of an AWS secret access key."""
    return base64.b64encode(secrets.token_bytes(30)).decode()


class S3Keys:
    """The node's view of S3 access keys; calling it is the gateway's credential lookup."""

    def __init__(self, catalog: Catalog, master: bytes, clock: HybridClock,
                 tenant_usable: Callable[[str], bool]) -> None:
        self._catalog = catalog
        self._master = master
        self._clock = clock
        self._tenant_usable = tenant_usable
        self._cache: dict[str, tuple[S3KeyEntry, S3KeyRecord]] = {}

    def __call__(self, access_key_id: str) -> S3KeyRecord | None:
        """The live key of this id with its secret; None if unknown, revoked, or of a tenant
        that is shredded or unknown here. One dict lookup when cached."""
        entry = self._catalog.s3_key(access_key_id)
        if entry is None or entry.is_revoked or not self._tenant_usable(entry.tenant):
            self._cache.pop(access_key_id, None)
            return None
        cached = self._cache.get(access_key_id)
        if cached is not None and cached[0] is entry:
            return cached[1]
        try:
            secret = unwrap_secret(self._master, entry.access_key_id, entry.tenant, entry.role,
                                   entry.wrapped)
        except HdsdError as exc:  # validate() refuses such entries; say so if one slips by
            log.error("event=s3_key_unusable access_key_id=%s error=%s", access_key_id, exc)
            return None
        record = S3KeyRecord(access_key_id=entry.access_key_id, secret=secret,
                             tenant=entry.tenant, role=entry.role)
        self._cache[access_key_id] = (entry, record)
        return record

    def create(self, tenant: str, role: str, by: str,
               request_id: bytes = b"") -> tuple[S3KeyEntry, str, bool]:
        """A new key's catalog entry (to apply and push), its secret (to show once), and
        whether *request_id* had made it already (a retry: the same entry and secret, to push
        again). :class:`RequestIdConflict` if that id made a key of another tenant or role,
        or one revoked since."""
        if role not in S3_ROLES:
            raise InvalidRequest(f"role {role!r} must be one of {', '.join(S3_ROLES)}")
        if request_id:
            akid, secret = self._derived(tenant, role, request_id)
            known = self._catalog.s3_key(akid)
            if known is not None:
                if (known.tenant, known.role) != (tenant, role) or known.is_revoked:
                    why = "was revoked since" if known.is_revoked else \
                        f"made a key of {known.tenant} acting as {known.role}"
                    raise RequestIdConflict(f"request id already used: it {why}; nothing was "
                                            "created (use a fresh request id for a new key)")
                return known, secret, True
        else:
            akid = new_access_key_id()
            while self._catalog.s3_key(akid) is not None:  # 80 random bits: never, but cheap
                akid = new_access_key_id()
            secret = new_secret()
        entry = S3KeyEntry(access_key_id=akid, tenant=tenant, role=role,
                           wrapped=wrap_secret(self._master, akid, tenant, role, secret),
                           created=self._clock.now(), by=by)
        return entry, secret, False

    def _derived(self, tenant: str, role: str, request_id: bytes) -> tuple[str, str]:
        """The id (from tenant and request id) and secret (from tenant, role and request id)
        a request id makes, the same on every node (keyed by the master key)."""
        def mac(label: str, *parts: str | bytes) -> bytes:
            return hmac.new(self._master, packb(["hdsd-s3-key-v1", label, *parts]),
                            hashlib.sha256).digest()
        akid = _ID_PREFIX + base64.b32encode(mac("id", tenant, request_id)[:10]).decode()
        secret = base64.b64encode(mac("secret", tenant, role, request_id)[:30]).decode()
        return akid, secret

    def revoke(self, access_key_id: str, by: str) -> tuple[S3KeyEntry, bool]:
        """The revocation entry of a known key (to apply and push), and whether it was
        revoked already; :class:`NotFound` for an id this node does not know."""
        entry = self._catalog.s3_key(access_key_id)
        if entry is None:
            raise NotFound(f"no S3 access key {access_key_id} in this cluster")
        if entry.is_revoked:
            return entry, True
        return S3KeyEntry(access_key_id=entry.access_key_id, tenant=entry.tenant,
                          role=entry.role, wrapped=b"", created=entry.created, by=entry.by,
                          revoked=self._clock.now(), revoked_by=by), False

    def check_entry(self, entry: S3KeyEntry) -> None:
        """:class:`ConfigError` if this node's master key cannot open a live entry's secret
        (refused before it enters the catalog, like a tenant's keys)."""
        if not entry.is_revoked:
            unwrap_secret(self._master, entry.access_key_id, entry.tenant, entry.role,
                          entry.wrapped)
