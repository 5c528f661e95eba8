"""The one error hierarchy of hdsd.

Every error a user, an operator or a peer can meet is an :class:`HdsdError`. Each class names
the condition, and its message says what happened and what to do. Each class has:

* ``code`` — a stable string that travels in wire error frames, so a client raises the same
  class the node raised (see :func:`error_class_for_code`);
* ``exit_code`` — what the CLI exits with when this error ends a command (one line, no
  traceback).

Exit codes by class: 1 generic, 2 usage/config, 3 not found, 4 permission/authentication,
5 integrity/corruption, 6 unavailable (quorum, timeout, peer down), 7 storage failure, 8 over quota,
9 request id reused for another request, 12 tenant not confirmed (its creation is pending, or
lost to another creation of the same name). `hdsd status` uses 10 and 11 for its own verdicts.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ArchiveError",
    "AuditChainBroken",
    "AuditTampered",
    "AuthenticationFailed",
    "CertificateRevoked",
    "ConfigError",
    "ConnectionLost",
    "CorruptLogError",
    "DiskFullError",
    "HdsdError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidRequest",
    "LayoutMismatch",
    "LegalHold",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "QuorumNotReached",
    "QuotaExceeded",
    "RequestIdConflict",
    "RequestTimeout",
    "RetentionLocked",
    "StoreClosedError",
    "StoreFailedError",
    "StoreInUse",
    "TenantConflict",
    "TenantPending",
    "TenantShredded",
    "TooManyConnections",
    "Unavailable",
    "WrongRole",
    "error_class_for_code",
]


class HdsdError(Exception):
    """Base of every hdsd error."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(HdsdError):
    """A configuration file, profile or command-line value is invalid; fix it and retry."""

    code = "config"
    exit_code = 2


class InvalidRequest(HdsdError):
    """The request is malformed (bad bucket or key name, bad range...); it was not applied."""

    code = "invalid_request"
    exit_code = 2


class InvalidArgument(InvalidRequest, TypeError):
    """A client call got an argument of the wrong kind (a str where bytes or a path belongs);
    nothing was sent. Also a :class:`TypeError`, which is what Python code expects for it."""

    code = "invalid_argument"


class NotFound(HdsdError):
    """The bucket, key or version does not exist (or is not visible to this identity)."""

    code = "not_found"
    exit_code = 3


class PermissionDenied(HdsdError):
    """The identity is known but its role does not allow this operation."""

    code = "permission_denied"
    exit_code = 4


class AuthenticationFailed(HdsdError):
    """The peer could not be authenticated (TLS handshake, unknown CA, wrong certificate kind)."""

    code = "authentication_failed"
    exit_code = 4


class CertificateRevoked(AuthenticationFailed):
    """The certificate verified but was revoked (``hdsd cert revoke``, or replaced by a re-issue
    or a renewal): the node refuses it at the handshake and cuts its open sessions."""

    code = "certificate_revoked"
    exit_code = 4


class ProtocolError(HdsdError):
    """The peer sent bytes that break the wire protocol; the connection is closed."""

    code = "protocol"
    exit_code = 1


class IntegrityError(HdsdError):
    """Stored or received data failed its checksum, AEAD tag or content-id check."""

    code = "integrity"
    exit_code = 5


class Unavailable(HdsdError):
    """The service cannot complete the request now; it is safe to retry with the same request id."""

    code = "unavailable"
    exit_code = 6


class ConnectionLost(Unavailable):
    """The connection to the node or peer broke; retry with the same request id."""

    code = "connection_lost"


class RequestTimeout(Unavailable):
    """The request did not complete in time; retry with the same request id."""

    code = "timeout"


class TooManyConnections(Unavailable):
    """The node has no connection slot for us now (its pools, or our identity's or tenant's
    share, are full); retry later or on another node."""

    code = "too_many_connections"


class QuorumNotReached(Unavailable):
    """The write policy could not be met in time; nothing was acknowledged. Retry with the same
    request id, or degrade the site explicitly if the other site is lost."""

    code = "quorum_not_reached"


class LayoutMismatch(HdsdError):
    """Two nodes disagree on the cluster layout (sites, nodes, replicas): they refuse to mix
    rather than place data in the wrong nodes. Deploy the same [[sites]] everywhere."""

    code = "layout_mismatch"
    exit_code = 2


class StoreError(HdsdError):
    """Base of local storage failures."""

    code = "store"
    exit_code = 7


class CorruptLogError(StoreError):
    """A log record before the tail failed its checksum: the log is damaged at a known place.

    It is never skipped in silence; repair the range from the other site (``hdsd repair``).
    """

    code = "corrupt_log"
    exit_code = 5

    def __init__(self, message: str, *, segment: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.segment = segment
        self.offset = offset


class StoreClosedError(StoreError):
    """The store was closed; no more operations are accepted."""

    code = "store_closed"


class StoreFailedError(StoreError):
    """An fsync or write failed: the store stopped for good (fail-stop) and acknowledges nothing
    more. Restart the node after checking the disk; recovery replays what was durable."""

    code = "store_failed"


class StoreInUse(StoreError):
    """Another process (another ``hdsd serve``) has this store open: a start-up mistake, so
    the CLI exits 2 like any configuration error; the running process is not disturbed."""

    code = "store_in_use"
    exit_code = 2


class DiskFullError(StoreError):
    """No space left on the data disk; the write was refused and nothing was acknowledged."""

    code = "disk_full"


class AuditTampered(IntegrityError):
    """An audit log failed verification: a record was edited, deleted, reordered or truncated, or
    a checkpoint signature is wrong. ``seq`` names the first broken record."""

    code = "audit_tampered"

    def __init__(self, message: str, *, seq: int = 0, segment: str = "") -> None:
        super().__init__(message)
        self.seq = seq
        self.segment = segment


class AuditChainBroken(IntegrityError):
    """A shipped batch of audit records does not continue the copy's chain (gap, fork or
    different signing key); it was refused and nothing was stored."""

    code = "audit_chain_broken"


class ArchiveError(IntegrityError):
    """An export archive is damaged, truncated or not an hdsd export; the message names the
    entry. Nothing after that entry was imported, and the import did not report success."""

    code = "archive"


class QuotaExceeded(HdsdError):
    """The put would take the tenant over its quota; nothing was stored. Delete data or ask
    the operator to raise the quota (``hdsd tenant create NAME --quota BYTES`` again)."""

    code = "quota_exceeded"
    exit_code = 8


class RetentionLocked(HdsdError):
    """The bucket's retention lock (WORM) forbids deleting or overwriting this key yet, or
    purging this version, for every role; also raised when asked to shorten a retention
    period (it only grows)."""

    code = "retention_locked"
    exit_code = 4


class LegalHold(HdsdError):
    """The key is under legal hold: no deletion, overwrite or purge of any of its versions
    until an admin clears the hold."""

    code = "legal_hold"
    exit_code = 4


class TenantShredded(PermissionDenied):
    """The tenant was crypto-shredded: its keys are destroyed and its data unreadable forever.

    A :class:`PermissionDenied`, so code that skips tenants without keys (scrub) skips it too."""

    code = "tenant_shredded"
    exit_code = 4


class TenantPending(HdsdError):
    """The tenant's creation is not confirmed yet: not every node of both sites has
    acknowledged holding the same keys, so nothing may be written (or read) under them. The
    message names the creation, the node that made it and where it waits. It ends when the
    creation is confirmed (``hdsd tenant create --resume NAME``) or abandoned (``hdsd tenant
    abandon NAME``); not retried by the clients, since it may last until a site is back."""

    code = "tenant_pending"
    exit_code = 12


class TenantConflict(HdsdError):
    """Another creation of the same tenant name won (or the creation was confirmed when an
    abandon was asked): this creation can never be confirmed, and nothing was ever written
    under its keys. The message names the creation that holds the name."""

    code = "tenant_conflict"
    exit_code = 12


class WrongRole(HdsdError):
    """The request was sent to a node whose role does not serve it: a backup node stores
    replicated data and serves restores (reads) but never coordinates a client write. Send
    the write to a storage node (the message names the site's)."""

    code = "wrong_role"
    exit_code = 4


class RequestIdConflict(HdsdError):
    """The request id was already used by a *different* request (another key, bucket,
    operation or content). A request id names one request: nothing was written. Use a fresh
    request id for a new request; reuse one only to retry the very same request."""

    code = "request_id_conflict"
    exit_code = 9


def _all_subclasses(cls: type[HdsdError]) -> list[type[HdsdError]]:
    out: list[type[HdsdError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_class_for_code(code: str) -> type[HdsdError]:
    """The error class whose ``code`` is *code*; :class:`HdsdError` for an unknown code.

    Looked up at call time so that subclasses defined in other modules are found too.
    """
    for cls in _all_subclasses(HdsdError):
        if cls.code == code:
            return cls
    return HdsdError
