"""Revoked certificates on one node: refused at the handshake, and cut when already connected.

The catalog holds the revoked serials (:class:`~hdsd.catalog.RevokedEntry`, a grow-only set that
converges like the rest of the catalog). This module is what the node does with them:

* **At every handshake** the peer's certificate serial is looked up (one dict lookup) before the
  TLS verdict byte: a revoked certificate gets the ``revoked`` verdict, the client sees
  :class:`CertificateRevoked`, and the refusal goes to the node's refused-connection path
  (``refused``: audited with the certificate's identity and source address, counted per
  interval like every refused connection, so a stolen certificate hammering the node cannot
  grow the audit log). Node certificates are checked the same way, and a
  node dialling a peer checks the peer's certificate too (:class:`~hdsd.peers.PeerPool`).
* **Live sessions** are registered by serial while they run (:class:`LiveSessions`); when a
  revocation is applied — through this node, by a push from another node, or by the periodic
  sync — the matching sessions are cancelled at once: their requests stop, the client gets a
  ``Goodbye`` (``certificate_revoked``), and the cut is an audit record. A session registered
  just after a revocation slipped past its handshake check is cut on registration.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from .._errors import CertificateRevoked, HdsdError
from ..audit import AuditLog, peer_address
from ..transport import Identity, WireSession
from ..wire import Goodbye

__all__ = ["LiveSessions"]

log = logging.getLogger("hdsd.node")


@dataclass(eq=False)
class _Live:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cut: bool = False


class LiveSessions:
    """The node's open sessions by certificate serial, and the revocation check."""

    def __init__(self, audit: AuditLog, is_revoked: Callable[[str], bool],
                 refused: Callable[[str, Identity, HdsdError], object]) -> None:
        self._audit = audit
        self._is_revoked = is_revoked
        self._refused = refused  # (peer, identity, error): log and audit a refused connection
        self._by_serial: dict[str, set[_Live]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_serial.values())

    def refuse(self, ident: Identity, peer: str) -> bool:
        """The handshake's question: is this certificate revoked? If so, report the refusal
        with who it was (the caller refuses the connection)."""
        if not self._is_revoked(ident.serial_hex):
            return False
        log.debug("event=revoked_certificate_refused peer=%s kind=%s identity=%s serial=%s",
                  peer, ident.kind, ident.name, ident.serial_hex)
        self._refused(peer, ident, CertificateRevoked(
            f"{ident.kind} {ident.name!r} presented a revoked certificate "
            f"(serial {ident.serial_hex})"))
        return True

    @asynccontextmanager
    async def track(self, ident: Identity, session: WireSession) -> AsyncIterator[None]:
        """Run a session's body as a live session of its certificate: cancelled (and told
        why) if the certificate is revoked meanwhile."""
        live = _Live()
        serial = ident.serial_hex
        self._by_serial.setdefault(serial, set()).add(live)
        try:
            with live.scope:
                if self._is_revoked(serial):  # revoked between the handshake and now
                    self._cut(live)
                yield
        finally:
            lives = self._by_serial.get(serial)
            if lives is not None:
                lives.discard(live)
                if not lives:
                    del self._by_serial[serial]
        if live.cut:
            peer = peer_address(session)
            log.warning("event=revoked_session_closed peer=%s kind=%s identity=%s serial=%s",
                        peer, ident.kind, ident.name, serial)
            self._audit.record(ident.name, ident.role or "", ident.tenant or "", "disconnect",
                               "", f"serial:{serial}", "", 0, 0, CertificateRevoked.code, peer)
            with trio.move_on_after(2):
                try:
                    await session.send(Goodbye(code=CertificateRevoked.code,
                                               message=f"certificate {serial} was revoked"))
                except HdsdError:
                    pass  # the connection is gone already: nothing to tell

    def cut(self, serials: set[str]) -> int:
        """Close every live session of these serials now; return how many."""
        n = 0
        for serial in serials:
            for live in list(self._by_serial.get(serial, ())):
                self._cut(live)
                n += 1
        return n

    @staticmethod
    def _cut(live: _Live) -> None:
        live.cut = True
        live.scope.cancel()
