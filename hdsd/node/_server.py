"""The node: a trio server that accepts mutually authenticated clients and serves requests.

Structure (every task lives in a nursery): ``serve_node`` opens the store and the listeners, and
runs one task per connection; a connection runs one reader task (the :class:`WireSession`) and
one task per in-flight request (:mod:`._handlers`).

Shutdown (``Node.shutdown``, wired to SIGTERM/SIGINT by the CLI): stop accepting, refuse new
requests with ``Unavailable``, let in-flight requests finish (up to ``shutdown_grace_s``), close
the connections, then close the store — which flushes and syncs the log. A second signal cancels
everything at once; the log's recovery makes that safe too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from .._errors import (
    AuthenticationFailed,
    HdsdError,
    ProtocolError,
    Unavailable,
)
from .._meta import __version__
from ..audit import AuditCopies, AuditLog, AuditSettings, AuditShipper
from ..cluster import HybridClock
from ..pipeline import ChunkCodec
from ..repair import Maintenance
from ..replication import HintStore, ModeState, PeerDoubts, PeerPool, Replicator
from ..store import Store, Version
from ..transport import (
    Identity,
    WireSession,
    client_context,
    handshake_and_identify,
    listener_port,
    open_tls_listeners,
    server_context,
)
from ..wire import (
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    GetRequest,
    Goodbye,
    Hello,
    Message,
    PutStart,
    Role,
)
from ._config import NodeConfig
from ._handlers import handle_request
from ._health import health_status
from ._keyring import KEYRING_FILE, Keyring
from ._masterkey import check_master, load_master
from ._metrics import NodeMetrics, serve_metrics
from ._reads import ReadPaths
from ._tenancy import Tenancy

__all__ = ["Node", "serve_node"]

log = logging.getLogger("hdsd.node")

_HANDSHAKE_TIMEOUT = 10.0


class Node(ReadPaths):
    """The running state of one node; create it with :func:`serve_node`."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        master = load_master(config)
        check_master(config, master)  # a key of another cluster: refused before anything
        self.keyring = Keyring(config.data_dir / KEYRING_FILE, master)
        self.clock = HybridClock(floor=store.max_hlc())
        self._codecs: dict[str, ChunkCodec] = {}
        self.tenancy = Tenancy(config.data_dir, master, self.keyring, self.clock,
                               operator_tenant=config.operator_tenant,
                               evict=self._forget_tenant)
        self.layout = config.layout()
        self.role = self.layout.node(config.name).role  # "storage" or "backup" (see _roles)
        self.hints = HintStore(config.data_dir / "hints.sqlite")
        self.mode = ModeState(config.data_dir / "site-mode.json", site=config.site)
        # Peers an anti-entropy round must compare before the live RPO may read 0.
        self.doubts = PeerDoubts((n.name for n in self.layout.nodes if n.name != config.name),
                                 config.data_dir / "peers-in-doubt.json")
        self.peers = PeerPool(name=config.name, cluster_id=config.cluster_id, layout=self.layout,
                              ssl_context=client_context(config.cert, config.key, config.ca),
                              on_link=self._peer_link_changed)
        self.replicator = Replicator(
            name=config.name, site=config.site, layout=self.layout, store=store,
            peers=self.peers, hints=self.hints, mode=self.mode, policy=config.write_policy,
            on_peer_site_loss=config.on_peer_site_loss, timeout=config.write_timeout_s,
            plan_of=self.tenancy.plan, doubts=self.doubts)
        self.maintenance = Maintenance(
            name=config.name, layout=self.layout, store=store, peers=self.peers,
            snapshot=config.data_dir / "merkle-trees.bin", observe_hlc=self.clock.observe,
            open_chunk=self._verify_chunk, repair_interval_s=config.repair_interval_s,
            repair_rate_mib_s=config.repair_rate_mib_s,
            scrub_interval_s=config.scrub_interval_h * 3600,
            scrub_rate_mib_s=config.scrub_rate_mib_s, timeout=config.write_timeout_s,
            salvaged=store.statistics().salvaged, plan_of=self.tenancy.plan,
            dead_tenants=self._shredded, doubts=self.doubts)
        self.started = time.time()
        self.port = config.port
        self._requests_in_flight: dict[tuple[str, bytes], trio.Event] = {}
        self._active_requests = 0
        self._idle = trio.Event()
        self._idle.set()
        self._stopping = False
        self._stop_accepting = trio.CancelScope()
        self._connections = 0
        self.metrics = NodeMetrics(self)
        self.metrics_port: int | None = None  # bound port of [metrics] address, once serving
        # Last: the audit log starts a thread, closed by serve_node (see close_audit).
        self.audit = AuditLog(config.data_dir / "audit", config.name, AuditSettings(
            checkpoint_records=config.audit_checkpoint_records,
            checkpoint_s=config.audit_checkpoint_s, retention_days=config.audit_retention_days,
            segment_bytes=config.audit_segment_mib << 20,
            commit_interval_s=config.audit_commit_ms / 1000))
        self.audit_copies = AuditCopies(config.data_dir / "audit",
                                        segment_bytes=config.audit_segment_mib << 20,
                                        retention_days=config.audit_retention_days)
        self.audit_shipper = AuditShipper(self.audit, self.peers, self.layout, site=config.site,
                                          timeout=config.write_timeout_s)

    # -- pieces the handlers use -----------------------------------------------------------
    def codec(self, tenant: str) -> ChunkCodec:
        codec = self._codecs.get(tenant)
        if codec is None:
            keys = self.tenancy.keys(tenant)  # PermissionDenied, TenantShredded
            codec = ChunkCodec(keys, compression_level=self.config.compression_level)
            self._codecs[tenant] = codec
        return codec

    def _forget_tenant(self, tenant: str) -> None:
        """A tenant was shredded: drop its codec, and reclaim its log space in the background
        (its records are garbage now that no key can open them)."""
        self._codecs.pop(tenant, None)
        maintenance = getattr(self, "maintenance", None)  # None while the node is built
        if maintenance is not None:
            maintenance.request_compaction()

    def _peer_link_changed(self, peer: str, up: bool) -> None:
        """A link to *peer* broke or came back: whatever was in flight on it may have landed
        on one side only, so compare with it (and, for a lost link, with everyone: a peer that
        went away may have been coordinating writes to the others) as soon as it answers."""
        if self._stopping:
            return
        if up:
            self.doubts.doubt([peer], "the link to it came back")
        else:
            self.doubts.doubt(None, f"the link to {peer} broke")

    def _shredded(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tenancy.catalog.tenants() if t.is_shredded)

    def _verify_chunk(self, tenant: str, chunk_id: bytes, payload: bytes) -> None:
        """Scrub's check of a sealed chunk: its AEAD tag (and content id) under the tenant's
        key; PermissionDenied if the tenant has no keys here."""
        self.codec(tenant).open(chunk_id, payload)

    @property
    def rebuilding(self) -> bool:
        """True while an emptied node pulls its data back: its store alone is not the truth."""
        return self.maintenance.rebuilding

    @property
    def checking(self) -> bool:
        """An empty store not yet compared with a peer: local misses are asked elsewhere."""
        return self.maintenance.checking

    async def read_payload(self, tenant: str, chunk_id: bytes) -> bytes:
        # A 1 MiB pread is ~0.3 ms of blocking I/O: worth a thread hop, unlike index lookups.
        return await trio.to_thread.run_sync(self.store.read_chunk, tenant, chunk_id)

    @asynccontextmanager
    async def idempotent(self, tenant: str, request_id: bytes, bucket: str,
                         key: str) -> AsyncIterator[Version | None]:
        """Serialise requests sharing a request id; yield the version it already wrote, if any.

        A client retrying after a timeout may race its own first attempt: the retry waits for the
        first to finish, then sees its result instead of writing a second version.
        """
        slot = (tenant, request_id)
        while (running := self._requests_in_flight.get(slot)) is not None:
            await running.wait()
        done = self._requests_in_flight[slot] = trio.Event()
        try:
            yield await self._find_request(tenant, request_id, bucket, key)
        finally:
            del self._requests_in_flight[slot]
            done.set()

    def status(self) -> dict[str, Any]:
        stats = self.store.statistics()
        backlog = self.replicator.backlog()
        total = self.hints.backlog()
        return {
            "mode": self.mode.describe(),
            "write_policy": self.replicator.effective_policy(),
            "configured_policy": self.config.write_policy,
            "layout": self.layout.layout_id,
            # The live RPO: hinted versions (counted) and peers in doubt (not countable until
            # a round compared them). It is 0 only when both are empty.
            "rpo": {"versions": total.versions, "bytes": total.bytes,
                    "age_s": round(max(total.age(), self.doubts.age()), 3),
                    "peers_in_doubt": self.doubts.describe(),
                    "zero": total.versions == 0 and not self.doubts.pending()},
            "peers": {name: {"site": self.layout.node(name).site, **self.peers.describe(name),
                             "backlog_versions": b.versions, "backlog_bytes": b.bytes,
                             "backlog_age_s": round(b.age(), 3)}
                      for name, b in backlog.items() if name != self.config.name},
            # Versions this node's own disk missed while the others acknowledged them.
            "self_backlog_versions": backlog[self.config.name].versions,
            "node": self.config.name,
            "site": self.config.site,
            "role": self.role,
            "cluster": self.config.cluster_id,
            "software": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "connections": self._connections,
            "requests_in_flight": self._active_requests,
            "store": {k: getattr(stats, k) for k in stats.__dataclass_fields__},
            **self._maintenance_status(),
            "audit": self.audit_shipper.describe(),
            **health_status(self),
        }

    def _maintenance_status(self) -> dict[str, Any]:
        m = self.maintenance.describe()
        return {"maintenance": m, "last_repair": m["repair"]["last"],
                "last_scrub": m["scrub"]["last"], "rebuild": m["rebuild"]}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def shutdown(self) -> None:
        """Begin a graceful stop: no new connections or requests; in-flight ones finish."""
        if not self._stopping:
            log.info("event=shutdown_begin node=%s in_flight=%d", self.config.name,
                     self._active_requests)
        self._stopping = True
        self._stop_accepting.cancel()

    async def _serve(self, task_status: trio.TaskStatus[Node]) -> None:
        ctx = server_context(self.config.cert, self.config.key, self.config.ca)
        listeners = await open_tls_listeners(self.config.host, self.config.port, ctx)
        self.port = listener_port(listeners[0])
        log.info("event=listening node=%s site=%s address=%s:%d", self.config.name,
                 self.config.site, self.config.host, self.port)
        async with trio.open_nursery() as services:
            await services.start(self.peers.run)
            await services.start(self.replicator.run)
            await services.start(self.maintenance.run)
            await services.start(self.audit_shipper.run)
            # Catch up with the other nodes' catalog (a shred missed while down) before serving.
            await services.start(partial(self.tenancy.run, self,
                                         interval=self.config.catalog_sync_s))
            if self.config.metrics_host is not None:
                await services.start(serve_metrics, self)
            await self._serve_connections(listeners, task_status)
            await self._final_audit_checkpoint()
            services.cancel_scope.cancel()
        if self._active_requests == 0:
            # Every request finished (acknowledged with its hints, or refused with them): the
            # next start need not doubt every peer.
            self.doubts.mark_clean_stop()
        self.hints.close()
        self.tenancy.close()
        log.info("event=shutdown_done node=%s", self.config.name)

    async def _final_audit_checkpoint(self) -> None:
        """Sign the log's tail and try to ship it before the links close (a graceful stop)."""
        await trio.to_thread.run_sync(self.audit.checkpoint_and_wait, 3.0)
        await self.audit_shipper.flush(3.0)

    def close_audit(self) -> None:
        """Flush the audit log, write its final checkpoint and stop its thread."""
        self.audit_copies.close()
        self.audit.close()

    async def _serve_connections(self, listeners: list[trio.SSLListener[trio.SocketStream]],
                                 task_status: trio.TaskStatus[Node]) -> None:
        async with trio.open_nursery() as connections:
            task_status.started(self)
            with self._stop_accepting:
                await trio.serve_listeners(self._handle_connection, listeners,
                                           handler_nursery=connections)
            for listener in listeners:
                await listener.aclose()
            with trio.move_on_after(self.config.shutdown_grace_s):
                await self._idle.wait()
            connections.cancel_scope.cancel()

    async def _handle_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = _peer_address(stream)
        if self._connections >= self.config.max_connections:
            log.warning("event=connection_refused peer=%s reason=max_connections", peer)
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        try:
            await self._run_connection(stream, peer)
        finally:
            self._connections -= 1
            await trio.aclose_forcefully(stream)

    async def _run_connection(self, stream: trio.SSLStream[trio.SocketStream], peer: str) -> None:
        try:
            ident = await handshake_and_identify(stream, timeout=_HANDSHAKE_TIMEOUT)
        except HdsdError as exc:
            log.info("event=handshake_refused peer=%s reason=%s", peer, exc)
            self.audit.record("?", "", "", "connect", "", "", "", 0, 0, exc.code, peer)
            return
        session = WireSession(stream, Connection(Role.SERVER))
        try:
            self._check_peer(ident)
            await session.send(Hello(protocol_version=PROTOCOL_VERSION,
                                     cluster_id=self.config.cluster_id, peer=self.config.name,
                                     window=session.conn.initial_window))
            await session.receive_hello(_HANDSHAKE_TIMEOUT)
        except HdsdError as exc:
            log.info("event=session_refused peer=%s identity=%s reason=%s", peer, ident.name, exc)
            self.audit.record(ident.name, ident.role or "", ident.tenant or "", "connect", "", "",
                              "", 0, 0, exc.code, peer)
            await _goodbye(session, exc)
            return
        log.debug("event=connected peer=%s identity=%s tenant=%s role=%s", peer, ident.name,
                  ident.tenant, ident.role)
        quiet = _no_inbox()  # shared by this connection's requests that hear nothing more
        async with trio.open_nursery() as requests:
            def on_request(msg: Message) -> None:
                rid = getattr(msg, "rid", None)
                if rid is None:
                    return
                # Only uploads (Data, End) and downloads (Cancel) hear more of their rid; the
                # others (every peer request among them) need no channel of their own.
                inbox = session.open_inbox(rid) if isinstance(msg, _STREAMING) else quiet
                requests.start_soon(self._run_request, session, ident, msg, inbox)

            try:
                await session.run_reader(on_request)
            except ProtocolError as exc:
                log.info("event=protocol_error peer=%s identity=%s reason=%s", peer, ident.name,
                         exc)
                await _goodbye(session, exc)
            except HdsdError as exc:
                log.info("event=connection_lost peer=%s reason=%s", peer, exc)
            if ident.kind == "node":
                # A peer's link to us ended: it may have crashed between our fsync of its
                # write and its hint for the other replicas.
                self._peer_link_changed(ident.name, False)
            # The client is gone: its in-flight requests have nobody to answer.
            requests.cancel_scope.cancel()

    def _check_peer(self, ident: Identity) -> None:
        if ident.cluster_id != self.config.cluster_id:
            raise AuthenticationFailed(f"certificate is for cluster {ident.cluster_id!r}, "
                                       f"this is {self.config.cluster_id!r}")
        if ident.kind == "node" and ident.name not in {n.name for n in self.layout.nodes}:
            raise AuthenticationFailed(f"node {ident.name!r} is not in this cluster's layout")

    async def _run_request(self, session: WireSession, ident: Identity, msg: Message,
                           inbox: trio.MemoryReceiveChannel[Message]) -> None:
        if self._stopping:
            session.close_inbox(msg.rid)  # type: ignore[attr-defined]
            err = Unavailable("node is shutting down; retry on another node or later")
            await session.send(ErrorReply(rid=msg.rid, code=err.code,  # type: ignore[attr-defined]
                                          message=err.message))
            return
        self._active_requests += 1
        self._idle = trio.Event() if self._active_requests == 1 else self._idle
        try:
            await handle_request(self, session, ident, msg, inbox)
        finally:
            self._active_requests -= 1
            if self._active_requests == 0:
                self._idle.set()


_STREAMING = (PutStart, GetRequest)


def _no_inbox() -> trio.MemoryReceiveChannel[Message]:
    """An inbox that never receives anything (and needs no closing)."""
    send, receive = trio.open_memory_channel[Message](0)
    send.close()
    return receive


async def _goodbye(session: WireSession, exc: HdsdError) -> None:
    with trio.move_on_after(2):
        try:
            await session.send(Goodbye(code=exc.code, message=exc.message))
        except HdsdError:
            pass


def _peer_address(stream: trio.SSLStream[trio.SocketStream]) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def serve_node(config: NodeConfig, *,
                     task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the store and serve until :meth:`Node.shutdown` (or cancellation).

    ``task_status.started(node)`` is called once listening; ``node.port`` is the bound port.
    """
    store = Store.open(config.data_dir / "store", segment_bytes=config.segment_mib << 20,
                       salvage=config.on_corrupt_log == "repair")
    for where in store.statistics().salvaged:
        log.error("event=log_damage_set_aside node=%s range=%s action=refetch_from_replicas",
                  config.name, where)
    try:
        node = Node(config, store)
        try:
            await node._serve(task_status)
        finally:
            node.close_audit()
    finally:
        store.close()
