"""Connection slots: who may hold how many of the node's connections.

A connection goes through two phases, each with its own pool, so that no crowd of one kind can
lock out another:

* **handshake** — from accept until both Hellos crossed (TLS, the certificate's identity, the
  Hello and its ``cluster_id``). Nobody is authenticated yet, so the pool is small
  (``max_handshakes``), each source address may hold only ``max_handshakes_per_source`` of it,
  and the whole phase has a short deadline (``handshake_timeout_s``): 1,000 silent TCP
  connections from one host cost at most a few slots for a few seconds.
* **session** — an authenticated connection. Client sessions share ``max_connections``, capped
  per identity (``max_sessions_per_identity``) and per tenant (``max_sessions_per_tenant``);
  node certificates (replication, repair, audit shipping) have slots of their own
  (``peer_slots``), so no client load can cut replication. A client session with nothing in
  flight and nothing received for ``idle_timeout_s`` is closed with a Goodbye (the client
  library reconnects on its next request).

Refusals are counted by reason (shown in ``status`` and the metrics) and audited, aggregated per
source (see :mod:`hdsd.audit._refusals`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._errors import TooManyConnections
from ..transport import Identity

if TYPE_CHECKING:
    from ._config import NodeConfig

__all__ = ["ConnectionSlots", "SlotsFull"]


class SlotsFull(TooManyConnections):
    """No slot for this connection now; *reason* names the pool (status, audit)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionSlots:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.handshakes = 0
        self._by_source: Counter[str] = Counter()
        self.clients = 0
        self.peers = 0
        self._by_identity: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.idle_closed = 0

    @contextmanager
    def handshake(self, source: str) -> Iterator[None]:
        """Hold a handshake slot; :class:`SlotsFull` if the pool or this source's share is
        full."""
        cfg = self.config
        if self.handshakes >= cfg.max_handshakes:
            self._refuse("handshakes", f"{cfg.max_handshakes} handshakes in progress")
        if self._by_source[source] >= cfg.max_handshakes_per_source:
            self._refuse("handshakes_per_source", f"{cfg.max_handshakes_per_source} "
                         f"handshakes in progress from {source}")
        self.handshakes += 1
        self._by_source[source] += 1
        try:
            yield
        finally:
            self.handshakes -= 1
            self._by_source[source] -= 1
            if not self._by_source[source]:
                del self._by_source[source]

    @contextmanager
    def session(self, ident: Identity) -> Iterator[None]:
        """Hold a session slot for *ident*; :class:`SlotsFull` if its pool or share is full."""
        cfg = self.config
        if ident.kind == "node":
            if self.peers >= cfg.peer_slots:
                self._refuse("peer_slots", f"{cfg.peer_slots} peer sessions open")
            self.peers += 1
            try:
                yield
            finally:
                self.peers -= 1
            return
        who, tenant = f"{ident.name}@{ident.tenant}", ident.tenant or ""
        if self.clients >= cfg.max_connections:
            self._refuse("sessions", f"{cfg.max_connections} client sessions open")
        if self._by_identity[who] >= cfg.max_sessions_per_identity:
            self._refuse("sessions_per_identity", f"{cfg.max_sessions_per_identity} sessions "
                         f"open for {who}")
        if self._by_tenant[tenant] >= cfg.max_sessions_per_tenant:
            self._refuse("sessions_per_tenant", f"{cfg.max_sessions_per_tenant} sessions open "
                         f"for tenant {tenant}")
        self.clients += 1
        self._by_identity[who] += 1
        self._by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.clients -= 1
            for counter, k in ((self._by_identity, who), (self._by_tenant, tenant)):
                counter[k] -= 1
                if not counter[k]:
                    del counter[k]

    def _refuse(self, reason: str, what: str) -> None:
        self.refused[reason] += 1
        raise SlotsFull(f"node busy: {what}; retry later", reason)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "handshakes": {"open": self.handshakes, "max": cfg.max_handshakes,
                           "max_per_source": cfg.max_handshakes_per_source,
                           "timeout_s": cfg.handshake_timeout_s},
            "client_sessions": {"open": self.clients, "max": cfg.max_connections,
                                "max_per_identity": cfg.max_sessions_per_identity,
                                "max_per_tenant": cfg.max_sessions_per_tenant,
                                "idle_timeout_s": cfg.idle_timeout_s},
            "peer_sessions": {"open": self.peers, "max": cfg.peer_slots},
            "requests": {"max_per_connection": cfg.max_requests_per_connection,
                         "max_in_flight": cfg.max_requests_in_flight,
                         "max_unsent_mib": cfg.max_unsent_mib,
                         "max_body_mib_per_connection": cfg.max_body_mib_per_connection,
                         "min_upload_rate_kib_s": cfg.min_upload_rate_kib_s},
            "refused": dict(sorted(self.refused.items())),
            "idle_closed": self.idle_closed,
        }
