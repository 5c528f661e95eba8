"""What the node's request entry point needs to write one audit record per client request:
a session wrapper that notes the reply and the bytes moved, and the record itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..transport import Identity, WireSession
from ..wire import (
    CertRevoke,
    Data,
    GetStart,
    Message,
    PutStart,
    Reply,
    S3KeyCreate,
    S3KeyRevoke,
)

if TYPE_CHECKING:
    from ._log import AuditLog

__all__ = ["ObservedSession", "audit_item", "audit_put", "audit_request", "peer_address"]


class ObservedSession:
    """Stands in for a request's :class:`WireSession` (everything is forwarded) and notes what
    the audit record needs: the reply's info map, upload bytes consumed, download bytes sent.

    Handlers keep taking a ``WireSession``: :meth:`as_session` is a typed view of this proxy.
    """

    __slots__ = ("_session", "bytes_in", "bytes_out", "info")

    def __init__(self, session: WireSession) -> None:
        self._session = session
        self.info: dict[str, Any] | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def as_session(self) -> WireSession:
        return cast(WireSession, self)

    async def send(self, msg: Message) -> None:
        if type(msg) is Reply:
            self.info = msg.body
        elif type(msg) is GetStart:
            self.info = msg.info
        await self._session.send(msg)

    async def send_many(self, msgs: Sequence[Message]) -> None:
        for msg in msgs:
            if type(msg) is Reply:
                self.info = msg.body
            elif type(msg) is GetStart:
                self.info = msg.info
            elif type(msg) is Data:
                self.bytes_out += len(msg.data)
        await self._session.send_many(msgs)

    async def send_body(self, rid: int, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        await self._session.send_body(rid, data)

    async def consumed(self, rid: int, nbytes: int) -> None:
        self.bytes_in += nbytes
        await self._session.consumed(rid, nbytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def peer_address(session: WireSession) -> str:
    """``host:port`` of the client, or ``?`` when the socket cannot tell."""
    return session.peer_address()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# Requests whose `key` field names a certificate serial or an S3 access key, never an object.
_NAMELESS = (CertRevoke, S3KeyCreate, S3KeyRevoke)


def _sealed(audit: AuditLog, owner: str, bucket: str, key: str) -> tuple[str, str]:
    """Names may identify a patient: sealed under the key of the tenant they belong to (see
    ._names), when the log seals names."""
    if audit.seal_names is None:
        return bucket, key
    try:
        return audit.seal_names(owner, bucket, key)
    except Exception:  # never raise from here; but never record the names in clear
        return "sealed:-", ""


def audit_item(audit: AuditLog, ident: Identity, bucket: str, key: str, version: str,
               bytes_out: int, outcome: str, peer: str, op: str = "GetMany") -> None:
    """Queue the record of one object read by a bulk download (``GetMany``): who read which
    version, how many of its bytes were sent, and how it ended (never blocks, never raises).
    The request itself gets its own record from :func:`audit_request`. *op*
    ``GetManySha256``: the node read the version to hash it, only the digest left."""
    bucket, key = _sealed(audit, ident.tenant or "", bucket, key)
    audit.record(
        identity=ident.name, role=ident.role or "", tenant=ident.tenant or "", op=op,
        bucket=bucket, key=key, version=version, bytes_in=0, bytes_out=bytes_out,
        outcome=outcome, peer=peer)


def audit_put(audit: AuditLog, ident: Identity, msg: PutStart, info: dict[str, Any] | None,
              bytes_in: int, bytes_out: int, outcome: str, peer: str) -> None:
    """:func:`audit_request` of a put, from its reply's *info* and the bytes it moved: the
    most frequent request, its fields known, so no lookups by name (a dozen Python calls less
    on every put); a group of small puts (``node._handlers.put_group``) calls it without an
    :class:`ObservedSession` per put. The same record as the general path."""
    size = version = None
    if info is not None:
        size, version = info.get("size"), info.get("version")
    if outcome == "ok" and type(size) is int and size > bytes_in:
        bytes_in = size  # a small put arrives whole, without credit
    bucket, key = _sealed(audit, ident.tenant or "", msg.bucket, msg.key)
    audit.record(
        identity=ident.name, role=ident.role or "", tenant=ident.tenant or "",
        op="PutStart", bucket=bucket, key=key,
        version=version if type(version) is str else "", bytes_in=bytes_in,
        bytes_out=bytes_out, outcome=outcome, peer=peer)


def audit_request(audit: AuditLog, ident: Identity, msg: Message, observed: ObservedSession,
                  outcome: str, peer: str) -> None:
    """Queue the record of one finished client request (never blocks, never raises)."""
    if type(msg) is PutStart:
        audit_put(audit, ident, msg, observed.info, observed.bytes_in, observed.bytes_out,
                  outcome, peer)
        return
    info = observed.info or {}
    bytes_in = observed.bytes_in
    key = _text(getattr(msg, "key", None) or getattr(msg, "prefix", ""))
    if type(msg) is CertRevoke:  # what was revoked: the serial (the certificate's, if given)
        key = f"serial:{_text(info.get('serial')) or msg.serial or '?'}"
    elif type(msg) is S3KeyCreate:  # which key was made (never its secret), for which tenant
        key = f"s3key:{_text(info.get('access_key_id')) or '?'} tenant:{msg.tenant} " \
              f"role:{msg.role}"
    elif type(msg) is S3KeyRevoke:
        key = f"s3key:{msg.access_key_id}"
    bucket = _text(getattr(msg, "bucket", ""))
    if type(msg) not in _NAMELESS:
        # The request's own `tenant` when it names one (an operator setting a hold on a
        # tenant's key), so that shredding that tenant makes its names unreadable too.
        owner = _text(getattr(msg, "tenant", "")) or ident.tenant or ""
        bucket, key = _sealed(audit, owner, bucket, key)
    audit.record(
        identity=ident.name, role=ident.role or "", tenant=ident.tenant or "",
        op=type(msg).__name__, bucket=bucket, key=key,
        version=_text(info.get("version") or getattr(msg, "version", "")),
        bytes_in=bytes_in, bytes_out=observed.bytes_out, outcome=outcome, peer=peer)
