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

import collections
import contextlib
import logging
import math
import os
import stat
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .._deadline import deadline
from .._errors import (
    AuthenticationFailed,
    CertificateRevoked,
    ConfigError,
    HdsdError,
    ProtocolError,
    StoreError,
    Unavailable,
)
from .._groups import contain
from .._meta import __version__
from ..audit import (
    AuditCopies,
    AuditLog,
    AuditSettings,
    AuditShipper,
    RefusalCounter,
    seal_audit_names,
)
from ..catalog import KEYRING_FILE, Keyring
from ..cluster import HybridClock
from ..peers import PeerPool
from ..pipeline import ChunkCodec
from ..repair import Maintenance
from ..replication import HintStore, ModeState, PeerDoubts, Replicator
from ..s3 import Endpoint, Gateway, HttpLimits, Uploads, serve_s3
from ..store import CommitTicket, Store, Version, migration_pending
from ..transport import (
    Identity,
    WireSession,
    client_context,
    handshake_and_identify,
    https_context,
    listener_port,
    open_tls_listeners,
    server_context,
)
from ..wire import (
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    FetchChunks,
    GetMany,
    GetRequest,
    Goodbye,
    Hello,
    Message,
    PutStart,
    Replicate,
    Reply,
    Role,
)
from ._budget import BodyBudget, put_reservation
from ._config import NodeConfig
from ._continuity import AuditContinuity
from ._handlers import (
    SmallWrites,
    claim_small_put,
    handle_request,
    put_group,
    small_get_now,
    small_put_now,
)
from ._health import health_status
from ._layouts import LayoutKeeper, load_record
from ._malloc import limit_arenas, memory_status, trim_every
from ._masterkey import check_master, load_master
from ._metrics import NodeMetrics, serve_metrics
from ._objects import NodeObjects
from ._peer_handlers import replicate_now
from ._reads import ReadPaths
from ._revocation import LiveSessions
from ._room import RequestRoom
from ._s3keys import S3Keys
from ._sealing import NodeSealing
from ._slots import ConnectionSlots, SlotsFull
from ._tenancy import Tenancy

__all__ = ["Node", "serve_node"]

log = logging.getLogger("hdsd.node")

# How long a new request may wait for room (per connection or node-wide) before it is refused
# as unavailable: long enough to smooth a burst, short enough that the frames queued behind it
# (a download's Credit, an upload's Data) are never held for long.
_ROOM_WAIT_S = 1.0

class Node:
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
                               evict=self._forget_tenant, on_revoke=self._cut_revoked)
        # The S3 gateway's credential lookup (hdsd.s3.CredentialLookup): secrets unwrapped on
        # first use, cached per catalog entry, so a revocation applies to the next request.
        self.s3_credentials = S3Keys(self.tenancy.catalog, master, self.clock,
                                     tenant_usable=self._tenant_has_keys)
        # The layout version this node runs (layout.json, else node.toml's [[sites]]); it
        # changes live (see ._layouts).
        record = load_record(config)
        self.layout = record.layout
        self.role = (record.node(config.name).role if record.has_node(config.name)
                     else config.role)  # "storage" or "backup" (see _roles)
        self.hints = HintStore(config.data_dir / "hints.sqlite", store.sealing)
        self.mode = ModeState(config.data_dir / "site-mode.json", site=config.site)
        # Peers an anti-entropy round must compare before the live RPO may read 0.
        # Peer sessions that delivered replicated writes (see _coordinator_gone).
        self.replicated_over: weakref.WeakSet[WireSession] = weakref.WeakSet()
        self.doubts = PeerDoubts((n.name for n in record.all_nodes() if n.name != config.name),
                                 config.data_dir / "peers-in-doubt.json")
        self.peers = PeerPool(name=config.name, cluster_id=config.cluster_id, layout=self.layout,
                              ssl_context=client_context(config.cert, config.key, config.ca),
                              request_timeout=config.write_timeout_s,
                              on_link=self._peer_link_changed, revoked=self._revoked_peer)
        self.peers.set_nodes(record.all_nodes())
        self.replicator = Replicator(
            name=config.name, site=config.site, layout=self.layout, store=store,
            peers=self.peers, hints=self.hints, mode=self.mode, policy=config.write_policy,
            on_peer_site_loss=config.on_peer_site_loss, timeout=config.write_timeout_s,
            plan_of=self.tenancy.plan, doubts=self.doubts,
            alone=lambda: self._active_requests <= 1)
        self.replicator.set_record(record)
        self.maintenance = Maintenance(
            name=config.name, layout=self.layout, store=store, peers=self.peers,
            snapshot=config.data_dir / "merkle-trees.bin", observe_hlc=self.clock.observe,
            open_chunk=self._verify_chunk, repair_interval_s=config.repair_interval_s,
            repair_rate_mib_s=config.repair_rate_mib_s,
            rebuild_rate_mib_s=config.rebuild_rate_mib_s,
            scrub_interval_s=config.scrub_interval_h * 3600,
            scrub_rate_mib_s=config.scrub_rate_mib_s,
            salvaged=store.statistics().salvaged, plan_of=self.tenancy.plan,
            dead_tenants=self._shredded, doubts=self.doubts,
            purge_grace_s=config.purge_grace_h * 3600)
        self.reads = ReadPaths(config=config, store=store, peers=self.peers,
                               replicator=self.replicator, layout=lambda: self.layout,
                               rebuilding=lambda: self.rebuilding,
                               checking=lambda: self.checking)
        self.started = time.time()
        self.port = config.port
        # Request ids being written, each with the event its holder sets when it ends: made
        # by the first request that waits for it (None until then: most never wait, and an
        # event made and set costs every put ~10 Python calls).
        self._requests_in_flight: dict[tuple[str, bytes], trio.Event | None] = {}
        self._active_requests = 0
        self.small_writes = SmallWrites()  # small puts' groups of one pass share a write
        self.request_room = RequestRoom(config.max_requests_in_flight,
                                        lambda: self._active_requests)  # see ._room
        self.budget = BodyBudget(config.max_body_mib_in_flight << 20)  # see ._budget
        # How often each bound held a connection back (status, metrics): an operator sees a
        # limit being hit before clients complain.
        self.limit_hits = {"connection_body": 0, "connection_requests": 0,
                           "connection_unsent": 0, "node_requests": 0, "refused_busy": 0}
        # Set when the last request in flight ends, made only by a graceful stop that waits
        # for that (an event made and set at every lone request's start and end costs each
        # ~3 Python calls).
        self._idle: trio.Event | None = None
        self._stopping = False
        self._stop_accepting = trio.CancelScope()
        self._connections = 0  # sessions (client and peer) past their handshake
        self.slots = ConnectionSlots(config)
        self.metrics = NodeMetrics(self)
        self.metrics_port: int | None = None  # bound port of [metrics] address, once serving
        self.s3_endpoints: list[Endpoint] = []  # bound [s3] listeners, once serving
        # Last: the audit log starts a thread, closed by serve_node (see close_audit).
        self.audit = AuditLog(config.data_dir / "audit", config.name, AuditSettings(
            checkpoint_records=config.audit_checkpoint_records,
            checkpoint_s=config.audit_checkpoint_s, retention_days=config.audit_retention_days,
            segment_bytes=config.audit_segment_mib << 20,
            commit_interval_s=config.audit_commit_ms / 1000))
        if isinstance(store.sealing, NodeSealing):  # names sealed with the tenancy's seals
            store.sealing.bind(self.tenancy.name_seal)
        seal_for = store.sealing.seal_for  # (bound above: no property call per record)
        self.audit.seal_names = lambda tenant, bucket, key: seal_audit_names(
            seal_for(tenant), tenant, bucket, key)
        self.audit_copies = AuditCopies(config.data_dir / "audit",
                                        segment_bytes=config.audit_segment_mib << 20,
                                        retention_days=config.audit_retention_days)
        self.refusals = RefusalCounter(self.audit, interval_s=config.audit_refusals_interval_s)
        self.audit_shipper = AuditShipper(self.audit, self.peers, self.layout, site=config.site)
        self.live = LiveSessions(self.audit, self.tenancy.catalog.is_revoked,
                                 refused=self._connection_refused)
        self.layouts = LayoutKeeper(self, record)
        self.audit_continuity = AuditContinuity(self)

    # -- pieces the handlers use -----------------------------------------------------------
    def _tenant_has_keys(self, tenant: str) -> bool:
        entry = self.tenancy.catalog.tenant(tenant)
        return entry is not None and entry.has_keys

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

    def _cut_revoked(self, serials: set[str]) -> None:
        """Certificates were revoked (here, by a push or by a sync): close their sessions and
        the links to peers that present them. (None while the node is built.)"""
        live: LiveSessions | None = getattr(self, "live", None)
        if live is not None:
            live.cut(serials)
        peers: PeerPool | None = getattr(self, "peers", None)
        if peers is not None:
            peers.drop_revoked(serials)

    def _revoked_peer(self, ident: Identity) -> bool:
        return self.tenancy.catalog.is_revoked(ident.serial_hex)

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
    async def idempotent(self, tenant: str, request_id: bytes, bucket: str, key: str, *,
                         retry: bool = False) -> AsyncIterator[Version | None]:
        """Serialise requests sharing a request id; yield the version it already wrote, if any
        (looked for at both sites when the client says it is retrying).

        A client retrying after a timeout may race its own first attempt: the retry waits for the
        first to finish, then sees its result instead of writing a second version.
        """
        slot = (tenant, request_id)
        while slot in self._requests_in_flight:
            running = self._requests_in_flight[slot]
            if running is None:  # the first to wait makes the event its holder will set
                running = self._requests_in_flight[slot] = trio.Event()
            await running.wait()
        self._requests_in_flight[slot] = None
        try:
            yield await self.reads.find_request(tenant, request_id, bucket, key, retry)
        finally:
            self.release_request(tenant, request_id)

    @property
    def active_requests(self) -> int:
        """Requests in flight on this node (client and peer ones)."""
        return self._active_requests

    def claim_request(self, tenant: str, request_id: bytes) -> bool:
        """Take *request_id*'s slot (see :meth:`idempotent`) if no request holds it, without
        waiting; False if one does. :meth:`release_request` when done."""
        slot = (tenant, request_id)
        if slot in self._requests_in_flight:
            return False
        self._requests_in_flight[slot] = None
        return True

    def release_request(self, tenant: str, request_id: bytes) -> None:
        """Give back a slot :meth:`claim_request` took (waking a request that waits on it)."""
        waiting = self._requests_in_flight.pop((tenant, request_id))
        if waiting is not None:
            waiting.set()

    @contextmanager
    def counted_request(self) -> Iterator[None]:
        """A request in flight (an S3 one: native ones are counted by their connection): a
        graceful stop waits for it (up to ``shutdown_grace_s``) before closing anything."""
        self._request_began()
        try:
            yield
        finally:
            self._request_done()
            self.request_room.freed()

    def _request_began(self) -> None:
        self._active_requests += 1
        # A lone request's batches are indexed once it ended, off its reply's path (see
        # hdsd.store.LogWriter.node_busy); with company, as they come.
        self.store.node_busy(self._active_requests == 1)

    def _request_done(self) -> None:
        self._active_requests -= 1
        if self._active_requests == 0 and self._idle is not None:
            self._idle.set()
        self.store.node_busy(self._active_requests == 1)

    def status(self) -> dict[str, Any]:
        stats = self.store.statistics()
        backlog = self.replicator.backlog()
        total = self.hints.backlog()
        return {
            "mode": self.mode.describe(),
            "write_policy": self.replicator.effective_policy(),
            "configured_policy": self.config.write_policy,
            "layout": self.layout.layout_id,
            "layout_record": self.layouts.describe(),
            # The live RPO: hinted versions (counted) and peers in doubt (not countable until
            # a round compared them). It is 0 only when both are empty.
            "rpo": {"versions": total.versions, "bytes": total.bytes,
                    "age_s": round(max(total.age(), self.doubts.age()), 3),
                    "peers_in_doubt": self.doubts.describe(),
                    "zero": total.versions == 0 and not self.doubts.pending()},
            "peers": {name: {"site": self.layouts.record.node(name).site,
                             **self.peers.describe(name),
                             "backlog_versions": b.versions, "backlog_bytes": b.bytes,
                             "backlog_age_s": round(b.age(), 3)}
                      for name, b in backlog.items() if name != self.config.name},
            # Versions this node's own disk missed while the others acknowledged them.
            "self_backlog_versions": (backlog[self.config.name].versions
                                      if self.config.name in backlog else 0),
            "node": self.config.name,
            "site": self.config.site,
            "role": self.role,
            "cluster": self.config.cluster_id,
            "software": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "connections": self._connections,
            "requests_in_flight": self._active_requests,
            "memory": memory_status(),
            "limits": {**self.slots.describe(), "hits": dict(self.limit_hits),
                       "body_budget": self.budget.describe(),
                       "refusals_audited": {"events": self.refusals.total,
                                            "records": self.refusals.records}},
            "store": {k: getattr(stats, k) for k in stats.__dataclass_fields__},
            **self._maintenance_status(),
            "audit": {**self.audit_shipper.describe(),
                      "continuity": self.audit_continuity.state},
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
            await services.start(self.layouts.run)
            await services.start(self.audit_continuity.run)
            await services.start(self.audit_shipper.run)
            await services.start(self.refusals.run)
            # Catch up with the other nodes' catalog (a shred missed while down) before serving.
            await services.start(partial(self.tenancy.run, self,
                                         interval=self.config.catalog_sync_s))
            if self.config.metrics_host is not None:
                await services.start(serve_metrics, self)
            if self.config.s3_https or self.config.s3_http:
                self.s3_endpoints = await services.start(self._serve_s3)
            services.start_soon(trim_every, self.config.malloc_trim_s)
            services.start_soon(self._warm_listings)  # never waited for: readiness is not
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

    async def _warm_listings(self) -> None:
        """Open the names of the largest buckets into the listing caches in a worker thread,
        once, at start (``Store.warm_listings``: bounded in names): a first listing of a
        bucket of 100k keys after a restart otherwise opens all of them while its client
        waits (seconds). Cancelled with the node's services: the thread sees the flag within
        a few hundred names and stops."""
        stop = threading.Event()

        async def flag_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flag_on_cancel)
            try:
                buckets, names = await trio.to_thread.run_sync(self.store.warm_listings,
                                                               stop.is_set)
            except HdsdError as exc:  # a listing will build its cache and report it
                log.warning("event=listing_warm_failed node=%s error=%s", self.config.name, exc)
                buckets = names = 0
            nursery.cancel_scope.cancel()
        if buckets:
            log.info("event=listing_cache_warm node=%s buckets=%d names=%d seconds=%.1f",
                     self.config.name, buckets, names, time.monotonic() - started)

    async def _serve_s3(self, task_status: trio.TaskStatus[list[Endpoint]]) -> None:
        """The S3 gateway ([s3]): HTTPS with this node's certificate, plain HTTP only where
        configured; requests go through the same object API as the native protocol."""
        cfg = self.config
        # Upload records seal their names with the store's tenant seals, as the store does.
        gateway = Gateway(NodeObjects(self), Uploads(cfg.data_dir / "s3-uploads",
                                                     cfg.s3_multipart_expire_h * 3600,
                                                     self.store.sealing.seal_for),
                          region=cfg.s3_region, lookup=self.s3_credentials,
                          domain=cfg.s3_domain)
        limits = HttpLimits(body_timeout_s=cfg.request_timeout_s,
                            idle_timeout_s=min(cfg.idle_timeout_s, 60.0),
                            head_timeout_s=cfg.request_timeout_s / 2,
                            send_timeout_s=cfg.request_timeout_s,
                            min_upload_rate_kib_s=cfg.min_upload_rate_kib_s)
        context = https_context(cfg.cert, cfg.key, cfg.ca) if cfg.s3_https else None
        await serve_s3(gateway, cfg.s3_https, cfg.s3_http, context, limits,
                       cfg.max_connections, task_status=task_status)

    async def _final_audit_checkpoint(self) -> None:
        """Sign the log's tail and try to ship it before the links close (a graceful stop)."""
        self.refusals.flush()
        await trio.to_thread.run_sync(self.audit.checkpoint_and_wait, 3.0)
        with trio.move_on_after(3.0):
            await self.audit_shipper.flush()

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
            self._idle = trio.Event()
            if not self._active_requests:
                self._idle.set()
            with trio.move_on_after(self.config.shutdown_grace_s):
                await self._idle.wait()
            connections.cancel_scope.cancel()

    async def _handle_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = _peer_address(stream)
        try:
            await self._run_connection(stream, peer)
        except BaseException as exc:
            # The connection's boundary: whatever one client did (dropped mid-upload, broke the
            # protocol with a put open) or whatever bug its requests hit ends this connection,
            # logged once with its cause, and never the node. Only cancellation (and Ctrl-C)
            # goes on up, to the scope that asked for it.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("connection_failed", peer, contained)
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            await trio.aclose_forcefully(stream)

    async def _run_connection(self, stream: trio.SSLStream[trio.SocketStream], peer: str) -> None:
        source = peer.rsplit(":", 1)[0]
        until = trio.current_time() + self.config.handshake_timeout_s
        try:
            with self.slots.handshake(source):
                ident = await self._handshake(stream, peer)
        except SlotsFull as exc:
            self._connection_refused(peer, None, exc)
            return
        if ident is None:
            return
        session = WireSession(stream, Connection(Role.SERVER))
        with ExitStack() as slot:
            try:
                self._check_peer(ident)
                # The slot before our Hello: a client without one learns why from its first
                # frame (a Goodbye), as a typed error it may retry later.
                slot.enter_context(self.slots.session(ident))
                await session.send(Hello(protocol_version=PROTOCOL_VERSION,
                                         cluster_id=self.config.cluster_id,
                                         peer=self.config.name,
                                         window=session.conn.initial_window))
                with deadline(max(0.0, until - trio.current_time()), "no handshake from the "
                              f"peer within {self.config.handshake_timeout_s:g} s"):
                    hello = await session.receive_hello()
                if hello.cluster_id != self.config.cluster_id:
                    raise AuthenticationFailed(f"Hello names cluster {hello.cluster_id!r}, "
                                               f"this is {self.config.cluster_id!r}")
            except HdsdError as exc:
                self._connection_refused(peer, ident, exc)
                await _goodbye(session, exc)
                return
            self._connections += 1
            slot.callback(self._connection_closed)
            slot.callback(self._coordinator_gone, session, ident)
            await self._serve_session(session, ident, peer)

    def _connection_closed(self) -> None:
        self._connections -= 1

    def _coordinator_gone(self, session: WireSession, ident: Identity) -> None:
        """A peer that replicated writes here over *session* is gone. If it crashed between
        our fsync and its own hint (or its disk is lost), the other replicas of those keys may
        lack what we hold, and no hint anywhere says so: doubt every peer, so a round compares
        us with each of them (a round between equal replicas costs a root exchange)."""
        if session in self.replicated_over and not self.stopping:
            self.replicated_over.discard(session)
            self.doubts.doubt(None, f"the session of {ident.name}, which replicated writes "
                                    f"here, ended")

    async def _handshake(self, stream: trio.SSLStream[trio.SocketStream],
                         peer: str) -> Identity | None:
        """TLS and the certificate's identity within handshake_timeout_s (the caller holds a
        handshake slot meanwhile); None if refused (logged, audited). The Hellos follow, by
        the same deadline, in the session's slot."""
        try:
            limit = self.config.handshake_timeout_s
            with deadline(limit, f"the TLS handshake took longer than {limit:g} s"):
                return await handshake_and_identify(
                    stream, revoked=lambda ident: self.live.refuse(ident, peer))
        except HdsdError as exc:
            if not isinstance(exc, CertificateRevoked):  # refuse() told who it was
                self._connection_refused(peer, None, exc)
            return None

    def _connection_refused(self, peer: str, ident: Identity | None, exc: HdsdError,
                            op: str = "connect") -> None:
        """Audit (aggregated per source and interval, see hdsd.audit._refusals) and log (the
        first of each kind per interval) a connection refused or ended by a protocol error."""
        reason = getattr(exc, "reason", exc.code)
        who = ident.name if ident is not None else "?"
        first = self.refusals.note(who, ident.role or "" if ident else "",
                                   ident.tenant or "" if ident else "", op, exc.code,
                                   peer.rsplit(":", 1)[0])
        if first:
            log.info("event=%s peer=%s identity=%s reason=%s detail=%s (more from this source "
                     "in the next %g s are counted, not logged)",
                     "connection_refused" if op == "connect" else "protocol_error", peer, who,
                     reason, exc, self.refusals.interval_s)

    async def _serve_session(self, session: WireSession, ident: Identity, peer: str) -> None:
        log.debug("event=connected peer=%s identity=%s tenant=%s role=%s", peer, ident.name,
                  ident.tenant, ident.role)
        quiet = _no_inbox()  # shared by this connection's requests that hear nothing more
        in_flight = [0]  # this connection's requests
        cfg = self.config
        max_body = cfg.max_body_mib_per_connection << 20
        max_unsent = cfg.max_unsent_mib << 20

        async def before_read() -> None:
            # Body bytes queued for this connection's requests and not yet stored: read no
            # more (TCP holds the client back) until they drain below the bound.
            if session.held > max_body:
                self.limit_hits["connection_body"] += 1
            while session.held > max_body and not session.closed:
                await session.wait_progress()

        # A peer (a node of the layout) is trusted with more: its requests are replication
        # of its own clients' writes, already bounded there, and no client load may hold them
        # back (the node-wide bound does not apply to them either).
        peer_link = ident.kind == "node"
        per_connection = cfg.max_requests_in_flight if peer_link else \
            cfg.max_requests_per_connection

        async def before_open(msg: Message) -> bool:
            # A new request: not while the connection has its share in flight, nor while the
            # whole node has its share (or others wait for it: they come first, see ._room),
            # nor while its client does not read what it asked for (its replies would pile up
            # here). Nothing more is read meanwhile. The first two waits are short: the frames
            # behind this request may be what the requests in flight wait for (a download's
            # Credit), so after _ROOM_WAIT_S it is refused as unavailable (retryable) and
            # reading goes on. The third lasts as long as the client does not read: that is up
            # to the client alone.
            rid = getattr(msg, "rid", None)
            counted = False  # one hit per request held back, whatever the wake-ups
            give_up: float | None = None
            room = self.request_room
            turn = False  # holding the node's room, given in turn (see ._room)
            try:
                while not session.closed:
                    node_full = not peer_link and not turn and not room.free()
                    if session.unsent > max_unsent:
                        hit, until = "connection_unsent", math.inf
                    elif in_flight[0] >= per_connection or node_full:
                        hit = "connection_requests" if in_flight[0] >= per_connection else \
                            "node_requests"
                        give_up = give_up or trio.current_time() + _ROOM_WAIT_S
                        until = give_up
                    else:
                        if isinstance(msg, PutStart) and not peer_link:  # see ._budget
                            await self.budget.take(id(msg), put_reservation(
                                msg.size, session.conn.initial_window),
                                patience=_ROOM_WAIT_S if in_flight[0] else None)
                        elif in_flight[0] == 0 and not peer_link and not self._stopping and (
                                resolved := small_get_now(self, session, ident, msg)) \
                                is not None:
                            # A lone small get, read from this node's store: answered here,
                            # by the reader, in one write — no task, so one scheduler pass
                            # fewer. Only when nothing else of the connection is in flight: a
                            # pipelining client's requests are still answered concurrently,
                            # by tasks.
                            if turn:
                                room.take()
                                turn = False
                            in_flight[0] += 1
                            await self._run_request(session, ident, msg, quiet,
                                                    request_ended, resolved)
                            return False
                        if turn:
                            room.take()
                            turn = False
                        return True
                    if turn:  # waiting for something else: the node's room goes to the next
                        room.pass_on()
                        turn = False
                    if not counted:
                        self.limit_hits[hit] += 1
                        counted = True
                    if trio.current_time() >= until and rid is not None:
                        self.limit_hits["refused_busy"] += 1
                        err = Unavailable(f"{in_flight[0]} requests in flight on this "
                                          f"connection (at most {per_connection}) or "
                                          f"{self._active_requests} on the node (at most "
                                          f"{cfg.max_requests_in_flight}); retry")
                        with contextlib.suppress(HdsdError):
                            await session.send(ErrorReply(rid=rid, code=err.code,
                                                          message=err.message))
                        return False
                    with trio.move_on_at(until):
                        if hit == "node_requests":
                            await room.wait_turn()
                            turn = True
                        else:
                            await session.wait_progress()
                return False
            finally:
                if turn:  # the connection closed (or failed) with the room in hand
                    room.pass_on()

        def request_ended() -> None:
            in_flight[0] -= 1
            session.progress()

        async def close_when_idle(reader: trio.CancelScope) -> None:
            # A client session with nothing in flight and nothing heard for idle_timeout_s
            # gives its slot back (the client library reconnects on its next request).
            idle = cfg.idle_timeout_s
            while True:
                quiet_for = time.monotonic() - session.last_activity
                if quiet_for >= idle and in_flight[0] == 0:
                    self.slots.idle_closed += 1
                    log.info("event=idle_closed peer=%s identity=%s idle_s=%.0f", peer,
                             ident.name, quiet_for)
                    await _goodbye(session, Unavailable(
                        f"idle for {quiet_for:.0f} s; reconnect when needed"), code="idle")
                    reader.cancel()
                    return
                await trio.sleep(max(idle - quiet_for, 1.0))

        # A peer's Replicates of small versions, queued to the log writer by the reader
        # (._peer_handlers.replicate_now) and acknowledged in that order by one task.
        acks: collections.deque[tuple[Replicate, CommitTicket, float]] = collections.deque()
        acks_waiting = trio.lowlevel.ParkingLot()

        # A live session of its certificate: cancelled if the certificate is revoked meanwhile.
        async with self.live.track(ident, session), trio.open_nursery() as requests:
            reader = trio.CancelScope()
            if ident.kind != "node":  # peers keep their links: replication must not wait
                requests.start_soon(close_when_idle, reader)
            else:
                requests.start_soon(self._ack_replicates, session, acks, acks_waiting,
                                    request_ended)

            # The small puts read since the last group started running: they join it (see
            # ._handlers.put_group) instead of getting a task each. One group at most is open
            # (None: none), so a slot, not a list: no list call per put to add or drop it.
            open_group: list[list[PutStart] | None] = [None]
            runner = _GroupRunner()

            async def run_group(group: list[PutStart]) -> None:
                open_group[0] = None  # from here on, a small put read starts a new group
                await self._run_put_group(session, ident, group, request_ended, spawn)

            async def run_groups() -> None:
                # The connection's groups, one after the other, by this one task while it
                # is free (a group read while it runs one gets a task of its own, as all
                # did): a synchronous client's every put, one at a time, without a task
                # spawned and reaped per put. (run_group's two lines, inline: a coroutine
                # level less on each of the group's resumptions.)
                while True:
                    group = await runner.next_group()
                    open_group[0] = None
                    await self._run_put_group(session, ident, group, request_ended, spawn)

            if ident.kind != "node":  # (a peer's requests are never small puts)
                requests.start_soon(run_groups)

            def spawn(msg: Message, counted: bool = True) -> None:
                # Only uploads (Data, End) and downloads (Cancel) hear more of their rid; the
                # others (every peer request among them) need no channel of their own, nor
                # does an upload whose whole body was read with its start (a small put).
                rid: int = msg.rid  # type: ignore[attr-defined]
                inbox = session.open_inbox(rid) if isinstance(msg, _STREAMING) and \
                    not session.has_whole_upload(rid) else quiet
                if not counted:  # (a small put a group handed back was counted already)
                    in_flight[0] += 1
                requests.start_soon(self._run_request, session, ident, msg, inbox,
                                    request_ended)

            def on_request(msg: Message) -> None:
                if getattr(msg, "rid", None) is None:
                    return
                if peer_link and type(msg) is Replicate and not self._stopping:
                    # Counted before it is queued, as its task would be (a lone request's
                    # batch is then held off its reply's path: see _request_began).
                    self._request_began()
                    ticket = replicate_now(self, session, msg)
                    if ticket is not None:
                        in_flight[0] += 1
                        acks.append((msg, ticket, time.perf_counter()))
                        acks_waiting.unpark_all()
                        return
                    self._request_done()  # its task counts it again
                if small_put_now(self, session, ident, msg):
                    assert isinstance(msg, PutStart)
                    in_flight[0] += 1
                    group = open_group[0]
                    if group is not None:
                        group.append(msg)
                    else:
                        group = open_group[0] = [msg]
                        if not runner.take(group):
                            requests.start_soon(run_group, group)
                else:
                    spawn(msg, counted=False)

            try:
                with reader:
                    await session.run_reader(on_request, before_read=before_read,
                                             before_open=before_open)
            except ProtocolError as exc:
                self._connection_refused(peer, ident, exc, op="session")
                await _goodbye(session, exc)
            except HdsdError as exc:
                log.info("event=connection_lost peer=%s reason=%s", peer, exc)
            if ident.kind == "node":
                # A peer's link to us ended: it may have crashed between our fsync of its
                # write and its hint for the other replicas.
                self._peer_link_changed(ident.name, False)
            # The client is gone: its in-flight requests have nobody to answer.
            requests.cancel_scope.cancel()

    async def _ack_replicates(
            self, session: WireSession,
            acks: collections.deque[tuple[Replicate, CommitTicket, float]],
            waiting: trio.lowlevel.ParkingLot, ended: Callable[[], None]) -> None:
        """A peer connection's acknowledger: wait for each Replicate queued by
        :func:`~._peer_handlers.replicate_now`, oldest first, and answer it — ``Reply`` once
        its records are durable, the store's error otherwise — as its own task would have.
        Runs as long as the connection; what it had not answered when cancelled (the
        connection is gone) is given up: its commit goes on, nobody is left to tell."""
        try:
            while True:
                if not acks:
                    await waiting.park()
                    continue
                msg, ticket, started = acks[0]
                outcome = "cancelled"
                try:
                    reply: Reply | ErrorReply
                    try:
                        await ticket.wait()
                        outcome = "ok"
                        reply = Reply(rid=msg.rid, body={})
                    except HdsdError as exc:
                        outcome = exc.code
                        reply = ErrorReply(rid=msg.rid, code=exc.code, message=exc.message)
                    try:
                        await session.send(reply)
                    except HdsdError as exc:  # the connection is gone: nobody to tell
                        outcome = exc.code
                finally:
                    acks.popleft()
                    self._replicate_answered(session, msg, outcome, started, ended)
        finally:
            while acks:
                msg, ticket, started = acks.popleft()
                ticket.abandon()
                self._replicate_answered(session, msg, "cancelled", started, ended)

    def _replicate_answered(self, session: WireSession, msg: Replicate, outcome: str,
                            started: float, ended: Callable[[], None]) -> None:
        """The end of a Replicate :meth:`_ack_replicates` answered: what ``handle_request``
        and ``_run_request`` do at a request's end (it took no body budget: no chunks)."""
        self.metrics.request_done(msg, outcome, time.perf_counter() - started)
        session.close_inbox(msg.rid)
        self._request_done()
        ended()
        self.request_room.freed()

    async def _run_put_group(self, session: WireSession, ident: Identity,
                             group: list[PutStart], ended: Callable[[], None],
                             spawn: Callable[[Message], None]) -> None:
        """Small puts read together on one connection: those that can share one write are
        answered by this one task (``put_group``), the others each get their own task
        (*spawn*), as any request. Each is still one request in flight until it is answered."""
        mine: list[PutStart] = []
        replicas: dict[str, list[str]] | None = None
        ready = self.audit_continuity.ready.is_set() and not self._stopping
        for msg in group:
            try:
                claimed = claim_small_put(self, ident, msg, replicas) if ready else None
            except Exception:
                claimed = None  # (its own task meets the failure again, and answers it)
            if claimed is None:
                spawn(msg)
            else:
                replicas = claimed
                mine.append(msg)
        if not mine:
            return
        assert replicas is not None
        for _ in mine:  # each put is a request in flight on the node, as its own task would be
            self._request_began()
        try:
            await put_group(self, session, ident, mine, replicas)
        except BaseException as exc:
            # The requests' boundary, as in _run_request_counted: put_group answered what it
            # could; the connection and its other requests carry on.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("request_failed", _peer_address_of(session), contained,
                               op="PutStart", puts=len(mine))
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            for msg in mine:
                self._request_done()
                self.budget.release(id(msg))
                ended()
            self.request_room.freed()

    def _check_peer(self, ident: Identity) -> None:
        if ident.cluster_id != self.config.cluster_id:
            raise AuthenticationFailed(f"certificate is for cluster {ident.cluster_id!r}, "
                                       f"this is {self.config.cluster_id!r}")
        if ident.kind == "node" and not self.layouts.record.has_node(ident.name):
            raise AuthenticationFailed(f"node {ident.name!r} is not in this cluster's layout")

    async def _run_request(self, session: WireSession, ident: Identity, msg: Message,
                           inbox: trio.MemoryReceiveChannel[Message],
                           ended: Callable[[], None], resolved: Version | None = None) -> None:
        try:
            await self._run_request_counted(session, ident, msg, inbox, resolved)
        finally:
            self.budget.release(id(msg))  # what the request took (see ._budget)
            ended()
            self.request_room.freed()

    async def _run_request_counted(self, session: WireSession, ident: Identity, msg: Message,
                                   inbox: trio.MemoryReceiveChannel[Message],
                                   resolved: Version | None = None) -> None:
        if self._stopping:
            session.close_inbox(msg.rid)  # type: ignore[attr-defined]
            err = Unavailable("node is shutting down; retry on another node or later")
            await session.send(ErrorReply(rid=msg.rid, code=err.code,  # type: ignore[attr-defined]
                                          message=err.message))
            return
        self._request_began()
        try:
            await handle_request(self, session, ident, msg, inbox, resolved)
        except BaseException as exc:
            # One request's boundary: its failure ends it (handle_request already answered
            # what it could); its connection and the other requests on it carry on.
            propagate, contained = contain(exc)
            if contained is not None:
                _log_contained("request_failed", _peer_address_of(session), contained,
                               rid=getattr(msg, "rid", None), op=type(msg).__name__)
            if propagate is exc:
                raise
            if propagate is not None:
                raise propagate from None
        finally:
            self._request_done()


_STREAMING = (PutStart, GetRequest, GetMany, FetchChunks)  # (a download hears its Cancel)


class _GroupRunner:
    """Where a connection's group runner (a task of its requests' nursery) waits for the
    next small-put group: :meth:`take` hands it one if it is waiting (a reschedule, a few
    calls; spawning a task and reaping it is ~25), else the caller spawns a task."""

    __slots__ = ("_group", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._group: list[PutStart] | None = None

    def take(self, group: list[PutStart]) -> bool:
        """Whether the runner was waiting and now has *group* (it runs it on its next turn,
        as a new task would: the puts read in this pass join it meanwhile)."""
        task = self._task
        if task is None:
            return False
        self._task = None
        self._group = group
        trio.lowlevel.reschedule(task)
        return True

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None  # cancelled while waiting: the connection is ending
        return trio.lowlevel.Abort.SUCCEEDED

    async def next_group(self) -> list[PutStart]:
        """Wait for a group handed over by :meth:`take` (a checkpoint)."""
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)
        group, self._group = self._group, None
        assert group is not None
        return group


def _no_inbox() -> trio.MemoryReceiveChannel[Message]:
    """An inbox that never receives anything (and needs no closing)."""
    send, receive = trio.open_memory_channel[Message](0)
    send.close()
    return receive


async def _goodbye(session: WireSession, exc: HdsdError, code: str | None = None) -> None:
    # from_exception truncates the text to what a frame may carry: a long message would
    # otherwise make the Goodbye itself invalid, and the client hear nothing.
    bye = Goodbye.from_exception(exc)
    if code is not None:
        bye = Goodbye(code=code, message=bye.message)
    with trio.move_on_after(2):
        try:
            await session.send(bye)
        except HdsdError:
            pass


def _log_contained(event: str, peer: str, exc: BaseException, **fields: object) -> None:
    """Log once what a request or connection boundary stopped: a typed error is the client's
    or the situation's (one line), anything else is a bug (with its traceback)."""
    leaves = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    if all(isinstance(e, HdsdError) for e in leaves):
        log.info("event=%s peer=%s%s reason=%s", event, peer, extra,
                 "; ".join(str(e) for e in leaves))
    else:
        log.error("event=%s peer=%s%s reason=%s", event, peer, extra, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))


def _peer_address_of(session: WireSession) -> str:
    stream = session.stream
    return _peer_address(stream) if isinstance(stream, trio.SSLStream) else "?"


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

    Everything the node creates is its own: the data directory must not be open to group or
    others (ConfigError otherwise, as for key files), and while the node runs the process
    umask is 077, so every directory is 0700 and every file 0600 from creation — the SQLite
    indexes and their journals, the Merkle snapshot, the audit files, the log segments.
    """
    check_private_dir(config.data_dir)
    limit_arenas()  # before the store's and trio's threads allocate
    with _private_umask():
        await _serve_node(config, task_status)


_umask_saved: list[int] = []  # the caller's umask, once per node serving in this process


@contextmanager
def _private_umask() -> Iterator[None]:
    """umask 077 while any node of this process serves (tests run several); the caller's
    umask back after the last one."""
    _umask_saved.append(os.umask(0o077) if not _umask_saved else _umask_saved[0])
    try:
        yield
    finally:
        original = _umask_saved.pop()
        if not _umask_saved:
            os.umask(original)


def check_private_dir(path: Path) -> None:
    """Refuse a data directory that group or others may read or enter."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"data directory {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"data directory {path} is open to group or others (mode "
                          f"{stat.S_IMODE(mode):04o}); run: chmod 700 {path}")


async def _serve_node(config: NodeConfig, task_status: trio.TaskStatus[Node]) -> None:
    pending = migration_pending(config.data_dir / "store")
    if pending is not None:
        raise StoreError(pending)
    sealing = NodeSealing()
    store = Store.open(config.data_dir / "store", sealing=sealing,
                       segment_bytes=config.segment_mib << 20,
                       salvage=config.on_corrupt_log == "repair",
                       read_fds=config.segment_read_fds)
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
